//! One `BlockFormat` implementation per ggml block type: dequantization as gguf-py and ggml
//! define it, and the reference dot product with the paired activation format, in ggml's
//! integer arithmetic (`ggml_vec_dot_*_generic`).

use bytemuck::Pod;

use super::GgmlType;
use super::blocks::*;

/// A quantized block format.
pub trait BlockFormat: Pod {
    const TYPE: GgmlType;
    const ELEMENTS: usize;
    /// The activation block this format is dotted with (ggml's `vec_dot_type`).
    type Activation: Pod;
    /// Writes the block's `ELEMENTS` values to `out`.
    fn dequantize(&self, out: &mut [f32]);
    /// Σ weight · activation over equally long runs of blocks.
    fn dot(weights: &[Self], activations: &[Self::Activation]) -> f32;
}

/// Σ a[i]·b[i] over 32 8-bit values, in i32.
#[inline(always)]
fn dot32(a: &[i8; 32], b: &[i8; 32]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// The 32 4-bit values of a legacy block, in element order.
#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [i8; 32] {
    let mut q = [0i8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) as i8;
        q[j + 16] = (qs[j] >> 4) as i8;
    }
    q
}

/// The 32 5-bit values of a Q5 block, in element order.
#[inline(always)]
fn five_bits(qs: &[u8; 16], qh: [u8; 4]) -> [i8; 32] {
    let high = u32::from_le_bytes(qh);
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((high >> j) & 1) << 4) as i8;
    }
    q
}

impl BlockFormat for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const ELEMENTS: usize = 32;
    type Activation = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_at(self.d);
        for (o, q) in out.iter_mut().zip(nibbles(&self.qs)) {
            *o = (q - 8) as f32 * d;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_0]) -> f32 {
        let mut sum = 0.0f32;
        for (w, a) in weights.iter().zip(activations) {
            let mut q = nibbles(&w.qs);
            q.iter_mut().for_each(|v| *v -= 8);
            sum += dot32(&q, &a.qs) as f32 * f16_at(w.d) * f16_at(a.d);
        }
        sum
    }
}

impl BlockFormat for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const ELEMENTS: usize = 32;
    type Activation = BlockQ8_1;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (f16_at(self.d), f16_at(self.m));
        for (o, q) in out.iter_mut().zip(nibbles(&self.qs)) {
            *o = d * q as f32 + m;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_1]) -> f32 {
        let mut sum = 0.0f32;
        for (w, a) in weights.iter().zip(activations) {
            let sumi = dot32(&nibbles(&w.qs), &a.qs);
            sum += (f16_at(w.d) * f16_at(a.d)) * sumi as f32 + f16_at(w.m) * f16_at(a.s);
        }
        sum
    }
}

impl BlockFormat for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const ELEMENTS: usize = 32;
    type Activation = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_at(self.d);
        for (o, q) in out.iter_mut().zip(five_bits(&self.qs, self.qh)) {
            *o = d * (q - 16) as f32;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_0]) -> f32 {
        let mut sum = 0.0f32;
        for (w, a) in weights.iter().zip(activations) {
            let mut q = five_bits(&w.qs, w.qh);
            q.iter_mut().for_each(|v| *v -= 16);
            sum += (f16_at(w.d) * f16_at(a.d)) * dot32(&q, &a.qs) as f32;
        }
        sum
    }
}

impl BlockFormat for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const ELEMENTS: usize = 32;
    type Activation = BlockQ8_1;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (f16_at(self.d), f16_at(self.m));
        for (o, q) in out.iter_mut().zip(five_bits(&self.qs, self.qh)) {
            *o = d * q as f32 + m;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_1]) -> f32 {
        let mut sum = 0.0f32;
        for (w, a) in weights.iter().zip(activations) {
            let sumi = dot32(&five_bits(&w.qs, w.qh), &a.qs);
            sum += (f16_at(w.d) * f16_at(a.d)) * sumi as f32 + f16_at(w.m) * f16_at(a.s);
        }
        sum
    }
}

impl BlockFormat for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const ELEMENTS: usize = 32;
    type Activation = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_at(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_0]) -> f32 {
        let mut sum = 0.0f32;
        for (w, a) in weights.iter().zip(activations) {
            sum += dot32(&w.qs, &a.qs) as f32 * (f16_at(w.d) * f16_at(a.d));
        }
        sum
    }
}

