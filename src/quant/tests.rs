use super::*;

fn oracle() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/oracle/quant-blocks.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("tests/oracle/quant-blocks.json"))
        .unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn dequantization_equals_gguf_py_bit_for_bit_for_every_type() {
    let oracle = oracle();
    let types = oracle["types"].as_object().unwrap();
    assert_eq!(
        types.len(),
        12,
        "every stored type but the Q8_1/Q8_K activation formats"
    );
    for (name, case) in types {
        let ty = GgmlType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .unwrap();
        let bytes = hex(case["dequantize"]["bytes_hex"].as_str().unwrap());
        let expected = floats(&case["dequantize"]["values"]);
        let mut out = vec![0.0f32; expected.len()];
        dequantize_row(ty, &bytes, &mut out).unwrap();
        for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name} element {i}: {a} vs gguf-py {b}"
            );
        }
    }
}

#[test]
fn quantization_equals_gguf_py_bytes_where_it_has_them() {
    let oracle = oracle();
    let mut checked = 0;
    for (name, case) in oracle["types"].as_object().unwrap() {
        let Some(q) = case["quantize"].as_object() else {
            continue;
        };
        let ty = GgmlType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .unwrap();
        let mut out = Vec::new();
        quantize_row(ty, &floats(&q["values"]), &mut out).unwrap();
        assert_eq!(out, hex(q["bytes_hex"].as_str().unwrap()), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 7, "F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0");
}

/// Deterministic values with a spread of magnitudes.
fn xorshift_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// Random bytes, with each block's scale fields overwritten by a sane f16 so values stay finite.
fn random_weight_row(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let values = xorshift_values(n, seed, 1.0);
    let mut out = Vec::new();
    if quantize_row(ty, &values, &mut out).is_ok() {
        return out;
    }
    // K-quants: random bits with valid scales.
    let mut bytes: Vec<u8> = xorshift_values(bytes_for(ty, n).unwrap(), seed ^ 0x55, 1.0)
        .iter()
        .map(|v| (v.to_bits() >> 7) as u8)
        .collect();
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => unreachable!(),
    };
    for block in bytes.chunks_exact_mut(ty.block_bytes()) {
        for &o in scale_offsets {
            block[o..o + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
        }
    }
    bytes
}

#[test]
fn integer_dot_products_agree_with_the_dequantized_dot_product() {
    let weight_types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];
    for ty in weight_types {
        for (n, seed) in [(256usize, 1u64), (512, 2), (2560, 3)] {
            let w = random_weight_row(ty, n, seed);
            let x = xorshift_values(n, seed * 31, 3.0);
            let act_ty = ty.vec_dot_type();
            let mut a = Vec::new();
            quantize_activations(act_ty, &x, &mut a).unwrap();
            let got = vec_dot(ty, &w, &a, n).unwrap() as f64;

            let (mut wf, mut af) = (vec![0.0f32; n], vec![0.0f32; n]);
            dequantize_row(ty, &w, &mut wf).unwrap();
            dequantize_row(act_ty, &a, &mut af).unwrap();
            let expected: f64 = wf.iter().zip(&af).map(|(&p, &q)| p as f64 * q as f64).sum();
            let magnitude: f64 = wf
                .iter()
                .zip(&af)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            assert!(
                (got - expected).abs() <= 1e-4 * magnitude + 1e-6,
                "{ty} n={n}: integer dot {got} vs dequantized {expected} (magnitude {magnitude})"
            );
        }
    }
}

#[test]
fn activation_quantization_round_trips_within_its_step() {
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        for scale in [1e-30f32, 1e-3, 1.0, 1e4] {
            let x = xorshift_values(512, 9, scale);
            let mut q = Vec::new();
            quantize_activations(ty, &x, &mut q).unwrap();
            let mut back = vec![0.0f32; 512];
            dequantize_row(ty, &q, &mut back).unwrap();
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in x.iter().zip(&back) {
                // Half a step of amax/127, plus f16 rounding of the scale (relative 2^-11);
                // an f16 scale below its smallest subnormal (6e-8) flushes the block to zero.
                let f16_floor = if ty == GgmlType::Q8_K {
                    0.0
                } else {
                    127.0 * 6e-8
                };
                assert!(
                    (a - b).abs() <= amax / 127.0 * 0.5 + amax * 1e-3 + f16_floor,
                    "{ty} scale {scale}: {a} vs {b}"
                );
            }
        }
        let mut zeros = Vec::new();
        quantize_activations(ty, &[0.0; 256], &mut zeros).unwrap();
        let mut back = vec![1.0f32; 256];
        dequantize_row(ty, &zeros, &mut back).unwrap();
        assert!(back.iter().all(|&v| v == 0.0), "{ty} zeros");
    }
}

#[test]
fn bad_lengths_are_errors_not_panics() {
    let mut out = vec![0.0f32; 32];
    assert_eq!(
        dequantize_row(GgmlType::Q4_0, &[0u8; 17], &mut out),
        Err(QuantError::WrongLength {
            ty: GgmlType::Q4_0,
            expected: 18,
            found: 17
        })
    );
    assert!(matches!(
        dequantize_row(GgmlType::Q4_K, &[0u8; 144], &mut out),
        Err(QuantError::NotWholeBlocks { .. })
    ));
    assert!(vec_dot(GgmlType::Q8_0, &[0u8; 34], &[0u8; 33], 32).is_err());
    let mut bytes = Vec::new();
    assert!(quantize_row(GgmlType::Q4_K, &[0.0; 256], &mut bytes).is_err());
    assert!(quantize_activations(GgmlType::Q4_0, &[0.0; 32], &mut bytes).is_err());
}
