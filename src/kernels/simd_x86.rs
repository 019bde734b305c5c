//! AVX2 + FMA + F16C dot products of quantized weight rows with quantized activation rows.
//! Each has the scalar reference in `quant::vec_dot` and a test against it in `tests` below.
//! Integer parts are exact; only the order of the final float accumulation differs from the
//! reference, so results agree to a few ulps of the row's magnitude.

use super::attention::KvRows;
use super::cpu::Avx2;
use std::arch::x86_64::*;

use crate::quant::{
    BlockQ4_0, BlockQ4_1, BlockQ4_K, BlockQ5_0, BlockQ6_K, BlockQ8_0, BlockQ8_1, BlockQ8_K,
    GgmlType,
};

/// f16 → f32 with the F16C instruction (the `half` crate re-checks CPU features per call).
#[inline]
#[target_feature(enable = "f16c")]
fn f16(bytes: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes(bytes) as i32
    )))
}

/// Horizontal sum of 8 floats.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics, available under the caller's avx2 target feature.
    unsafe {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// 16 bytes of nibbles → 32 bytes: low nibbles (elements 0..15) then high (16..31).
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: reads exactly 16 bytes from a 16-byte array.
    unsafe {
        let raw = _mm_loadu_si128(qs.as_ptr().cast());
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        _mm256_set_m128i(hi, lo)
    }
}

/// Σ over 8 i32 lanes of unsigned x · signed y byte products.
#[inline(always)]
unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
    // SAFETY: register-only intrinsics.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)) }
}

/// Σ over 8 i32 lanes of signed x · signed y byte products (|x| ≤ 127 or −128 paired with y ≠ −128).
#[inline(always)]
unsafe fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    // SAFETY: register-only intrinsics.
    unsafe { dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)) }
}

#[inline(always)]
unsafe fn load32(p: &[i8; 32]) -> __m256i {
    // SAFETY: reads exactly 32 bytes from a 32-byte array.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        // SAFETY: block fields are fixed-size arrays; avx2 is enabled for this function.
        unsafe {
            let qx = _mm256_sub_epi8(nibbles(&w.qs), _mm256_set1_epi8(8));
            let p = _mm256_cvtepi32_ps(dot_i8_i8(qx, load32(&a.qs)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w.d) * f16(a.d)), p, acc);
        }
    }
    // SAFETY: avx2 enabled.
    unsafe { hsum(acc) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        mins += f16(w.m) * f16(a.s);
        // SAFETY: as in dot_q4_0.
        unsafe {
            let p = _mm256_cvtepi32_ps(dot_u8_i8(nibbles(&w.qs), load32(&a.qs)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w.d) * f16(a.d)), p, acc);
        }
    }
    // SAFETY: avx2 enabled.
    unsafe { hsum(acc) + mins }
}

