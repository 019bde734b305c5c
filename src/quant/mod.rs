//! Block formats: layout, dequantization, activation quantization and reference dot products,
//! exactly as ggml and gguf-py define them. SIMD kernels live in `kernels/` and are tested
//! against these.

mod blocks;
mod formats;
mod quantize;
mod types;

use std::fmt;

pub use blocks::*;
pub use formats::BlockFormat;
pub use quantize::{bf16_bits, bf16_to_f32};
pub use types::GgmlType;

use half::f16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// `n` elements are not a whole number of `ty` blocks.
    NotWholeBlocks { ty: GgmlType, n: usize },
    /// A buffer holds `found` bytes where `expected` were needed.
    WrongLength {
        ty: GgmlType,
        expected: usize,
        found: usize,
    },
    /// The operation is not defined for this type (e.g. a K-quant weight quantizer).
    Unsupported {
        ty: GgmlType,
        operation: &'static str,
    },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotWholeBlocks { ty, n } => {
                write!(
                    f,
                    "{n} elements are not a whole number of {ty} blocks of {}",
                    ty.block_elements()
                )
            }
            Self::WrongLength {
                ty,
                expected,
                found,
            } => {
                write!(
                    f,
                    "a {ty} buffer has {found} bytes where {expected} were expected"
                )
            }
            Self::Unsupported { ty, operation } => {
                write!(f, "{operation} is not available for {ty}")
            }
        }
    }
}

impl std::error::Error for QuantError {}

/// Bytes of `n` elements of `ty`, checking that `n` is whole blocks.
fn bytes_for(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    ty.row_bytes(n as u64)
        .map(|b| b as usize)
        .ok_or(QuantError::NotWholeBlocks { ty, n })
}

fn check_len(ty: GgmlType, bytes: &[u8], n: usize) -> Result<(), QuantError> {
    let expected = bytes_for(ty, n)?;
    if bytes.len() != expected {
        return Err(QuantError::WrongLength {
            ty,
            expected,
            found: bytes.len(),
        });
    }
    Ok(())
}

fn blocks<B: BlockFormat>(bytes: &[u8]) -> &[B] {
    // Blocks have alignment 1 and the caller checked the length, so the cast cannot fail.
    bytemuck::cast_slice(bytes)
}

fn dequantize_blocks<B: BlockFormat>(src: &[u8], out: &mut [f32]) {
    for (block, chunk) in blocks::<B>(src)
        .iter()
        .zip(out.chunks_exact_mut(B::ELEMENTS))
    {
        block.dequantize(chunk);
    }
}

/// Converts `out.len()` elements of type `ty` in `src` to f32.
pub fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_len(ty, src, out.len())?;
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0>(src, out),
        GgmlType::Q4_1 => dequantize_blocks::<BlockQ4_1>(src, out),
        GgmlType::Q5_0 => dequantize_blocks::<BlockQ5_0>(src, out),
        GgmlType::Q5_1 => dequantize_blocks::<BlockQ5_1>(src, out),
        GgmlType::Q8_0 => dequantize_blocks::<BlockQ8_0>(src, out),
        GgmlType::Q8_1 => dequantize_blocks::<BlockQ8_1>(src, out),
        GgmlType::Q2_K => dequantize_blocks::<BlockQ2_K>(src, out),
        GgmlType::Q3_K => dequantize_blocks::<BlockQ3_K>(src, out),
        GgmlType::Q4_K => dequantize_blocks::<BlockQ4_K>(src, out),
        GgmlType::Q5_K => dequantize_blocks::<BlockQ5_K>(src, out),
        GgmlType::Q6_K => dequantize_blocks::<BlockQ6_K>(src, out),
        GgmlType::Q8_K => dequantize_blocks::<BlockQ8_K>(src, out),
    }
    Ok(())
}

fn quantize_blocks<B: BlockFormat, const N: usize>(
    x: &[f32],
    out: &mut Vec<u8>,
    quantize: fn(&[f32; N]) -> B,
) {
    for chunk in x.chunks_exact(N) {
        let values: &[f32; N] = chunk.try_into().expect("chunks_exact yields N elements");
        out.extend_from_slice(bytemuck::bytes_of(&quantize(values)));
    }
}

