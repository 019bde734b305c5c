//! The GGUF reader against files written by the tests: every malformed shape gives an error
//! naming the problem, none panics; valid files of every value type and both versions parse.

#[path = "support/gguf_writer.rs"]
mod gguf_writer;
#[path = "support/models.rs"]
mod models;

use gguf_writer::{GgufBuilder, Meta, Tensor};
use smallmind::gguf::{GgufFile, Value};
use smallmind::quant::GgmlType;

fn valid() -> GgufBuilder {
    GgufBuilder::default()
        .meta("general.architecture", Meta::Str("llama".into()))
        .meta("test.u8", Meta::U8(7))
        .meta("test.i8", Meta::I8(-7))
        .meta("test.u16", Meta::U16(700))
        .meta("test.i16", Meta::I16(-700))
        .meta("test.u32", Meta::U32(70_000))
        .meta("test.i32", Meta::I32(-70_000))
        .meta("test.f32", Meta::F32(1.5))
        .meta("test.bool", Meta::Bool(true))
        .meta("test.u64", Meta::U64(1 << 40))
        .meta("test.i64", Meta::I64(-(1 << 40)))
        .meta("test.f64", Meta::F64(2.25))
        .meta(
            "test.strings",
            Meta::Array(8, vec![Meta::Str("a".into()), Meta::Str("ü".into())]),
        )
        .meta(
            "test.nested",
            Meta::Array(9, vec![Meta::Array(4, vec![Meta::U32(1), Meta::U32(2)])]),
        )
        .tensor(Tensor::f32(
            "a",
            &[4, 2],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        ))
        .tensor(Tensor::f32("b", &[3], &[9.0, 10.0, 11.0]))
}

