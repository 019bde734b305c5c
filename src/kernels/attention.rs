//! Causal multi-head attention of a batch of queries over the KV cache.

use half::f16;

use super::{ThreadPool, softmax_in_place};

/// One layer's keys or values: (positions, kv_dim), in the cache's storage type.
#[derive(Debug, Clone, Copy)]
pub enum KvSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl KvSlice<'_> {
    fn dot(&self, start: usize, q: &[f32]) -> f32 {
        match self {
            KvSlice::F32(k) => k[start..start + q.len()].iter().zip(q).map(|(&a, &b)| a * b).sum(),
            KvSlice::F16(k) => k[start..start + q.len()]
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
                for (o, &x) in out.iter_mut().zip(&v[start..start + n]) {
                    *o += weight * x;
                }
            }
            KvSlice::F16(v) => {
                let n = out.len();
                for (o, &x) in out.iter_mut().zip(&v[start..start + n]) {
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

struct SharedOut(*mut f32);
// SAFETY: each (query row, head) pair is written by exactly one task, into its own
// head_dim-long span of `out`, which outlives the parallel scope.
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}

/// out[b][h] = softmax(scale · q[b][h] · K[..=p]ᵀ) · V[..=p] for every query row b and head h,
/// where K and V rows hold every position up to the last query's (the batch's own keys
/// are already in the cache). Grouped-query attention: head h reads kv head h / (n_head / n_head_kv).
/// `q` and `out` are (batch, n_head × head_dim).
pub fn attention(pool: &ThreadPool, q: &[f32], k: KvSlice<'_>, v: KvSlice<'_>, shape: AttentionShape, out: &mut [f32]) {
    let AttentionShape { n_head, n_head_kv, head_dim, first_pos, scale, window } = shape;
    let q_dim = n_head * head_dim;
    let kv_dim = n_head_kv * head_dim;
    let batch = q.len() / q_dim;
    assert_eq!(out.len(), q.len(), "attention output has the shape of q");
    let group = n_head / n_head_kv;
    let out_ptr = SharedOut(out.as_mut_ptr());

    pool.for_ranges(batch * n_head, 4, |tasks| {
        let out_ptr = &out_ptr;
        let mut scores = Vec::new();
        for task in tasks {
            let (b, h) = (task / n_head, task % n_head);
            let pos = first_pos + b;
            let first_key = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let kv_offset = (h / group) * head_dim;
            let qh = &q[b * q_dim + h * head_dim..b * q_dim + (h + 1) * head_dim];

            scores.clear();
            scores.extend((first_key..=pos).map(|p| k.dot(p * kv_dim + kv_offset, qh) * scale));
            softmax_in_place(&mut scores);

            // SAFETY: task (b, h) owns out[b][h*head_dim .. (h+1)*head_dim], inside `out`
            // because b < batch and h < n_head.
            let oh = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(b * q_dim + h * head_dim), head_dim) };
            oh.fill(0.0);
            for (i, &w) in scores.iter().enumerate() {
                v.accumulate((first_key + i) * kv_dim + kv_offset, w, oh);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_attention_returns_its_value() {
        let q = [1.0f32, 2.0];
        let k = [0.5f32, 0.5];
        let v = [3.0f32, -4.0];
        let mut out = [0.0f32; 2];
        let shape = AttentionShape { n_head: 1, n_head_kv: 1, head_dim: 2, first_pos: 0, scale: 1.0, window: None };
        attention(&ThreadPool::new(1), &q, KvSlice::F32(&k), KvSlice::F32(&v), shape, &mut out);
        assert_eq!(out, [3.0, -4.0]);
    }

    #[test]
    fn window_hides_old_keys_and_causality_hides_future_ones() {
        // Three positions; keys equal so weights are uniform over the visible ones.
        let k = [1.0f32; 3];
        let v = [10.0f32, 20.0, 40.0];
        let q = [1.0f32, 1.0, 1.0];
        let mut out = [0.0f32; 3];
        let full = AttentionShape { n_head: 1, n_head_kv: 1, head_dim: 1, first_pos: 0, scale: 1.0, window: None };
        attention(&ThreadPool::new(2), &q, KvSlice::F32(&k), KvSlice::F32(&v), full, &mut out);
        assert_eq!(out, [10.0, 15.0, 70.0 / 3.0]);
        let windowed = AttentionShape { window: Some(2), ..full };
        attention(&ThreadPool::new(2), &q, KvSlice::F32(&k), KvSlice::F32(&v), windowed, &mut out);
        assert_eq!(out, [10.0, 15.0, 30.0]);
    }
}