/// The 32 fifth bits of qh as bytes 0x00 (bit set) or 0xF0 (bit clear): OR-ed into a
/// nibble this gives q − 16 as a signed byte.
#[inline(always)]
unsafe fn q5_high(qh: [u8; 4]) -> __m256i {
    // SAFETY: register-only intrinsics.
    unsafe {
        let bits = _mm256_set1_epi32(u32::from_le_bytes(qh) as i32);
        // Byte i takes byte i/8 of qh, then tests bit i%8.
        let spread = _mm256_shuffle_epi8(
            bits,
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let select = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, select), _mm256_set1_epi64x(-1));
        _mm256_andnot_si256(set, _mm256_set1_epi8(0xf0u8 as i8))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        // SAFETY: as in dot_q4_0.
        unsafe {
            let qx = _mm256_or_si256(nibbles(&w.qs), q5_high(w.qh));
            let p = _mm256_cvtepi32_ps(dot_i8_i8(qx, load32(&a.qs)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w.d) * f16(a.d)), p, acc);
        }
    }
    // SAFETY: avx2 enabled.
    unsafe { hsum(acc) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        // SAFETY: as in dot_q4_0.
        unsafe {
            let p = _mm256_cvtepi32_ps(dot_i8_i8(load32(&w.qs), load32(&a.qs)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w.d) * f16(a.d)), p, acc);
        }
    }
    // SAFETY: avx2 enabled.
    unsafe { hsum(acc) }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K block.
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8; 12]) -> (i16, i32) {
    if j < 4 {
        ((s[j] & 63) as i16, (s[j + 4] & 63) as i32)
    } else {
        (
            ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4)) as i16,
            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as i32,
        )
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_k(w: &[BlockQ4_K], a: &[BlockQ8_K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins_total = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let ad = f32::from_le_bytes(a.d);
        let mut mins = 0i32;
        // SAFETY: every load reads 32 bytes inside the block's fixed-size arrays.
        unsafe {
            let mut sumi = _mm256_setzero_si256();
            let mask = _mm256_set1_epi8(0x0f);
            for chunk in 0..4 {
                let raw = _mm256_loadu_si256(w.qs.as_ptr().add(chunk * 32).cast());
                let lo = _mm256_and_si256(raw, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                let a_lo = _mm256_loadu_si256(a.qs.as_ptr().add(chunk * 64).cast());
                let a_hi = _mm256_loadu_si256(a.qs.as_ptr().add(chunk * 64 + 32).cast());
                let (s_lo, m_lo) = scale_min_k4(2 * chunk, &w.scales);
                let (s_hi, m_hi) = scale_min_k4(2 * chunk + 1, &w.scales);
                let p_lo =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a_lo), _mm256_set1_epi16(s_lo));
                let p_hi =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a_hi), _mm256_set1_epi16(s_hi));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
                mins += m_lo * (a.bsum(4 * chunk) + a.bsum(4 * chunk + 1))
                    + m_hi * (a.bsum(4 * chunk + 2) + a.bsum(4 * chunk + 3));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(ad * f16(w.d)), _mm256_cvtepi32_ps(sumi), acc);
        }
        mins_total += ad * f16(w.dmin) * mins as f32;
    }
    // SAFETY: avx2 enabled.
    unsafe { hsum(acc) - mins_total }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6_k(w: &[BlockQ6_K], a: &[BlockQ8_K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        // SAFETY: every load reads 32 bytes inside the block's fixed-size arrays.
        unsafe {
            let mut sumi = _mm256_setzero_si256();
            let mask4 = _mm256_set1_epi8(0x0f);
            let mask2 = _mm256_set1_epi8(0x03);
            let m32 = _mm256_set1_epi8(32);
            for half in 0..2 {
                let ql0 = _mm256_loadu_si256(w.ql.as_ptr().add(half * 64).cast());
                let ql1 = _mm256_loadu_si256(w.ql.as_ptr().add(half * 64 + 32).cast());
                let qh = _mm256_loadu_si256(w.qh.as_ptr().add(half * 32).cast());
                for group in 0..4 {
                    let low = match group {
                        0 => _mm256_and_si256(ql0, mask4),
                        1 => _mm256_and_si256(ql1, mask4),
                        2 => _mm256_and_si256(_mm256_srli_epi16(ql0, 4), mask4),
                        _ => _mm256_and_si256(_mm256_srli_epi16(ql1, 4), mask4),
                    };
                    let high = match group {
                        0 => _mm256_and_si256(qh, mask2),
                        1 => _mm256_and_si256(_mm256_srli_epi16(qh, 2), mask2),
                        2 => _mm256_and_si256(_mm256_srli_epi16(qh, 4), mask2),
                        _ => _mm256_and_si256(_mm256_srli_epi16(qh, 6), mask2),
                    };
                    let q = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
                    let start = half * 128 + group * 32;
                    let q8 = _mm256_loadu_si256(a.qs.as_ptr().add(start).cast());
                    // (q − 32)·a = q·a − 32·a, both without saturation (q ≤ 63).
                    let p16 = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(q, q8),
                        _mm256_maddubs_epi16(m32, q8),
                    );
                    let sub = start / 16;
                    let scales = _mm256_set_m128i(
                        _mm_set1_epi16(w.scales[sub + 1] as i16),
                        _mm_set1_epi16(w.scales[sub] as i16),
                    );
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, scales));
                }
            }
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(f32::from_le_bytes(a.d) * f16(w.d)),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
        }
    }
    // SAFETY: avx2 enabled.
    unsafe { hsum(acc) }
}

