//! AVX-512 attention for one query row and one KV head's group of query heads: each cached
//! key and value row is converted from f16 (or read as f32) once and used by every query
//! head that shares it (grouped-query attention), and the softmax uses a vector exp.
//! `attention::reference_head` is the reference these are tested against.

use std::arch::x86_64::*;

use half::f16;

use super::attention::{KvRows, Span};
use super::cpu::Avx512;

/// A KV cache element type these kernels read 16 at a time as f32.
pub trait KvElement16: Copy {
    /// Elements d..d + 16 of `row` as f32.
    ///
    /// # Safety
    /// `d + 16 <= row.len()` and the CPU has avx512f.
    unsafe fn load16(row: &[Self], d: usize) -> __m512;
}

impl KvElement16 for f32 {
    #[inline(always)]
    unsafe fn load16(row: &[f32], d: usize) -> __m512 {
        debug_assert!(d + 16 <= row.len());
        // SAFETY: the trait's caller guarantees d + 16 <= row.len(), so the 64 bytes read lie
        // inside `row`, and that the CPU has avx512f.
        unsafe { _mm512_loadu_ps(row.as_ptr().add(d)) }
    }
}

impl KvElement16 for f16 {
    #[inline(always)]
    unsafe fn load16(row: &[f16], d: usize) -> __m512 {
        debug_assert!(d + 16 <= row.len());
        // SAFETY: the trait's caller guarantees d + 16 <= row.len() (16 f16 are the 32 bytes
        // read, inside `row`) and that the CPU has avx512f.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(row.as_ptr().add(d).cast())) }
    }
}

/// e^x for 16 lanes, |error| below 2 ulp over the range softmax uses (x ≤ 0); underflows
/// to 0 below about −87. Inlined into the `#[target_feature]` kernels, which enable avx512f.
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    // SAFETY: register-only intrinsics under the caller's avx512f feature.
    unsafe {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
        let x = _mm512_min_ps(x, _mm512_set1_ps(88.7));
        // x = n·ln2 + r with |r| <= ln2/2; ln2 split in two for an exact product.
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        // Taylor-like minimax polynomial for e^r on [−ln2/2, ln2/2] (Cephes expf).
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(e, n)
    }
}

/// gate[i] = act(gate[i]) · up[i], 16 lanes at a time (a masked tail for the rest).
/// Inlined into the `#[target_feature]` kernels, which enable avx512f.
#[inline(always)]
unsafe fn gated(gate: &mut [f32], up: &[f32], act: impl Fn(__m512) -> __m512) {
    assert_eq!(gate.len(), up.len(), "gate and up have one length");
    // SAFETY: masked loads and stores stay inside both slices; the caller enabled the features.
    unsafe {
        for i in (0..gate.len()).step_by(16) {
            let left = gate.len() - i;
            let mask: __mmask16 = if left >= 16 {
                0xffff
            } else {
                ((1u32 << left) - 1) as __mmask16
            };
            let g = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(i));
            let u = _mm512_maskz_loadu_ps(mask, up.as_ptr().add(i));
            _mm512_mask_storeu_ps(gate.as_mut_ptr().add(i), mask, _mm512_mul_ps(act(g), u));
        }
    }
}

/// gate[i] = silu(gate[i]) · up[i] (SwiGLU).
pub fn silu_mul(_cpu: Avx512, gate: &mut [f32], up: &[f32]) {
    // SAFETY: `_cpu` exists only when the CPU has avx512f, avx512dq, fma and f16c, all that
    // the kernel enables.
    unsafe { silu_mul_kernel(gate, up) }
}

/// gate[i] = gelu_tanh(gate[i]) · up[i] (GeGLU).
pub fn gelu_mul(_cpu: Avx512, gate: &mut [f32], up: &[f32]) {
    // SAFETY: as in silu_mul.
    unsafe { gelu_mul_kernel(gate, up) }
}

#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
fn silu_mul_kernel(gate: &mut [f32], up: &[f32]) {
    // SAFETY: features enabled here; register-only arithmetic inside the closure.
    unsafe {
        gated(gate, up, |x| {
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
            _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
        })
    }
}