impl BlockFormat for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const ELEMENTS: usize = 32;
    type Activation = BlockQ8_1;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_at(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_1]) -> f32 {
        let mut sum = 0.0f32;
        for (w, a) in weights.iter().zip(activations) {
            sum += dot32(&w.qs, &a.qs) as f32 * (f16_at(w.d) * f16_at(a.d));
        }
        sum
    }
}

/// Σ over 16-element groups of scale[g] · Σ q·a, for K-quants whose q values are unpacked
/// into `q` (256 values) with one scale per 16 elements.
#[inline(always)]
fn scaled_sum_16(q: &[i8; 256], a: &[i8; 256], scale: impl Fn(usize) -> i32) -> i32 {
    let mut total = 0i32;
    for g in 0..16 {
        let s: i32 = q[g * 16..g * 16 + 16]
            .iter()
            .zip(&a[g * 16..g * 16 + 16])
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
        total += scale(g) * s;
    }
    total
}

impl BlockQ2_K {
    fn quants(&self) -> [i8; 256] {
        let mut q = [0i8; 256];
        for (e, v) in q.iter_mut().enumerate() {
            let (half, r) = (e / 128, e % 128);
            *v = ((self.qs[half * 32 + r % 32] >> (2 * (r / 32))) & 3) as i8;
        }
        q
    }
}

impl BlockFormat for BlockQ2_K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const ELEMENTS: usize = 256;
    type Activation = BlockQ8_K;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, dmin) = (f16_at(self.d), f16_at(self.dmin));
        let q = self.quants();
        for (e, o) in out.iter_mut().enumerate().take(256) {
            let sc = self.scales[e / 16];
            let dl = d * (sc & 0x0f) as f32;
            let ml = dmin * (sc >> 4) as f32;
            *o = dl * q[e] as f32 - ml;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_K]) -> f32 {
        let mut sum = 0.0f32;
        for (w, a) in weights.iter().zip(activations) {
            let isum = scaled_sum_16(&w.quants(), &a.qs, |g| (w.scales[g] & 0x0f) as i32);
            let mins: i32 = (0..16).map(|g| a.bsum(g) * (w.scales[g] >> 4) as i32).sum();
            sum += a.d() * f16_at(w.d) * isum as f32 - a.d() * f16_at(w.dmin) * mins as f32;
        }
        sum
    }
}

