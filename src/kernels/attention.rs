//! Causal multi-head attention of a batch of queries over the KV cache.

use half::f16;

use super::{ThreadPool, softmax_in_place};

/// One layer's keys or values, (positions, kv_dim), held in two parts: the first rows in
/// `shared` (a prefix several caches of an engine hold once), the rest in `own`. Every
/// kernel reads them a row at a time in position order, so where the split lies never
/// changes a result.
#[derive(Debug)]
pub struct KvRows<'a, T> {
    /// Rows 0..shared.len() / kv_dim: whole rows.
    shared: &'a [T],
    /// The rows after those.
    own: &'a [T],
}

impl<T> Clone for KvRows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for KvRows<'_, T> {}

impl<'a, T> KvRows<'a, T> {
    /// `shared` holds whole rows of the same width as `own`'s.
    pub fn new(shared: &'a [T], own: &'a [T]) -> Self {
        Self { shared, own }
    }

    /// Rows held in one piece.
    pub fn whole(rows: &'a [T]) -> Self {
        Self::new(&[], rows)
    }

    /// Values start..start + len, which lie within one row (so on one side of the split,
    /// the split being at a row boundary).
    #[inline(always)]
    pub fn span(&self, start: usize, len: usize) -> &'a [T] {
        match start.checked_sub(self.shared.len()) {
            None => &self.shared[start..start + len],
            Some(own_start) => &self.own[own_start..own_start + len],
        }
    }
}

/// One layer's keys or values in the cache's storage type.
#[derive(Debug, Clone, Copy)]
pub enum KvSlice<'a> {
    F32(KvRows<'a, f32>),
    F16(KvRows<'a, f16>),
}

impl KvSlice<'_> {
    fn dot(&self, start: usize, q: &[f32]) -> f32 {
        match self {
            KvSlice::F32(k) => k
                .span(start, q.len())
                .iter()
                .zip(q)
                .map(|(&a, &b)| a * b)
                .sum(),
            KvSlice::F16(k) => k
                .span(start, q.len())
                .iter()
                .zip(q)
                .map(|(&a, &b)| a.to_f32() * b)
                .sum(),
        }
    }

    fn accumulate(&self, start: usize, weight: f32, out: &mut [f32]) {
        match self {
            KvSlice::F32(v) => {
                let n = out.len();
                for (o, &x) in out.iter_mut().zip(v.span(start, n)) {
                    *o += weight * x;
                }
            }
            KvSlice::F16(v) => {
                let n = out.len();
                for (o, &x) in out.iter_mut().zip(v.span(start, n)) {
                    *o += weight * x.to_f32();
                }
            }
        }
    }
}

/// Shapes and constants of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Position of the first query row; query row b sits at `first_pos + b`.
    pub first_pos: usize,
    /// Multiplies Q·K before the softmax.
    pub scale: f32,
    /// Sliding window: a query at p sees keys p - window + 1 ..= p. `None`: all keys ≤ p.
    pub window: Option<usize>,
}

/// out[b][h] = softmax(scale · q[b][h] · K[..=p]ᵀ) · V[..=p] for every query row b and head h,
/// where K and V rows hold every position up to the last query's (the batch's own keys
/// are already in the cache). Grouped-query attention: head h reads kv head h / (n_head / n_head_kv).
/// `q` and `out` are (batch, n_head × head_dim).
pub fn attention(
    pool: &ThreadPool,
    q: &[f32],
    k: KvSlice<'_>,
    v: KvSlice<'_>,
    shape: AttentionShape,
    out: &mut [f32],
) {
    let AttentionShape {
        n_head,
        n_head_kv,
        head_dim,
        first_pos,
        scale,
        window,
    } = shape;
    let q_dim = n_head * head_dim;
    let kv_dim = n_head_kv * head_dim;
    let batch = q.len() / q_dim;
    assert_eq!(out.len(), q.len(), "attention output has the shape of q");
    let group = n_head / n_head_kv;
    let out_ptr = super::DisjointWrites::new(out);

    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = super::cpu::Avx512::detect().filter(|_| pool.fast_kernels())
        && head_dim.is_multiple_of(64)
    {
        // One task per (query row, KV head): the group's query heads share each K/V row read.
        pool.for_ranges(batch * n_head_kv, 1, |tasks| {
            let out_ptr = &out_ptr;
            let mut scores = SCORES.take();
            for task in tasks {
                let (b, g) = (balanced_row(task / n_head_kv, batch), task % n_head_kv);
                let pos = first_pos + b;
                let first_key = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let span = Span {
                    kv_dim,
                    offset: g * head_dim,
                    first: first_key,
                    len: pos + 1 - first_key,
                };
                let heads =
                    b * q_dim + g * group * head_dim..b * q_dim + (g + 1) * group * head_dim;
                // SAFETY: only task (b, g) writes these query heads of row b.
                let out_heads = unsafe { out_ptr.part(heads.start..heads.end) };
                group_head_avx512(
                    cpu,
                    k,
                    v,
                    span,
                    head_dim,
                    &q[heads],
                    scale,
                    &mut scores,
                    out_heads,
                );
            }
            SCORES.set(scores);
        });
        return;
    }

    let fast = pool.fast_kernels();
    pool.for_ranges(batch * n_head, 4, |tasks| {
        let out_ptr = &out_ptr;
        let mut scores = SCORES.take();
        for task in tasks {
            let (b, h) = (balanced_row(task / n_head, batch), task % n_head);
            let pos = first_pos + b;
            let first_key = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let kv_offset = (h / group) * head_dim;
            let qh = &q[b * q_dim + h * head_dim..b * q_dim + (h + 1) * head_dim];

            let start = b * q_dim + h * head_dim;
            // SAFETY: only task (b, h) writes head h of row b.
            let oh = unsafe { out_ptr.part(start..start + head_dim) };
            let span = Span {
                kv_dim,
                offset: kv_offset,
                first: first_key,
                len: pos + 1 - first_key,
            };
            if !(fast && fast_head(k, v, span, qh, scale, &mut scores, oh)) {
                reference_head(k, v, span, qh, scale, &mut scores, oh);
            }
        }
        SCORES.set(scores);
    });
}