/// GeGLU with tanh(y) = 1 − 2 / (e^{2y} + 1).
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
fn gelu_mul_kernel(gate: &mut [f32], up: &[f32]) {
    // SAFETY: features enabled here; register-only arithmetic inside the closure.
    unsafe {
        gated(gate, up, |x| {
            let one = _mm512_set1_ps(1.0);
            let two = _mm512_set1_ps(2.0);
            let inner = _mm512_mul_ps(
                _mm512_set1_ps(0.797_884_6),
                _mm512_mul_ps(
                    x,
                    _mm512_fmadd_ps(_mm512_set1_ps(0.044_715), _mm512_mul_ps(x, x), one),
                ),
            );
            let e = exp16(_mm512_mul_ps(two, inner));
            let tanh = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(e, one)));
            _mm512_mul_ps(
                _mm512_mul_ps(_mm512_set1_ps(0.5), x),
                _mm512_add_ps(one, tanh),
            )
        })
    }
}

/// In-place softmax of `x` with the vector exp.
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
fn softmax(x: &mut [f32]) {
    let n = x.len();
    let full = n / 16 * 16;
    // SAFETY: loads/stores stay below `full` or use masks below `n`; features enabled.
    unsafe {
        let tail_mask: __mmask16 = ((1u32 << (n - full)) - 1) as __mmask16;
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(16) {
            m = _mm512_max_ps(m, _mm512_loadu_ps(x.as_ptr().add(i)));
        }
        if full < n {
            m = _mm512_mask_max_ps(
                m,
                tail_mask,
                m,
                _mm512_maskz_loadu_ps(tail_mask, x.as_ptr().add(full)),
            );
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        // The sum in f64, as ggml's soft_max accumulates it.
        let mut sum = 0.0f64;
        for i in (0..full).step_by(16) {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x.as_ptr().add(i)), max));
            _mm512_storeu_ps(x.as_mut_ptr().add(i), e);
            let wide = _mm512_add_pd(
                _mm512_cvtps_pd(_mm512_castps512_ps256(e)),
                _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(e)),
            );
            sum += _mm512_reduce_add_pd(wide);
        }
        if full < n {
            let e = exp16(_mm512_sub_ps(
                _mm512_maskz_loadu_ps(tail_mask, x.as_ptr().add(full)),
                max,
            ));
            let e = _mm512_maskz_mov_ps(tail_mask, e);
            _mm512_mask_storeu_ps(x.as_mut_ptr().add(full), tail_mask, e);
            let wide = _mm512_add_pd(
                _mm512_cvtps_pd(_mm512_castps512_ps256(e)),
                _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(e)),
            );
            sum += _mm512_reduce_add_pd(wide);
        }
        let inv = _mm512_set1_ps((1.0 / sum) as f32);
        for i in (0..full).step_by(16) {
            _mm512_storeu_ps(
                x.as_mut_ptr().add(i),
                _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), inv),
            );
        }
        if full < n {
            let v = _mm512_maskz_loadu_ps(tail_mask, x.as_ptr().add(full));
            _mm512_mask_storeu_ps(x.as_mut_ptr().add(full), tail_mask, _mm512_mul_ps(v, inv));
        }
    }
}

thread_local! {
    /// Each thread's block of 16 key rows converted to f32, kept between calls.
    static KEY_BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Lane j of the result is the sum of the 16 lanes of `v[j]`. Every vector's lanes are added
/// in one fixed tree: within each 128-bit quarter (0 + 2, 1 + 3, then the two), then the
/// quarters (0 + 1, 2 + 3, then the two), whichever vector and lane it lands in.
/// Inlined into the `#[target_feature]` kernels, which enable avx512f.
#[inline(always)]
unsafe fn sum16(v: &[__m512; 16]) -> __m512 {
    // SAFETY: register-only intrinsics under the caller's avx512f feature.
    unsafe {
        // Per quarter, [a0 + a2, b0 + b2, a1 + a3, b1 + b3] of the pair (a, b).
        let pairs: [__m512; 8] = std::array::from_fn(|p| {
            let (a, b) = (v[2 * p], v[2 * p + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
        });
        // Per quarter, the quarter's sum of a, b, c, d for pairs (a, b) and (c, d).
        let quads: [__m512; 4] = std::array::from_fn(|q| {
            let (ab, cd) = (
                _mm512_castps_pd(pairs[2 * q]),
                _mm512_castps_pd(pairs[2 * q + 1]),
            );
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
            )
        });
        // Quarters 0 + 1 and 2 + 3 of two quads side by side: [x01, x23, y01, y23].
        let halves = |x: __m512, y: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            )
        };
        let (h0, h1) = (halves(quads[0], quads[1]), halves(quads[2], quads[3]));
        // [v0..4: 01 + 23, v4..8, v8..12, v12..16].
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(h0, h1),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(h0, h1),
        )
    }
}