impl BlockQ3_K {
    fn quants(&self) -> [i8; 256] {
        let mut q = [0i8; 256];
        for (e, v) in q.iter_mut().enumerate() {
            let (half, r) = (e / 128, e % 128);
            let low = (self.qs[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
            let high_set = (self.hmask[e % 32] >> (e / 32)) & 1 == 1;
            // The offset of 4 applies where the high bit is clear.
            *v = low as i8 - if high_set { 0 } else { 4 };
        }
        q
    }

    /// The 16 6-bit scales, minus 32.
    fn scale(&self, i: usize) -> i32 {
        let low = if i < 8 {
            self.scales[i] & 0x0f
        } else {
            self.scales[i - 8] >> 4
        };
        let high = (self.scales[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i32 - 32
    }
}

impl BlockFormat for BlockQ3_K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const ELEMENTS: usize = 256;
    type Activation = BlockQ8_K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_at(self.d);
        let q = self.quants();
        for (e, o) in out.iter_mut().enumerate().take(256) {
            let dl = d * self.scale(e / 16) as f32;
            *o = dl * q[e] as f32;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_K]) -> f32 {
        let mut sum = 0.0f32;
        for (w, a) in weights.iter().zip(activations) {
            let isum = scaled_sum_16(&w.quants(), &a.qs, |g| w.scale(g));
            sum += f16_at(w.d) * a.d() * isum as f32;
        }
        sum
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block (`get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Dot product of 256 unpacked K-quant values in 8 groups of 32 with 6-bit scales and mins.
#[inline(always)]
fn dot_scale_min_32(q: &[i8; 256], d: f32, dmin: f32, scales: &[u8; 12], a: &BlockQ8_K) -> f32 {
    let mut isum = 0i32;
    let mut mins = 0i32;
    for g in 0..8 {
        let (sc, m) = scale_min_k4(g, scales);
        let s: i32 = q[g * 32..g * 32 + 32]
            .iter()
            .zip(&a.qs[g * 32..g * 32 + 32])
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
        isum += sc as i32 * s;
        mins += m as i32 * (a.bsum(2 * g) + a.bsum(2 * g + 1));
    }
    a.d() * d * isum as f32 - a.d() * dmin * mins as f32
}

impl BlockQ4_K {
    fn quants(&self) -> [i8; 256] {
        let mut q = [0i8; 256];
        for (e, v) in q.iter_mut().enumerate() {
            let (chunk, r) = (e / 64, e % 64);
            let byte = self.qs[chunk * 32 + r % 32];
            *v = (if r < 32 { byte & 0x0f } else { byte >> 4 }) as i8;
        }
        q
    }
}

impl BlockFormat for BlockQ4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const ELEMENTS: usize = 256;
    type Activation = BlockQ8_K;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, dmin) = (f16_at(self.d), f16_at(self.dmin));
        let q = self.quants();
        for (e, o) in out.iter_mut().enumerate().take(256) {
            let (sc, m) = scale_min_k4(e / 32, &self.scales);
            *o = (d * sc as f32) * q[e] as f32 - dmin * m as f32;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_K]) -> f32 {
        weights
            .iter()
            .zip(activations)
            .map(|(w, a)| dot_scale_min_32(&w.quants(), f16_at(w.d), f16_at(w.dmin), &w.scales, a))
            .sum()
    }
}

impl BlockQ5_K {
    fn quants(&self) -> [i8; 256] {
        let mut q = [0i8; 256];
        for (e, v) in q.iter_mut().enumerate() {
            let (chunk, r) = (e / 64, e % 64);
            let byte = self.qs[chunk * 32 + r % 32];
            let low = if r < 32 { byte & 0x0f } else { byte >> 4 };
            let high = (self.qh[e % 32] >> (e / 32)) & 1;
            *v = (low | (high << 4)) as i8;
        }
        q
    }
}

impl BlockFormat for BlockQ5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const ELEMENTS: usize = 256;
    type Activation = BlockQ8_K;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, dmin) = (f16_at(self.d), f16_at(self.dmin));
        let q = self.quants();
        for (e, o) in out.iter_mut().enumerate().take(256) {
            let (sc, m) = scale_min_k4(e / 32, &self.scales);
            *o = (d * sc as f32) * q[e] as f32 - dmin * m as f32;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_K]) -> f32 {
        weights
            .iter()
            .zip(activations)
            .map(|(w, a)| dot_scale_min_32(&w.quants(), f16_at(w.d), f16_at(w.dmin), &w.scales, a))
            .sum()
    }
}

impl BlockQ6_K {
    fn quants(&self) -> [i8; 256] {
        let mut q = [0i8; 256];
        for (e, v) in q.iter_mut().enumerate() {
            let (half, r) = (e / 128, e % 128);
            let low = (self.ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
            let high = (self.qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
            *v = (low | (high << 4)) as i8 - 32;
        }
        q
    }
}

impl BlockFormat for BlockQ6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const ELEMENTS: usize = 256;
    type Activation = BlockQ8_K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_at(self.d);
        let q = self.quants();
        for (e, o) in out.iter_mut().enumerate().take(256) {
            *o = (d * self.scales[e / 16] as f32) * q[e] as f32;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_K]) -> f32 {
        let mut sum = 0.0f32;
        for (w, a) in weights.iter().zip(activations) {
            let isum = scaled_sum_16(&w.quants(), &a.qs, |g| w.scales[g] as i32);
            sum += f16_at(w.d) * a.d() * isum as f32;
        }
        sum
    }
}

impl BlockFormat for BlockQ8_K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const ELEMENTS: usize = 256;
    type Activation = BlockQ8_K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = d * q as f32;
        }
    }

    fn dot(weights: &[Self], activations: &[BlockQ8_K]) -> f32 {
        weights
            .iter()
            .zip(activations)
            .map(|(w, a)| {
                w.d()
                    * a.d()
                    * w.qs
                        .iter()
                        .zip(&a.qs)
                        .map(|(&x, &y)| x as i32 * y as i32)
                        .sum::<i32>() as f32
            })
            .sum()
    }
}