/// Attention scores `scores[i] = scale · q · key(first + i)` for the keys of one kv head:
/// `keys` is (positions, kv_dim) and the head's slice starts at `offset` in each row.
/// `q.len()` is the head size, a multiple of 8.
#[allow(clippy::too_many_arguments)]
pub fn attention_scores<T: KvElement>(
    _cpu: Avx2,
    keys: KvRows<'_, T>,
    kv_dim: usize,
    offset: usize,
    first: usize,
    q: &[f32],
    scale: f32,
    scores: &mut [f32],
) {
    assert!(
        q.len().is_multiple_of(8),
        "the head size is a multiple of 8"
    );
    // SAFETY: `_cpu` exists only when the CPU has avx2, fma and f16c, all that the kernel
    // enables.
    unsafe { scores_kernel(keys, kv_dim, offset, first, q, scale, scores) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn scores_kernel<T: KvElement>(
    keys: KvRows<'_, T>,
    kv_dim: usize,
    offset: usize,
    first: usize,
    q: &[f32],
    scale: f32,
    scores: &mut [f32],
) {
    let hd = q.len();
    for (i, s) in scores.iter_mut().enumerate() {
        let row = keys.span((first + i) * kv_dim + offset, hd);
        // SAFETY: `row` and `q` hold hd elements, a multiple of 8; avx2/fma/f16c are enabled.
        unsafe {
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            let mut d = 0;
            while d + 16 <= hd {
                acc0 = _mm256_fmadd_ps(T::load8(row, d), _mm256_loadu_ps(q.as_ptr().add(d)), acc0);
                acc1 = _mm256_fmadd_ps(
                    T::load8(row, d + 8),
                    _mm256_loadu_ps(q.as_ptr().add(d + 8)),
                    acc1,
                );
                d += 16;
            }
            if d < hd {
                acc0 = _mm256_fmadd_ps(T::load8(row, d), _mm256_loadu_ps(q.as_ptr().add(d)), acc0);
            }
            *s = hsum(_mm256_add_ps(acc0, acc1)) * scale;
        }
    }
}

/// `out = Σ_i weights[i] · value(first + i)` for the values of one kv head (layout as in
/// [`attention_scores`]); `out.len()` is the head size, a multiple of 8.
pub fn attention_weighted_sum<T: KvElement>(
    _cpu: Avx2,
    values: KvRows<'_, T>,
    kv_dim: usize,
    offset: usize,
    first: usize,
    weights: &[f32],
    out: &mut [f32],
) {
    assert!(
        out.len().is_multiple_of(8),
        "the head size is a multiple of 8"
    );
    // SAFETY: `_cpu` exists only when the CPU has avx2, fma and f16c, all that the kernel
    // enables.
    unsafe { weighted_sum_kernel(values, kv_dim, offset, first, weights, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_sum_kernel<T: KvElement>(
    values: KvRows<'_, T>,
    kv_dim: usize,
    offset: usize,
    first: usize,
    weights: &[f32],
    out: &mut [f32],
) {
    let hd = out.len();
    // 64 dimensions (8 accumulators) at a time, so each value row is read once per chunk.
    let mut d0 = 0;
    while d0 < hd {
        let width = 64.min(hd - d0);
        // SAFETY: every row slice holds hd elements and d0 + width <= hd, a multiple of 8;
        // the CPU features are enabled.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (i, &w) in weights.iter().enumerate() {
                let start = (first + i) * kv_dim + offset + d0;
                let row = values.span(start, width);
                let w = _mm256_set1_ps(w);
                for (j, acc) in acc.iter_mut().enumerate().take(width / 8) {
                    *acc = _mm256_fmadd_ps(w, T::load8(row, 8 * j), *acc);
                }
            }
            for (j, acc) in acc.iter().enumerate().take(width / 8) {
                _mm256_storeu_ps(out.as_mut_ptr().add(d0 + 8 * j), *acc);
            }
        }
        d0 += width;
    }
}

/// A KV cache element type the attention kernels read 8 at a time as f32.
pub trait KvElement: Copy {
    /// Elements d..d + 8 of `row` as f32.
    ///
    /// # Safety
    /// `d + 8 <= row.len()` and the CPU has avx2 and f16c.
    unsafe fn load8(row: &[Self], d: usize) -> __m256;
}

impl KvElement for f32 {
    #[inline(always)]
    unsafe fn load8(row: &[f32], d: usize) -> __m256 {
        debug_assert!(d + 8 <= row.len());
        // SAFETY: the trait's caller guarantees d + 8 <= row.len(), so the 32 bytes read lie
        // inside `row`, and that the CPU has avx2.
        unsafe { _mm256_loadu_ps(row.as_ptr().add(d)) }
    }
}

impl KvElement for half::f16 {
    #[inline(always)]
    unsafe fn load8(row: &[half::f16], d: usize) -> __m256 {
        debug_assert!(d + 8 <= row.len());
        // SAFETY: the trait's caller guarantees d + 8 <= row.len() (f16 is 2 bytes, so the
        // 16 bytes read lie inside `row`) and that the CPU has avx2 and f16c.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(d).cast())) }
    }
}

/// round(x) with ties away from zero, as C's roundf (exact for every f32).
#[inline(always)]
unsafe fn round_half_away(x: __m256) -> __m256 {
    // SAFETY: register-only intrinsics under the caller's avx2 feature.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
        let step = _mm256_or_ps(_mm256_and_ps(x, sign), _mm256_set1_ps(1.0));
        let carry = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        _mm256_add_ps(t, _mm256_and_ps(carry, step))
    }
}

/// 32 i32 lanes (four vectors, in element order) → 32 bytes in element order.
#[inline(always)]
unsafe fn pack_i8(q: [__m256i; 4]) -> [i8; 32] {
    // SAFETY: register-only intrinsics; |q| <= 127 so the saturating packs are exact.
    unsafe {
        let lo = _mm256_packs_epi32(q[0], q[1]);
        let hi = _mm256_packs_epi32(q[2], q[3]);
        let bytes = _mm256_packs_epi16(lo, hi);
        // The packs interleave 128-bit lanes: restore element order.
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut out = [0i8; 32];
        _mm256_storeu_si256(out.as_mut_ptr().cast(), ordered);
        out
    }
}

/// ggml's 8-bit block rounding of 32 values (d = amax/127, q = round(x/d)), bit-exact with
/// `quant`'s reference: (d, quants, Σ quants).
#[target_feature(enable = "avx2,fma,f16c")]
fn round_8bit(x: &[f32]) -> (f32, [i8; 32], i32) {
    assert_eq!(x.len(), 32, "one block");
    // SAFETY: x holds 32 floats; features enabled.
    unsafe {
        let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(x.as_ptr().add(i)));
        let sign = _mm256_set1_ps(-0.0);
        let m = v.iter().fold(_mm256_setzero_ps(), |m, &v| {
            _mm256_max_ps(m, _mm256_andnot_ps(sign, v))
        });
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let idv = _mm256_set1_ps(id);
        let q = v.map(|v| _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v, idv))));
        let total = q
            .iter()
            .fold(_mm256_setzero_si256(), |s, &q| _mm256_add_epi32(s, q));
        let total = _mm_add_epi32(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256(total, 1),
        );
        let total = _mm_add_epi32(total, _mm_shuffle_epi32(total, 0b01_00_11_10));
        let total = _mm_add_epi32(total, _mm_shuffle_epi32(total, 0b10_11_00_01));
        (d, pack_i8(q), _mm_cvtsi128_si32(total))
    }
}