/// Attention of the query heads in `q` (and `out`), both (heads, head_dim) with head_dim a
/// multiple of 64, over one KV head's rows; `scores` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn group<T: KvElement16>(
    _cpu: Avx512,
    keys: KvRows<'_, T>,
    values: KvRows<'_, T>,
    rows: Span,
    head_dim: usize,
    q: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert!(
        head_dim > 0
            && head_dim.is_multiple_of(64)
            && q.len() == out.len()
            && q.len().is_multiple_of(head_dim),
        "query heads and outputs are (heads, head_dim), head_dim a multiple of 64"
    );
    // SAFETY: `_cpu` exists only when the CPU has avx512f, avx512dq, fma and f16c, all that
    // the kernel enables.
    unsafe { group_kernel(keys, values, rows, head_dim, q, scale, scores, out) }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512dq,fma,f16c")]
fn group_kernel<T: KvElement16>(
    keys: KvRows<'_, T>,
    values: KvRows<'_, T>,
    rows: Span,
    head_dim: usize,
    q: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let Span {
        kv_dim,
        offset,
        first,
        len,
    } = rows;
    let heads = q.len() / head_dim;
    scores.clear();
    scores.resize(heads * len, 0.0);
    // SAFETY: every row slice below is bounds-checked; vector loads read inside them
    // (head_dim is a multiple of 16); features enabled.
    unsafe {
        // Keys 16 at a time: each block's rows are converted to f32 once for all the query
        // heads (missing rows of the last block are zeros, never stored), then the 16 dot
        // products' lanes are summed by one transposing tree (sum16), each key's lanes in
        // the same fixed order wherever it falls.
        let scale16 = _mm512_set1_ps(scale);
        KEY_BLOCK.with_borrow_mut(|block| {
            // (16, head_dim)
            block.resize(16 * head_dim, 0.0);
            for i0 in (0..len).step_by(16) {
                let n = (len - i0).min(16);
                for j in 0..16 {
                    let row = &mut block[j * head_dim..(j + 1) * head_dim];
                    if j < n {
                        let k = keys.span((first + i0 + j) * kv_dim + offset, head_dim);
                        for d in (0..head_dim).step_by(16) {
                            _mm512_storeu_ps(row.as_mut_ptr().add(d), T::load16(k, d));
                        }
                    } else {
                        row.fill(0.0);
                    }
                }
                for h in 0..heads {
                    let qh = &q[h * head_dim..(h + 1) * head_dim];
                    let mut acc = [_mm512_setzero_ps(); 16];
                    for d in (0..head_dim).step_by(16) {
                        let qv = _mm512_loadu_ps(qh.as_ptr().add(d));
                        for (j, acc) in acc.iter_mut().enumerate() {
                            let kv = _mm512_loadu_ps(block.as_ptr().add(j * head_dim + d));
                            *acc = _mm512_fmadd_ps(kv, qv, *acc);
                        }
                    }
                    let dots = _mm512_mul_ps(sum16(&acc), scale16);
                    let mask = ((1u32 << n) - 1) as __mmask16;
                    _mm512_mask_storeu_ps(scores.as_mut_ptr().add(h * len + i0), mask, dots);
                }
            }
        });
        for h in 0..heads {
            softmax(&mut scores[h * len..(h + 1) * len]);
        }
        let mut h0 = 0;
        while h0 < heads {
            let n = (heads - h0).min(4);
            let weights = &scores[h0 * len..(h0 + n) * len];
            let out = &mut out[h0 * head_dim..(h0 + n) * head_dim];
            match n {
                4 => weighted_sum::<T, 4>(values, rows, head_dim, weights, out),
                3 => weighted_sum::<T, 3>(values, rows, head_dim, weights, out),
                2 => weighted_sum::<T, 2>(values, rows, head_dim, weights, out),
                _ => weighted_sum::<T, 1>(values, rows, head_dim, weights, out),
            }
            h0 += n;
        }
    }
}

