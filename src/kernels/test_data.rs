//! Deterministic inputs for the kernel tests: SIMD kernels are compared with their scalar
//! references on these.

use crate::quant::GgmlType;

/// `n` values in [−scale, scale) from a xorshift generator seeded with `seed`.
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
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

/// `rows` rows of `n` random K-quant weight bytes of `ty`, with a sane f16 scale (0.02) at
/// each of `scale_offsets` in every block (random bits there would give infinities).
pub fn random_k_rows(
    ty: GgmlType,
    rows: usize,
    n: usize,
    seed: u64,
    scale_offsets: &[usize],
) -> Vec<u8> {
    let bytes_len = rows * ty.row_bytes(n as u64).unwrap() as usize;
    let mut bytes: Vec<u8> = values(bytes_len, seed, 1.0)
        .iter()
        .map(|v| (v.to_bits() >> 9) as u8)
        .collect();
    for block in bytes.chunks_exact_mut(ty.block_bytes()) {
        for &o in scale_offsets {
            block[o..o + 2].copy_from_slice(&half::f16::from_f32(0.02).to_le_bytes());
        }
    }
    bytes
}
