//! ggml block layouts. Every multi-byte field is stored as little-endian bytes so blocks
//! have alignment 1: a cast from any byte slice of the right length succeeds (GGUF tensor
//! data is only guaranteed 32-byte aligned at its start, and activation buffers are `Vec<u8>`).

use bytemuck::{Pod, Zeroable};
use half::f16;

#[inline(always)]
pub(crate) fn f16_at(bytes: [u8; 2]) -> f32 {
    f16::from_le_bytes(bytes).to_f32()
}

#[inline(always)]
pub(crate) fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// 32 weights: (q − 8)·d.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    /// Element j in the low nibble of qs[j], element 16 + j in the high nibble.
    pub qs: [u8; 16],
}

/// 32 weights: q·d + m.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}

/// 32 weights: (q − 16)·d, q's fifth bit j in qh (little-endian u32).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 32 weights: q·d + m with a fifth bit in qh.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 32 values: q·d.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}

/// 32 activations: q·d, with s = d·Σq for the Q4_1/Q5_1 offset term.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; 32],
}

/// 256 weights in 16 groups of 16: (scale·q − min) with 4-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ2_K {
    /// Low nibble: scale, high nibble: min, per 16 elements.
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

/// 256 weights in 16 groups of 16: 3-bit q (2 bits in qs, 1 in hmask), 6-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ3_K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}

/// 256 weights in 8 groups of 32: 4-bit q, 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// 256 weights in 8 groups of 32: 5-bit q, 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// 256 weights in 16 groups of 16: 6-bit q − 32, 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6_K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: [u8; 2],
}

/// 256 activations: q·d, with the sums of each 16 quants for the K-quant min terms.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_K {
    pub d: [u8; 4],
    pub qs: [i8; 256],
    pub bsums: [[u8; 2]; 16],
}

impl BlockQ8_K {
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    pub fn bsum(&self, i: usize) -> i32 {
        i16::from_le_bytes(self.bsums[i]) as i32
    }
}

const _: () = {
    use super::GgmlType as T;
    assert!(size_of::<BlockQ4_0>() == T::Q4_0.block_bytes());
    assert!(size_of::<BlockQ4_1>() == T::Q4_1.block_bytes());
    assert!(size_of::<BlockQ5_0>() == T::Q5_0.block_bytes());
    assert!(size_of::<BlockQ5_1>() == T::Q5_1.block_bytes());
    assert!(size_of::<BlockQ8_0>() == T::Q8_0.block_bytes());
    assert!(size_of::<BlockQ8_1>() == T::Q8_1.block_bytes());
    assert!(size_of::<BlockQ2_K>() == T::Q2_K.block_bytes());
    assert!(size_of::<BlockQ3_K>() == T::Q3_K.block_bytes());
    assert!(size_of::<BlockQ4_K>() == T::Q4_K.block_bytes());
    assert!(size_of::<BlockQ5_K>() == T::Q5_K.block_bytes());
    assert!(size_of::<BlockQ6_K>() == T::Q6_K.block_bytes());
    assert!(size_of::<BlockQ8_K>() == T::Q8_K.block_bytes());
};