/// out[h] = Σ_i weights[h][i] · value(first + i) for H heads, 64 dimensions at a time so the
/// H × 4 accumulators stay in registers. Inlined into `group_kernel`, which enables avx512f;
/// `head_dim` is a multiple of 64 and `out` holds H heads.
#[inline(always)]
unsafe fn weighted_sum<T: KvElement16, const H: usize>(
    values: KvRows<'_, T>,
    rows: Span,
    head_dim: usize,
    weights: &[f32],
    out: &mut [f32],
) {
    let Span {
        kv_dim,
        offset,
        first,
        len,
    } = rows;
    // SAFETY: row slices are bounds-checked; d0 + 64 <= head_dim; features enabled by the caller.
    unsafe {
        for d0 in (0..head_dim).step_by(64) {
            let mut acc = [[_mm512_setzero_ps(); 4]; H];
            for i in 0..len {
                let start = (first + i) * kv_dim + offset + d0;
                let v = values.span(start, 64);
                let vr = [
                    T::load16(v, 0),
                    T::load16(v, 16),
                    T::load16(v, 32),
                    T::load16(v, 48),
                ];
                for (h, acc) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_ps(weights[h * len + i]);
                    for j in 0..4 {
                        acc[j] = _mm512_fmadd_ps(w, vr[j], acc[j]);
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                for (j, &a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add(h * head_dim + d0 + 16 * j), a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_is_within_two_ulp_of_libm() {
        if Avx512::detect().is_none() {
            eprintln!("no AVX-512 on this CPU: nothing to compare");
            return;
        }
        let mut x: Vec<f32> = (0..2000).map(|i| -87.0 + i as f32 * 0.0437).collect();
        x.extend([0.0, -0.0, -1e-30, -3.5, -86.9, -100.0, f32::NEG_INFINITY]);
        for chunk in x.chunks(16) {
            let mut lanes = [0.0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0.0f32; 16];
            // SAFETY: Avx512::detect() found avx512f above; the load and the store cover the
            // 16-float arrays exactly.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(_mm512_loadu_ps(lanes.as_ptr()))) };
            for (&xi, &g) in chunk.iter().zip(&got) {
                let want = xi.exp();
                let ulp = (want.to_bits() as i64 - g.to_bits() as i64).abs();
                assert!(
                    ulp <= 2 || (want < 1e-37 && g < 1e-37),
                    "exp({xi}) = {g}, libm {want}"
                );
            }
        }
    }

    #[test]
    fn gated_activations_match_the_scalar_ones() {
        let Some(cpu) = Avx512::detect() else {
            return;
        };
        for n in [1usize, 17, 2048] {
            let gate: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.37).sin() * 12.0 - 1.0)
                .collect();
            let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
            for (fast_fn, scalar) in [
                (
                    silu_mul as fn(Avx512, &mut [f32], &[f32]),
                    crate::kernels::silu as fn(f32) -> f32,
                ),
                (gelu_mul, crate::kernels::gelu_tanh),
            ] {
                let mut fast = gate.clone();
                fast_fn(cpu, &mut fast, &up);
                for i in 0..n {
                    let want = scalar(gate[i]) * up[i];
                    assert!(
                        (fast[i] - want).abs() <= 2e-6 * (1.0 + want.abs()),
                        "x={}: {} vs {want}",
                        gate[i],
                        fast[i]
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_matches_the_scalar_softmax_on_odd_lengths() {
        if Avx512::detect().is_none() {
            return;
        }
        for n in [1usize, 15, 16, 17, 100] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 3.1).collect();
            let mut fast = x.clone();
            let mut reference = x.clone();
            // SAFETY: Avx512::detect() found the features softmax enables.
            unsafe { softmax(&mut fast) };
            crate::kernels::softmax_in_place(&mut reference);
            for (f, r) in fast.iter().zip(&reference) {
                assert!((f - r).abs() <= 1e-6 * (1.0 + r.abs()), "n={n}: {f} vs {r}");
            }
        }
    }
}
#[cfg(test)]
mod sum16_tests {
    use super::*;

    #[test]
    fn sum16_sums_each_vector_in_its_lane() {
        if Avx512::detect().is_none() {
            return;
        }
        // Distinct values per vector and lane, with halves so a mixed-up lane shows.
        let v: [[f32; 16]; 16] = std::array::from_fn(|j| {
            std::array::from_fn(|l| (j * 100 + l) as f32 + 0.5 * (l % 3) as f32)
        });
        // SAFETY: Avx512::detect() found avx512f above; loads and stores stay in the arrays.
        let sums = unsafe {
            let regs: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(v[j].as_ptr()));
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), sum16(&regs));
            out
        };
        let want: Vec<f32> = v.iter().map(|r| r.iter().sum()).collect();
        assert_eq!(sums.to_vec(), want);
    }
}