fn parse_err(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("a malformed file parsed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_value_type_round_trips_in_version_2_and_3() {
    for version in [2, 3] {
        let builder = GgufBuilder { version, ..valid() };
        let f = GgufFile::from_bytes(builder.build()).unwrap();
        assert_eq!(f.version, version);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.get("test.u8"), Some(&Value::U8(7)));
        assert_eq!(f.get("test.i8"), Some(&Value::I8(-7)));
        assert_eq!(f.get_u32("test.u16"), Some(700));
        assert_eq!(f.get("test.i16").and_then(Value::as_i64), Some(-700));
        assert_eq!(f.get_u64("test.u32"), Some(70_000));
        assert_eq!(f.get("test.i32"), Some(&Value::I32(-70_000)));
        assert_eq!(f.get_f32("test.f32"), Some(1.5));
        assert_eq!(f.get_bool("test.bool"), Some(true));
        assert_eq!(f.get_u64("test.u64"), Some(1 << 40));
        assert_eq!(f.get_u32("test.u64"), None, "does not fit u32");
        assert_eq!(f.get("test.i64").and_then(Value::as_i64), Some(-(1 << 40)));
        assert_eq!(f.get("test.f64").and_then(Value::as_f32), Some(2.25));
        let strings: Vec<&str> = f
            .get_array("test.strings")
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(strings, ["a", "ü"]);
        assert_eq!(
            f.get_array("test.nested").unwrap()[0]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let a = f.tensor("a").unwrap();
        assert_eq!(
            (a.dims.clone(), a.ggml_type, a.n_rows(), a.row_len()),
            (vec![4, 2], GgmlType::F32, 2, 4)
        );
        assert_eq!(f.tensor_bytes(a).len(), 32);
        assert_eq!(
            &f.tensor_bytes(f.tensor("b").unwrap())[..4],
            &9.0f32.to_le_bytes()
        );
        assert_eq!(a.offset % 32, 0);
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = valid().build();
    for len in 0..bytes.len() {
        let message = parse_err(bytes[..len].to_vec());
        assert!(
            message.contains("truncated")
                || message.contains("outside the file")
                || message.contains("not a GGUF"),
            "{len}: {message}"
        );
    }
}

#[test]
fn header_errors_name_the_problem() {
    assert!(parse_err(Vec::new()).contains("truncated GGUF file"));
    let mut bad_magic = valid().build();
    bad_magic[..4].copy_from_slice(b"GGML");
    assert!(parse_err(bad_magic).contains("not a GGUF file"));
    for version in [1, 4] {
        let message = parse_err(GgufBuilder { version, ..valid() }.build());
        assert!(
            message.contains(&format!("GGUF version {version} is not supported")),
            "{message}"
        );
    }
}

#[test]
fn metadata_errors_name_the_key() {
    let unknown_type = valid().meta("bad.type", Meta::Raw(13, vec![0; 8])).build();
    assert!(parse_err(unknown_type).contains("'bad.type' has unknown value type 13"));

    let mut huge_string = Vec::new();
    huge_string.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let message = parse_err(
        valid()
            .meta("bad.string", Meta::Raw(8, huge_string))
            .build(),
    );
    assert!(message.contains("above the limit"), "{message}");

    let mut huge_array = 4u32.to_le_bytes().to_vec();
    huge_array.extend_from_slice(&(1u64 << 24).to_le_bytes());
    let message = parse_err(valid().meta("bad.array", Meta::Raw(9, huge_array)).build());
    assert!(message.contains("array 'bad.array'"), "{message}");

    let deep = Meta::Array(
        9,
        vec![Meta::Array(
            9,
            vec![Meta::Array(9, vec![Meta::Array(4, vec![Meta::U32(1)])])],
        )],
    );
    assert!(parse_err(valid().meta("bad.deep", deep).build()).contains("nesting depth"));

    assert!(
        parse_err(valid().meta("test.u8", Meta::U8(1)).build()).contains("'test.u8' appears twice")
    );
    assert!(
        parse_err(valid().meta("bad.bool", Meta::Raw(7, vec![2])).build()).contains("bool value 2")
    );
    let invalid_utf8 = Meta::Raw(8, [2u64.to_le_bytes().to_vec(), vec![0xff, 0xfe]].concat());
    assert!(parse_err(valid().meta("bad.utf8", invalid_utf8).build()).contains("not valid UTF-8"));
    for alignment in [0u32, 3] {
        let message = parse_err(
            valid()
                .meta("general.alignment", Meta::U32(alignment))
                .build(),
        );
        assert!(message.contains("general.alignment"), "{message}");
    }
}

#[test]
fn tensor_errors_name_the_tensor() {
    let with = |t: Tensor| valid().tensor(t).build();
    let mut t = Tensor::f32("bad", &[2], &[1.0, 2.0]);

    t.dims = vec![];
    assert!(parse_err(with(t.clone())).contains("'bad' has 0 dimensions"));
    t.dims = vec![1, 1, 1, 1, 2];
    assert!(parse_err(with(t.clone())).contains("'bad' has 5 dimensions"));
    t.dims = vec![2, 0];
    assert!(parse_err(with(t.clone())).contains("zero-sized dimension"));
    t.dims = vec![1 << 30, 1 << 30, 1 << 30];
    assert!(parse_err(with(t.clone())).contains("element count of tensor 'bad'"));
    t.dims = vec![2];

    let mut unknown = t.clone();
    unknown.type_id = 16;
    let message = parse_err(with(unknown));
    assert!(
        message.contains("tensor 'bad' has ggml type id 16") && message.contains("Q4_K"),
        "{message}"
    );

    let mut partial_block = t.clone();
    partial_block.type_id = GgmlType::Q4_0.id();
    partial_block.dims = vec![33];
    assert!(parse_err(with(partial_block)).contains("not a multiple of the Q4_0 block size 32"));

    // Tensor "b" ends the file; cutting its last bytes leaves it outside.
    let mut cut = valid().build();
    cut.truncate(cut.len() - 4);
    assert!(
        parse_err(cut).contains("tensor 'b' (12 bytes at data offset 32) lies outside the file")
    );

    let mut misaligned = t.clone();
    misaligned.offset = Some(100);
    assert!(parse_err(with(misaligned)).contains("not a multiple of the alignment 32"));

    let mut duplicate = t.clone();
    duplicate.name = "a".into();
    assert!(parse_err(with(duplicate)).contains("tensor name 'a' appears twice"));

    let mut count_too_big = valid().build();
    count_too_big[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(parse_err(count_too_big).contains("tensor count"));
}

#[test]
fn random_byte_flips_never_panic() {
    let original = valid().build();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let mut bytes = original.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % bytes.len() as u64) as usize;
            bytes[i] ^= 1 << (next() % 8);
        }
        let _ = GgufFile::from_bytes(bytes);
    }
}

#[test]
fn real_files_parse_with_types_and_shapes_as_gguf_py_reads_them() {
    let oracle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models::oracle_dir().join("synthetic/llamacpp-synthetic.json"))
            .unwrap(),
    )
    .unwrap();
    for model in oracle["models"].as_array().unwrap() {
        let path = models::oracle_dir()
            .join("synthetic")
            .join(model["file"].as_str().unwrap());
        let f = GgufFile::open(&path, true).unwrap();
        let types = model["tensor_types"].as_object().unwrap();
        assert_eq!(f.tensors.len(), types.len());
        for t in &f.tensors {
            assert_eq!(
                t.ggml_type.name(),
                types[&t.name].as_str().unwrap(),
                "{}",
                t.name
            );
            let shape: Vec<u64> = model["tensor_shapes_ggml_ne"][&t.name]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(t.dims, shape, "{}", t.name);
        }
    }
    for path in [models::smollm2(), models::gemma3()] {
        let start = std::time::Instant::now();
        let f = GgufFile::open(&path, true).unwrap();
        eprintln!(
            "{}: {} tensors, parsed in {:.1} ms",
            path.display(),
            f.tensors.len(),
            start.elapsed().as_secs_f64() * 1000.0
        );
        assert!(f.get_array("tokenizer.ggml.tokens").unwrap().len() >= 49152);
        // Opening without the map reads the same.
        assert_eq!(GgufFile::open(&path, false).unwrap().tensors, f.tensors);
    }
}