thread_local! {
    /// Each thread's attention-score buffer, kept between calls so decoding does not allocate.
    static SCORES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The query row of the `i`-th task row: 0, last, 1, last − 1, … Causal rows cost in
/// proportion to their position, so contiguous task ranges taken in this order carry about
/// equal work.
fn balanced_row(i: usize, batch: usize) -> usize {
    if i.is_multiple_of(2) {
        i / 2
    } else {
        batch - 1 - i / 2
    }
}

/// The keys and values one query head attends to: rows first..first + len of the cache,
/// columns offset..offset + head_dim of each kv_dim-wide row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub kv_dim: usize,
    pub offset: usize,
    pub first: usize,
    pub len: usize,
}

/// One query head's attention, the plain way: the reference for the SIMD path.
fn reference_head(
    k: KvSlice<'_>,
    v: KvSlice<'_>,
    span: Span,
    q: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    scores.clear();
    scores.extend(
        (span.first..span.first + span.len)
            .map(|p| k.dot(p * span.kv_dim + span.offset, q) * scale),
    );
    softmax_in_place(scores);
    out.fill(0.0);
    for (i, &w) in scores.iter().enumerate() {
        v.accumulate((span.first + i) * span.kv_dim + span.offset, w, out);
    }
}

/// A KV head's group of query heads with AVX-512 (head size a multiple of 64).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn group_head_avx512(
    cpu: super::cpu::Avx512,
    k: KvSlice<'_>,
    v: KvSlice<'_>,
    span: Span,
    head_dim: usize,
    q: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    use super::attention_avx512::group;
    match (k, v) {
        (KvSlice::F32(keys), KvSlice::F32(values)) => {
            group(cpu, keys, values, span, head_dim, q, scale, scores, out)
        }
        (KvSlice::F16(keys), KvSlice::F16(values)) => {
            group(cpu, keys, values, span, head_dim, q, scale, scores, out)
        }
        _ => unreachable!("keys and values share the cache's storage type"),
    }
}

