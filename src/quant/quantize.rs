//! Quantization of f32 values into blocks: weights (the reference, exact against gguf-py)
//! and activations (once per row before a dot product, exactly as ggml does).

use super::blocks::*;

/// The value of largest magnitude, keeping its sign; the first one on ties.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    max
}

fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// Low/high nibble packing of 32 values.
fn pack_nibbles(q: &[u8; 32]) -> [u8; 16] {
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = (q[j] & 0x0f) | (q[j + 16] << 4);
    }
    qs
}

fn pack_fifth_bits(q: &[u8; 32]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= ((v as u32 >> 4) & 1) << j;
    }
    qh.to_le_bytes()
}

pub fn q4_0(x: &[f32; 32]) -> BlockQ4_0 {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    let q = x.map(|v| ((v * id + 8.5).trunc()).clamp(0.0, 15.0) as u8);
    BlockQ4_0 {
        d: f16_bytes(d),
        qs: pack_nibbles(&q),
    }
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

pub fn q4_1(x: &[f32; 32]) -> BlockQ4_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let q = x.map(|v| (((v - min) * id + 0.5).trunc()).clamp(0.0, 15.0) as u8);
    BlockQ4_1 {
        d: f16_bytes(d),
        m: f16_bytes(min),
        qs: pack_nibbles(&q),
    }
}

pub fn q5_0(x: &[f32; 32]) -> BlockQ5_0 {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    let q = x.map(|v| ((v * id + 16.5).trunc()).clamp(0.0, 31.0) as u8);
    BlockQ5_0 {
        d: f16_bytes(d),
        qh: pack_fifth_bits(&q),
        qs: pack_nibbles(&q),
    }
}

pub fn q5_1(x: &[f32; 32]) -> BlockQ5_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    let q = x.map(|v| (((v - min) * id + 0.5).trunc()).clamp(0.0, 31.0) as u8);
    BlockQ5_1 {
        d: f16_bytes(d),
        m: f16_bytes(min),
        qh: pack_fifth_bits(&q),
        qs: pack_nibbles(&q),
    }
}

/// (d, quants) of ggml's symmetric 8-bit rounding: d = amax/127, q = round(x/d) away from zero.
fn round_8bit(x: &[f32; 32]) -> (f32, [i8; 32]) {
    let amax = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    (d, x.map(|v| (v * id).round() as i8))
}

pub fn q8_0(x: &[f32; 32]) -> BlockQ8_0 {
    let (d, qs) = round_8bit(x);
    BlockQ8_0 {
        d: f16_bytes(d),
        qs,
    }
}

pub fn q8_1(x: &[f32; 32]) -> BlockQ8_1 {
    let (d, qs) = round_8bit(x);
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    BlockQ8_1 {
        d: f16_bytes(d),
        s: f16_bytes(sum as f32 * d),
        qs,
    }
}

/// ggml's `quantize_row_q8_K_ref`: scale from the signed maximum, round half to even.
pub fn q8_k(x: &[f32; 256]) -> BlockQ8_K {
    let max = signed_absmax(x);
    let mut block = BlockQ8_K {
        d: [0; 4],
        qs: [0; 256],
        bsums: [[0; 2]; 16],
    };
    if max == 0.0 {
        return block;
    }
    let iscale = -127.0 / max;
    for (q, &v) in block.qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (g, sum) in block.bsums.iter_mut().enumerate() {
        let s: i32 = block.qs[g * 16..g * 16 + 16]
            .iter()
            .map(|&q| q as i32)
            .sum();
        *sum = (s as i16).to_le_bytes();
    }
    block.d = (1.0 / iscale).to_le_bytes();
    block
}

/// f32 → bf16 as ggml rounds it: to nearest even, NaN kept quiet.
pub fn bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
}

pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}