/// Quantizes `x` into `ty`, replacing the contents of `out`. Covers the float types, the
/// legacy block types, and the activation formats Q8_1 and Q8_K.
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
    bytes_for(ty, x.len())?;
    out.clear();
    match ty {
        GgmlType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|&v| out.extend_from_slice(&f16::from_f32(v).to_le_bytes())),
        GgmlType::BF16 => x
            .iter()
            .for_each(|&v| out.extend_from_slice(&bf16_bits(v).to_le_bytes())),
        GgmlType::Q4_0 => quantize_blocks(x, out, quantize::q4_0),
        GgmlType::Q4_1 => quantize_blocks(x, out, quantize::q4_1),
        GgmlType::Q5_0 => quantize_blocks(x, out, quantize::q5_0),
        GgmlType::Q5_1 => quantize_blocks(x, out, quantize::q5_1),
        GgmlType::Q8_0 => quantize_blocks(x, out, quantize::q8_0),
        GgmlType::Q8_1 => quantize_blocks(x, out, quantize::q8_1),
        GgmlType::Q8_K => quantize_blocks(x, out, quantize::q8_k),
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            return Err(QuantError::Unsupported {
                ty,
                operation: "weight quantization",
            });
        }
    }
    Ok(())
}

/// Converts activations `x` to the format `ty` (a `vec_dot_type`) before dot products.
pub fn quantize_activations(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
    if ty != ty.vec_dot_type() {
        return Err(QuantError::Unsupported {
            ty,
            operation: "activation quantization",
        });
    }
    quantize_row(ty, x, out)
}

fn dot_blocks<B: BlockFormat>(w: &[u8], a: &[u8]) -> f32 {
    B::dot(blocks::<B>(w), bytemuck::cast_slice(a))
}

/// Σ w[i]·a[i] over `n` elements: a weight row of `weight_ty` and an activation row already in
/// `weight_ty.vec_dot_type()`, with ggml's arithmetic.
pub fn vec_dot(
    weight_ty: GgmlType,
    weight_row: &[u8],
    activation_row: &[u8],
    n: usize,
) -> Result<f32, QuantError> {
    check_len(weight_ty, weight_row, n)?;
    check_len(weight_ty.vec_dot_type(), activation_row, n)?;
    Ok(match weight_ty {
        GgmlType::F32 => weight_row
            .chunks_exact(4)
            .zip(activation_row.chunks_exact(4))
            .map(|(w, a)| {
                f32::from_le_bytes([w[0], w[1], w[2], w[3]])
                    * f32::from_le_bytes([a[0], a[1], a[2], a[3]])
            })
            .sum(),
        // ggml accumulates F16 and BF16 products in double precision in its scalar path.
        GgmlType::F16 => weight_row
            .chunks_exact(2)
            .zip(activation_row.chunks_exact(2))
            .map(|(w, a)| {
                f16::from_le_bytes([w[0], w[1]]).to_f32() as f64
                    * f16::from_le_bytes([a[0], a[1]]).to_f32() as f64
            })
            .sum::<f64>() as f32,
        GgmlType::BF16 => weight_row
            .chunks_exact(2)
            .zip(activation_row.chunks_exact(2))
            .map(|(w, a)| {
                bf16_to_f32(u16::from_le_bytes([w[0], w[1]])) as f64
                    * bf16_to_f32(u16::from_le_bytes([a[0], a[1]])) as f64
            })
            .sum::<f64>() as f32,
        GgmlType::Q4_0 => dot_blocks::<BlockQ4_0>(weight_row, activation_row),
        GgmlType::Q4_1 => dot_blocks::<BlockQ4_1>(weight_row, activation_row),
        GgmlType::Q5_0 => dot_blocks::<BlockQ5_0>(weight_row, activation_row),
        GgmlType::Q5_1 => dot_blocks::<BlockQ5_1>(weight_row, activation_row),
        GgmlType::Q8_0 => dot_blocks::<BlockQ8_0>(weight_row, activation_row),
        GgmlType::Q8_1 => dot_blocks::<BlockQ8_1>(weight_row, activation_row),
        GgmlType::Q2_K => dot_blocks::<BlockQ2_K>(weight_row, activation_row),
        GgmlType::Q3_K => dot_blocks::<BlockQ3_K>(weight_row, activation_row),
        GgmlType::Q4_K => dot_blocks::<BlockQ4_K>(weight_row, activation_row),
        GgmlType::Q5_K => dot_blocks::<BlockQ5_K>(weight_row, activation_row),
        GgmlType::Q6_K => dot_blocks::<BlockQ6_K>(weight_row, activation_row),
        GgmlType::Q8_K => dot_blocks::<BlockQ8_K>(weight_row, activation_row),
    })
}

#[cfg(test)]
mod tests;