/// One query head's attention with AVX2 + F16C, when the CPU and head size allow it.
fn fast_head(
    k: KvSlice<'_>,
    v: KvSlice<'_>,
    span: Span,
    q: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = super::cpu::Avx2::detect()
        && q.len().is_multiple_of(8)
    {
        use super::simd_x86::{attention_scores, attention_weighted_sum};
        let Span {
            kv_dim,
            offset,
            first,
            len,
        } = span;
        scores.resize(len, 0.0);
        match k {
            KvSlice::F32(keys) => {
                attention_scores(cpu, keys, kv_dim, offset, first, q, scale, scores)
            }
            KvSlice::F16(keys) => {
                attention_scores(cpu, keys, kv_dim, offset, first, q, scale, scores)
            }
        }
        softmax_in_place(scores);
        match v {
            KvSlice::F32(values) => {
                attention_weighted_sum(cpu, values, kv_dim, offset, first, scores, out)
            }
            KvSlice::F16(values) => {
                attention_weighted_sum(cpu, values, kv_dim, offset, first, scores, out)
            }
        }
        return true;
    }
    let _ = (k, v, span, q, scale, scores, out);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::values;

    #[test]
    fn simd_heads_match_the_reference_heads() {
        for (head_dim, n_kv_heads, positions, first, scale) in [
            (64usize, 3usize, 37usize, 0usize, 1.0f32),
            (256, 1, 5, 2, 30.0),
            (8, 2, 1, 0, 1e-3),
            (72, 1, 300, 17, 4.0),
        ] {
            let kv_dim = head_dim * n_kv_heads;
            let keys = values(positions * kv_dim, 1, scale);
            let vals = values(positions * kv_dim, 2, 1.0);
            let keys16: Vec<f16> = keys.iter().map(|&x| f16::from_f32(x)).collect();
            let vals16: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
            let q = values(head_dim, 3, 1.0);
            for (k, v) in [
                (
                    KvSlice::F32(KvRows::whole(&keys)),
                    KvSlice::F32(KvRows::whole(&vals)),
                ),
                (
                    KvSlice::F16(KvRows::whole(&keys16)),
                    KvSlice::F16(KvRows::whole(&vals16)),
                ),
            ] {
                let span = Span {
                    kv_dim,
                    offset: (n_kv_heads - 1) * head_dim,
                    first,
                    len: positions - first,
                };
                let (mut s1, mut s2) = (Vec::new(), Vec::new());
                let mut fast = vec![0.0f32; head_dim];
                let mut reference = vec![0.0f32; head_dim];
                if !fast_head(k, v, span, &q, 0.125, &mut s1, &mut fast) {
                    eprintln!("no AVX2 on this CPU: nothing to compare");
                    return;
                }
                reference_head(k, v, span, &q, 0.125, &mut s2, &mut reference);
                for (f, r) in fast.iter().zip(&reference) {
                    assert!(
                        (f - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "head_dim {head_dim}: {f} vs {r}"
                    );
                }
            }
        }
    }

    /// The whole attention (every SIMD path the CPU has: AVX-512 groups, AVX2 heads) against
    /// a pool running the reference kernels: grouped heads, f16 and f32 caches, windows,
    /// prefill batches and key counts on both sides of each 16-key block.
    #[test]
    fn fast_attention_matches_the_reference_pool() {
        let reference = ThreadPool::with_kernels(2, crate::kernels::Kernels::Reference);
        let fast = ThreadPool::new(2);
        for (head_dim, n_head, n_head_kv, first_pos, batch, window) in [
            (64usize, 9usize, 3usize, 0usize, 40usize, None),
            (64, 9, 3, 15, 1, None),
            (64, 9, 3, 16, 2, None),
            (64, 9, 3, 300, 3, None),
            (256, 4, 1, 0, 33, Some(7)),
            (256, 4, 1, 100, 1, Some(20)),
            (128, 8, 8, 31, 5, None),
        ] {
            let (q_dim, kv_dim) = (n_head * head_dim, n_head_kv * head_dim);
            let positions = first_pos + batch;
            let keys = values(positions * kv_dim, 1, 2.0);
            let vals = values(positions * kv_dim, 2, 1.0);
            let keys16: Vec<f16> = keys.iter().map(|&x| f16::from_f32(x)).collect();
            let vals16: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
            let q = values(batch * q_dim, 3, 1.0);
            let shape = AttentionShape {
                n_head,
                n_head_kv,
                head_dim,
                first_pos,
                scale: 1.0 / (head_dim as f32).sqrt(),
                window,
            };
            for (k, v) in [
                (
                    KvSlice::F32(KvRows::whole(&keys)),
                    KvSlice::F32(KvRows::whole(&vals)),
                ),
                (
                    KvSlice::F16(KvRows::whole(&keys16)),
                    KvSlice::F16(KvRows::whole(&vals16)),
                ),
            ] {
                let mut ours = vec![0.0f32; q.len()];
                let mut theirs = vec![0.0f32; q.len()];
                attention(&fast, &q, k, v, shape, &mut ours);
                attention(&reference, &q, k, v, shape, &mut theirs);
                for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "head_dim {head_dim}, {positions} positions, output {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Attention over rows split between shared and own buffers at `split` positions.
    #[allow(clippy::too_many_arguments)]
    fn attention_split<'a, T: Copy>(
        keys: &'a [T],
        vals: &'a [T],
        split: usize,
        kv_dim: usize,
        wrap: impl Fn(KvRows<'a, T>) -> KvSlice<'a>,
        q: &[f32],
        shape: AttentionShape,
        threads: usize,
    ) -> Vec<f32> {
        let at = split * kv_dim;
        let (k, v) = (
            wrap(KvRows::new(&keys[..at], &keys[at..])),
            wrap(KvRows::new(&vals[..at], &vals[at..])),
        );
        let mut out = vec![0.0f32; q.len()];
        attention(&ThreadPool::new(threads), q, k, v, shape, &mut out);
        out
    }

    #[test]
    fn rows_split_anywhere_give_the_same_bits_as_rows_in_one_piece() {
        // Head sizes that take each path: 64 (AVX-512 groups where the CPU has it), 24 (AVX2),
        // 6 (the reference); grouped heads, a window, batches that start mid-cache.
        for (head_dim, n_head, n_head_kv, positions, batch, window) in [
            (64usize, 4usize, 2usize, 70usize, 5usize, None),
            (64, 3, 1, 33, 1, Some(9)),
            (24, 2, 2, 40, 3, None),
            (6, 2, 1, 17, 4, Some(5)),
        ] {
            let kv_dim = head_dim * n_head_kv;
            let keys = values(positions * kv_dim, 11, 2.0);
            let vals = values(positions * kv_dim, 12, 1.0);
            let keys16: Vec<f16> = keys.iter().map(|&x| f16::from_f32(x)).collect();
            let vals16: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
            let q = values(batch * n_head * head_dim, 13, 1.0);
            let shape = AttentionShape {
                n_head,
                n_head_kv,
                head_dim,
                first_pos: positions - batch,
                scale: 0.3,
                window,
            };
            for threads in [1, 2] {
                let whole32 =
                    attention_split(&keys, &vals, 0, kv_dim, KvSlice::F32, &q, shape, threads);
                let whole16 = attention_split(
                    &keys16,
                    &vals16,
                    0,
                    kv_dim,
                    KvSlice::F16,
                    &q,
                    shape,
                    threads,
                );
                for split in [
                    1,
                    positions / 2,
                    positions - batch,
                    positions - 1,
                    positions,
                ] {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&attention_split(
                            &keys,
                            &vals,
                            split,
                            kv_dim,
                            KvSlice::F32,
                            &q,
                            shape,
                            threads
                        )),
                        bits(&whole32),
                        "f32, head_dim {head_dim}, split {split}"
                    );
                    assert_eq!(
                        bits(&attention_split(
                            &keys16,
                            &vals16,
                            split,
                            kv_dim,
                            KvSlice::F16,
                            &q,
                            shape,
                            threads
                        )),
                        bits(&whole16),
                        "f16, head_dim {head_dim}, split {split}"
                    );
                }
            }
        }
    }

    #[test]
    fn balanced_order_visits_every_row_once() {
        for batch in 1..9 {
            let mut rows: Vec<usize> = (0..batch).map(|i| balanced_row(i, batch)).collect();
            rows.sort();
            assert_eq!(rows, (0..batch).collect::<Vec<_>>());
        }
    }

    #[test]
    fn single_key_attention_returns_its_value() {
        let q = [1.0f32, 2.0];
        let k = [0.5f32, 0.5];
        let v = [3.0f32, -4.0];
        let mut out = [0.0f32; 2];
        let shape = AttentionShape {
            n_head: 1,
            n_head_kv: 1,
            head_dim: 2,
            first_pos: 0,
            scale: 1.0,
            window: None,
        };
        attention(
            &ThreadPool::new(1),
            &q,
            KvSlice::F32(KvRows::whole(&k)),
            KvSlice::F32(KvRows::whole(&v)),
            shape,
            &mut out,
        );
        assert_eq!(out, [3.0, -4.0]);
    }

    #[test]
    fn window_hides_old_keys_and_causality_hides_future_ones() {
        // Three positions; keys equal so weights are uniform over the visible ones.
        let k = [1.0f32; 3];
        let v = [10.0f32, 20.0, 40.0];
        let q = [1.0f32, 1.0, 1.0];
        let mut out = [0.0f32; 3];
        let full = AttentionShape {
            n_head: 1,
            n_head_kv: 1,
            head_dim: 1,
            first_pos: 0,
            scale: 1.0,
            window: None,
        };
        attention(
            &ThreadPool::new(2),
            &q,
            KvSlice::F32(KvRows::whole(&k)),
            KvSlice::F32(KvRows::whole(&v)),
            full,
            &mut out,
        );
        assert_eq!(out, [10.0, 15.0, 70.0 / 3.0]);
        let windowed = AttentionShape {
            window: Some(2),
            ..full
        };
        attention(
            &ThreadPool::new(2),
            &q,
            KvSlice::F32(KvRows::whole(&k)),
            KvSlice::F32(KvRows::whole(&v)),
            windowed,
            &mut out,
        );
        assert_eq!(out, [10.0, 15.0, 30.0]);
    }
}