/// Quantizes one activation row to `ty` (Q8_0, Q8_1 or Q8_K), bit-exact with
/// `quant::quantize_activations`; `out` is that format's row bytes. False when there is no
/// fast path for `ty` on this CPU.
pub fn quantize_activations(_cpu: Avx2, ty: GgmlType, x: &[f32], out: &mut [u8]) -> bool {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q8_1 => {
            let block_bytes = ty.block_bytes();
            for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(block_bytes)) {
                // SAFETY: `_cpu` proves avx2, fma and f16c, the features round_8bit enables.
                let (d, qs, sum) = unsafe { round_8bit(xb) };
                let dh = half::f16::from_f32(d).to_le_bytes();
                ob[..2].copy_from_slice(&dh);
                let qs_at = if ty == GgmlType::Q8_1 {
                    ob[2..4].copy_from_slice(&half::f16::from_f32(sum as f32 * d).to_le_bytes());
                    4
                } else {
                    2
                };
                ob[qs_at..qs_at + 32].copy_from_slice(bytemuck::cast_slice(&qs));
            }
            true
        }
        GgmlType::Q8_K => {
            for (xb, ob) in x
                .chunks_exact(256)
                .zip(out.chunks_exact_mut(ty.block_bytes()))
            {
                // SAFETY: `_cpu` proves avx2, fma and f16c, the features quantize_q8_k enables.
                unsafe { quantize_q8_k(xb, ob) };
            }
            true
        }
        _ => false,
    }
}

/// ggml's quantize_row_q8_K_ref for one block of 256: scale from the signed value of largest
/// magnitude (the first on ties), round half to even, sums of every 16 quants.
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    assert_eq!(x.len(), 256, "one block");
    let block: &mut BlockQ8_K = bytemuck::from_bytes_mut(out);
    // SAFETY: x holds 256 floats; features enabled.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for i in (0..256).step_by(8) {
            m = _mm256_max_ps(
                m,
                _mm256_andnot_ps(sign, _mm256_loadu_ps(x.as_ptr().add(i))),
            );
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        *block = BlockQ8_K {
            d: [0; 4],
            qs: [0; 256],
            bsums: [[0; 2]; 16],
        };
        if amax == 0.0 {
            return;
        }
        let max = x[x.iter().position(|v| v.abs() == amax).unwrap_or(0)];
        let iscale = -127.0 / max;
        let iv = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        for g in 0..8 {
            let q: [__m256i; 4] = [0, 8, 16, 24].map(|i| {
                let v = _mm256_mul_ps(iv, _mm256_loadu_ps(x.as_ptr().add(32 * g + i)));
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_min_epi32(_mm256_cvttps_epi32(r), cap)
            });
            let bytes = pack_i8(q);
            block.qs[32 * g..32 * g + 32].copy_from_slice(&bytes);
        }
        for (gi, sum) in block.bsums.iter_mut().enumerate() {
            let s: i32 = block.qs[gi * 16..gi * 16 + 16]
                .iter()
                .map(|&q| q as i32)
                .sum();
            *sum = (s as i16).to_le_bytes();
        }
        block.d = (1.0 / iscale).to_le_bytes();
    }
}

