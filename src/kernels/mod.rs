//! Numeric kernels of the forward pass: quantized matrix × activations, RMSNorm, RoPE,
//! softmax, activation functions, attention over the KV cache.
//!
//! Each kernel here is the plain reference; SIMD versions are tested against it.

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
#[cfg(target_arch = "x86_64")]
pub mod cpu;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm_r16;
#[cfg(target_arch = "x86_64")]
mod gemm_vnni;
mod matmul;
mod ops;
mod pool;
#[cfg(target_arch = "x86_64")]
mod simd_x86;
#[cfg(test)]
mod test_data;

pub use attention::{AttentionShape, KvRows, KvSlice, attention};
pub use matmul::{MatmulScratch, WeightView, matmul, matmul_many};

/// A weight matrix repacked at load for the fastest kernel (16 interleaved rows).
#[cfg(target_arch = "x86_64")]
pub use gemm_r16::{PackedArena, PackedMatrix, packed_len};
/// Nothing repacks on other CPUs.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug)]
pub enum PackedMatrix {}
#[cfg(not(target_arch = "x86_64"))]
pub use matmul::{PackedArena, packed_len};
pub use ops::{
    RopeStyle, add_in_place, gated_activation, gelu_tanh, rms_norm, rms_norm_in_place, rope,
    rope_table, rope_with_table, silu, softmax_in_place,
};
pub use pool::{DisjointWrites, ThreadPool};

/// Which implementation of each kernel a pool's jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// The fastest the CPU has: SIMD wherever there is a kernel for the CPU and the shape.
    #[default]
    Fast,
    /// The scalar references only: several times slower, for checking the fast path against
    /// a whole model's forward pass.
    Reference,
}