/// The fast dot product for `ty`, when there is one.
pub fn vec_dot(_cpu: Avx2, ty: GgmlType, w: &[u8], a: &[u8]) -> Option<f32> {
    // SAFETY: `_cpu` proves avx2, fma and f16c, the features the dot kernels enable; they only
    // read the blocks' fixed-size arrays. (The casts of alignment-1 Pod blocks panic, never
    // misread, when a length is not whole blocks.)
    unsafe {
        Some(match ty {
            GgmlType::Q4_0 => dot_q4_0(bytemuck::cast_slice(w), bytemuck::cast_slice(a)),
            GgmlType::Q4_1 => dot_q4_1(bytemuck::cast_slice(w), bytemuck::cast_slice(a)),
            GgmlType::Q5_0 => dot_q5_0(bytemuck::cast_slice(w), bytemuck::cast_slice(a)),
            GgmlType::Q8_0 => dot_q8_0(bytemuck::cast_slice(w), bytemuck::cast_slice(a)),
            GgmlType::Q4_K => dot_q4_k(bytemuck::cast_slice(w), bytemuck::cast_slice(a)),
            GgmlType::Q6_K => dot_q6_k(bytemuck::cast_slice(w), bytemuck::cast_slice(a)),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::{random_k_rows, values};
    use crate::quant;

    #[test]
    fn simd_activation_quantization_is_bit_exact() {
        let Some(cpu) = Avx2::detect() else {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        };
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
            for (seed, scale) in [(1u64, 1.0f32), (2, 1e-6), (3, 3e4), (4, 0.0)] {
                let mut x = values(1024, seed, scale);
                // Exact halves and ties of the rounding, and a lone extreme value.
                x[5] = 0.5 * scale;
                x[6] = -2.5 * scale;
                x[300] = -4.0 * scale.max(1.0);
                let mut reference = Vec::new();
                quant::quantize_activations(ty, &x, &mut reference).unwrap();
                let mut fast = vec![0u8; reference.len()];
                assert!(quantize_activations(cpu, ty, &x, &mut fast));
                assert_eq!(fast, reference, "{ty} scale {scale}");
            }
        }
    }

    #[test]
    fn simd_dots_match_the_reference_on_awkward_inputs() {
        let Some(cpu) = Avx2::detect() else {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        };
        let cases: [(GgmlType, &[usize]); 6] = [
            (GgmlType::Q4_0, &[]),
            (GgmlType::Q4_1, &[]),
            (GgmlType::Q5_0, &[]),
            (GgmlType::Q8_0, &[]),
            (GgmlType::Q4_K, &[0, 2]),
            (GgmlType::Q6_K, &[208]),
        ];
        for (ty, scale_offsets) in cases {
            for (n, seed, scale) in [
                (256usize, 1u64, 1.0f32),
                (768, 2, 1e-4),
                (2816, 3, 300.0),
                (256, 4, 0.0),
            ] {
                let w = if scale_offsets.is_empty() {
                    let mut out = Vec::new();
                    quant::quantize_row(ty, &values(n, seed, 1.0), &mut out).unwrap();
                    out
                } else {
                    random_k_rows(ty, 1, n, seed, scale_offsets)
                };
                let mut a = Vec::new();
                quant::quantize_activations(ty.vec_dot_type(), &values(n, seed * 7, scale), &mut a)
                    .unwrap();
                let reference = quant::vec_dot(ty, &w, &a, n).unwrap();
                let fast = vec_dot(cpu, ty, &w, &a).unwrap();
                let tolerance = 1e-5 * reference.abs().max(1e-30) + 1e-30;
                assert!(
                    (fast - reference).abs() <= tolerance.max(reference.abs() * 1e-5),
                    "{ty} n={n} scale={scale}: {fast} vs {reference}"
                );
            }
        }
    }
}
