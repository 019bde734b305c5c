//! Quantized weight matrix × a batch of activation rows.

use super::{DisjointWrites, PackedMatrix, ThreadPool};
use crate::quant::{self, GgmlType, QuantError};

/// A weight matrix as stored in the file: `rows` rows of `cols` elements of type `ty`,
/// row-major, borrowed from the memory map; and the same matrix repacked for the fastest
/// kernel when it was repacked at load.
#[derive(Debug, Clone, Copy)]
pub struct WeightView<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    pub packed: Option<&'a PackedMatrix>,
}

/// The repacked matrices of one model, back to back in one allocation: none on other CPUs.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug, Default)]
pub struct PackedArena;

#[cfg(not(target_arch = "x86_64"))]
impl PackedArena {
    pub fn with_capacity(_capacity: usize) -> Option<Self> {
        Some(Self)
    }

    /// Nothing is repacked on other CPUs.
    pub fn repack(
        &mut self,
        _pool: &ThreadPool,
        _ty: GgmlType,
        _rows: usize,
        _cols: usize,
        _data: &[u8],
        _release: &mut dyn FnMut(std::ops::Range<usize>),
    ) -> bool {
        false
    }

    pub fn into_matrices(self) -> Vec<PackedMatrix> {
        Vec::new()
    }
}

/// Nothing is repacked on other CPUs.
#[cfg(not(target_arch = "x86_64"))]
pub fn packed_len(_ty: GgmlType, _rows: usize, _cols: usize) -> Option<usize> {
    None
}

/// Buffers reused between calls so the decode loop does not allocate.
#[derive(Debug, Default)]
pub struct MatmulScratch {
    /// (batch, row bytes of the activation format): the activations converted once per row.
    activations: Vec<u8>,
    row: Vec<u8>,
    /// The activations spread for the AVX-512 VNNI kernels.
    #[cfg(target_arch = "x86_64")]
    panel: super::gemm_vnni::Panel,
    /// The activations' per-block terms for the interleaved-row kernels.
    #[cfg(target_arch = "x86_64")]
    blocks: super::gemm_r16::Activations,
}

/// out[b][r] = Σ_c w[r][c] · x[b][c] for every batch row b and weight row r.
///
/// `x` is (batch, cols) and `out` is (batch, rows). Each activation row is converted once to
/// the format ggml pairs with the weight type (Q8_0, Q8_1, Q8_K, F16, BF16 or F32), exactly
/// as llama.cpp does, then every weight row is dotted with it.
pub fn matmul(
    pool: &ThreadPool,
    w: WeightView<'_>,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) -> Result<(), QuantError> {
    let act_ty = w.ty.vec_dot_type();
    let act_row_bytes = act_ty
        .row_bytes(w.cols as u64)
        .ok_or(QuantError::NotWholeBlocks {
            ty: act_ty,
            n: w.cols,
        })? as usize;
    let w_row_bytes =
        w.ty.row_bytes(w.cols as u64)
            .ok_or(QuantError::NotWholeBlocks {
                ty: w.ty,
                n: w.cols,
            })? as usize;
    assert_eq!(x.len(), batch * w.cols, "matmul input is (batch, cols)");
    assert_eq!(out.len(), batch * w.rows, "matmul output is (batch, rows)");
    assert_eq!(
        w.data.len(),
        w.rows * w_row_bytes,
        "weight bytes are rows × row bytes"
    );

    quantize_rows(pool, act_ty, x, w.cols, act_row_bytes, scratch)?;
    let activations = &scratch.activations;

    #[cfg(target_arch = "x86_64")]
    if let Some(packed) = w.packed.filter(|_| pool.fast_kernels()) {
        scratch.blocks.fill(act_ty, activations, batch, w.cols);
        let out_ptr = DisjointWrites::new(out);
        let (quantized, blocks) = (&scratch.activations, &scratch.blocks);
        pool.for_ranges(w.rows / super::gemm_r16::GROUP_ROWS, 1, |groups| {
            let out_ptr = &out_ptr;
            // SAFETY: `out` is (batch, rows) (asserted above) and for_ranges gives each task
            // its own groups, so no two tasks write the same output.
            unsafe {
                super::gemm_r16::matmul_groups(packed, groups, quantized, blocks, out_ptr.ptr())
            };
        });
        return Ok(());
    }

    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = super::cpu::Avx512Vbmi::detect().filter(|_| pool.fast_kernels())
        && let Some(format) = super::gemm_vnni::Format::of(w.ty, w.cols)
    {
        scratch.panel.fill(act_ty, activations, batch, w.cols);
        let panel = &scratch.panel;
        let out_ptr = DisjointWrites::new(out);
        pool.for_ranges(w.rows, 16, |rows| {
            let out_ptr = &out_ptr;
            // SAFETY: `out` is (batch, rows) (asserted above) and for_ranges gives each task
            // its own rows, so no two tasks write the same output.
            unsafe {
                super::gemm_vnni::matmul_rows(
                    cpu,
                    format,
                    w.data,
                    w.rows,
                    rows,
                    panel,
                    out_ptr.ptr(),
                )
            };
        });
        return Ok(());
    }

    let fast = pool.fast_kernels();
    let out_ptr = DisjointWrites::new(out);
    let first_error = parking_lot::Mutex::new(None);
    let rows_per_task_min = (65536 / (w.cols * batch).max(1)).max(1);
    pool.for_ranges(w.rows, rows_per_task_min, |rows| {
        let out_ptr = &out_ptr;
        for r in rows {
            let w_row = &w.data[r * w_row_bytes..(r + 1) * w_row_bytes];
            for b in 0..batch {
                let a_row = &activations[b * act_row_bytes..(b + 1) * act_row_bytes];
                match dot(fast, w.ty, w_row, a_row, w.cols) {
                    // SAFETY: weight row r belongs to this task alone, so output (b, r) too.
                    Ok(v) => unsafe { out_ptr.part(b * w.rows + r..b * w.rows + r + 1)[0] = v },
                    Err(e) => {
                        first_error.lock().get_or_insert(e);
                        return;
                    }
                }
            }
        }
    });
    match first_error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Several weight matrices over the same activations (Q, K and V; gate and up): with the
/// VNNI kernels the activations are quantized once and every matrix's rows are computed in
/// one parallel pass; otherwise each is an ordinary [`matmul`]. `outs[i]` is (batch, rows of
/// `weights[i]`). Results are identical to separate `matmul` calls.
pub fn matmul_many(
    pool: &ThreadPool,
    weights: &[WeightView<'_>],
    x: &[f32],
    batch: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut MatmulScratch,
) -> Result<(), QuantError> {
    assert_eq!(weights.len(), outs.len(), "one output per weight matrix");
    #[cfg(target_arch = "x86_64")]
    if let Some(packed) = fusable_packed(weights).filter(|_| pool.fast_kernels()) {
        let (cols, act_ty) = (weights[0].cols, packed[0].format.activation_type());
        let act_row_bytes = act_ty
            .row_bytes(cols as u64)
            .ok_or(QuantError::NotWholeBlocks {
                ty: act_ty,
                n: cols,
            })? as usize;
        assert_eq!(x.len(), batch * cols, "matmul input is (batch, cols)");
        for (w, out) in weights.iter().zip(outs.iter()) {
            assert_eq!(out.len(), batch * w.rows, "matmul output is (batch, rows)");
        }
        quantize_rows(pool, act_ty, x, cols, act_row_bytes, scratch)?;
        scratch
            .blocks
            .fill(act_ty, &scratch.activations, batch, cols);
        let (quantized, blocks) = (&scratch.activations, &scratch.blocks);
        let out_ptrs: Vec<DisjointWrites<'_, f32>> =
            outs.iter_mut().map(|o| DisjointWrites::new(o)).collect();
        let group_rows = super::gemm_r16::GROUP_ROWS;
        let total_groups: usize = weights.iter().map(|w| w.rows / group_rows).sum();
        pool.for_ranges(total_groups, 1, |range| {
            let mut first = 0;
            for (w, out) in packed.iter().zip(&out_ptrs) {
                let n = w.rows / group_rows;
                let start = range.start.max(first) - first;
                let end = range.end.min(first + n).saturating_sub(first);
                if start < end {
                    // SAFETY: each output is (batch, rows of its matrix) (asserted above) and
                    // for_ranges gives this task alone groups start..end of this matrix.
                    unsafe {
                        super::gemm_r16::matmul_groups(w, start..end, quantized, blocks, out.ptr())
                    };
                }
                first += n;
            }
        });
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if let Some((cpu, formats)) = fusable_formats(weights).filter(|_| pool.fast_kernels()) {
        let (cols, act_ty) = (weights[0].cols, formats[0].activation_type());
        let act_row_bytes = act_ty
            .row_bytes(cols as u64)
            .ok_or(QuantError::NotWholeBlocks {
                ty: act_ty,
                n: cols,
            })? as usize;
        assert_eq!(x.len(), batch * cols, "matmul input is (batch, cols)");
        for (w, out) in weights.iter().zip(outs.iter()) {
            assert_eq!(out.len(), batch * w.rows, "matmul output is (batch, rows)");
            assert_eq!(
                Some(w.data.len() as u64),
                w.ty.row_bytes(cols as u64).map(|b| b * w.rows as u64),
                "weight bytes are rows × row bytes"
            );
        }
        quantize_rows(pool, act_ty, x, cols, act_row_bytes, scratch)?;
        scratch
            .panel
            .fill(act_ty, &scratch.activations, batch, cols);
        let panel = &scratch.panel;
        let out_ptrs: Vec<DisjointWrites<'_, f32>> =
            outs.iter_mut().map(|o| DisjointWrites::new(o)).collect();
        let total_rows: usize = weights.iter().map(|w| w.rows).sum();
        pool.for_ranges(total_rows, 16, |range| {
            let mut first_row = 0;
            for ((w, &format), out) in weights.iter().zip(&formats).zip(&out_ptrs) {
                let start = range.start.max(first_row) - first_row;
                let end = range.end.min(first_row + w.rows).saturating_sub(first_row);
                if start < end {
                    // SAFETY: each output is (batch, rows of its matrix) (asserted above) and
                    // for_ranges gives this task alone rows start..end of this matrix.
                    unsafe {
                        super::gemm_vnni::matmul_rows(
                            cpu,
                            format,
                            w.data,
                            w.rows,
                            start..end,
                            panel,
                            out.ptr(),
                        )
                    };
                }
                first_row += w.rows;
            }
        });
        return Ok(());
    }
    for (w, out) in weights.iter().zip(outs.iter_mut()) {
        matmul(pool, *w, x, batch, out, scratch)?;
    }
    Ok(())
}

/// The repacked matrices of `weights` when all were repacked, with one width and one
/// activation type.
#[cfg(target_arch = "x86_64")]
fn fusable_packed<'a>(weights: &[WeightView<'a>]) -> Option<Vec<&'a PackedMatrix>> {
    let packed: Vec<&PackedMatrix> = weights.iter().map(|w| w.packed).collect::<Option<_>>()?;
    let first = packed.first()?;
    packed
        .iter()
        .all(|p| {
            p.cols == first.cols && p.format.activation_type() == first.format.activation_type()
        })
        .then_some(packed)
}

/// The VNNI formats of `weights` when the CPU has the kernels and all have one, of the same
/// width and activation type.
#[cfg(target_arch = "x86_64")]
fn fusable_formats(
    weights: &[WeightView<'_>],
) -> Option<(super::cpu::Avx512Vbmi, Vec<super::gemm_vnni::Format>)> {
    use super::gemm_vnni::Format;
    let first = weights.first()?;
    let cpu = super::cpu::Avx512Vbmi::detect()?;
    // A repacked matrix is read repacked: its file pages were dropped at load.
    if weights.iter().any(|w| w.packed.is_some()) {
        return None;
    }
    let formats: Option<Vec<Format>> = weights
        .iter()
        .map(|w| Format::of(w.ty, w.cols).filter(|_| w.cols == first.cols))
        .collect();
    let formats = formats?;
    formats
        .iter()
        .all(|f| f.activation_type() == formats[0].activation_type())
        .then_some((cpu, formats))
}

/// Converts each (cols)-long row of `x` to `act_ty` into `scratch.activations`, rows in
/// parallel, with the SIMD quantizer where there is one (bit-exact with the reference).
fn quantize_rows(
    pool: &ThreadPool,
    act_ty: GgmlType,
    x: &[f32],
    cols: usize,
    act_row_bytes: usize,
    scratch: &mut MatmulScratch,
) -> Result<(), QuantError> {
    let batch = x.len() / cols;
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = super::cpu::Avx2::detect().filter(|_| pool.fast_kernels())
        && matches!(act_ty, GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K)
    {
        scratch.activations.resize(batch * act_row_bytes, 0);
        pool.for_chunks_mut(
            &mut scratch.activations,
            act_row_bytes,
            32,
            |first, rows| {
                for (i, row) in rows.chunks_exact_mut(act_row_bytes).enumerate() {
                    let b = first + i;
                    let quantized = super::simd_x86::quantize_activations(
                        cpu,
                        act_ty,
                        &x[b * cols..(b + 1) * cols],
                        row,
                    );
                    debug_assert!(quantized, "the SIMD quantizer handles {act_ty}");
                }
            },
        );
        return Ok(());
    }
    scratch.activations.clear();
    for xb in x.chunks_exact(cols) {
        quant::quantize_activations(act_ty, xb, &mut scratch.row)?;
        scratch.activations.extend_from_slice(&scratch.row);
    }
    Ok(())
}

/// The SIMD dot product where `fast` allows it and the CPU and type have one, else the
/// reference.
#[inline]
fn dot(fast: bool, ty: GgmlType, w_row: &[u8], a_row: &[u8], n: usize) -> Result<f32, QuantError> {
    #[cfg(target_arch = "x86_64")]
    if fast
        && let Some(cpu) = super::cpu::Avx2::detect()
        && let Some(v) = super::simd_x86::vec_dot(cpu, ty, w_row, a_row)
    {
        return Ok(v);
    }
    quant::vec_dot(ty, w_row, a_row, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [−0.5, 0.5).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::kernels::test_data::values(n, seed, 0.5)
    }

    fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        quant::quantize_row(ty, &values(rows * cols, seed), &mut out).unwrap();
        out
    }

    #[test]
    fn fused_matmuls_equal_separate_ones_bit_for_bit() {
        let pool = ThreadPool::new(2);
        let cols = 256;
        // Q, K, V of different types sharing Q8_0 activations (gemma's mix), then a mix that
        // cannot be fused (F32 weights).
        let cases: [&[(GgmlType, usize)]; 2] = [
            &[
                (GgmlType::Q5_0, 37),
                (GgmlType::Q5_0, 16),
                (GgmlType::Q8_0, 16),
            ],
            &[(GgmlType::Q4_0, 8), (GgmlType::F32, 5)],
        ];
        for case in cases {
            let data: Vec<Vec<u8>> = case
                .iter()
                .enumerate()
                .map(|(i, &(ty, rows))| matrix(ty, rows, cols, 7 + i as u64))
                .collect();
            let views: Vec<WeightView<'_>> = case
                .iter()
                .zip(&data)
                .map(|(&(ty, rows), d)| WeightView {
                    ty,
                    rows,
                    cols,
                    data: d,
                    packed: None,
                })
                .collect();
            for batch in [1usize, 6] {
                let x = values(batch * cols, 99 + batch as u64);
                let mut scratch = MatmulScratch::default();
                let mut separate: Vec<Vec<f32>> =
                    views.iter().map(|w| vec![0.0; batch * w.rows]).collect();
                for (w, out) in views.iter().zip(separate.iter_mut()) {
                    matmul(&pool, *w, &x, batch, out, &mut scratch).unwrap();
                }
                let mut fused: Vec<Vec<f32>> = views
                    .iter()
                    .map(|w| vec![f32::NAN; batch * w.rows])
                    .collect();
                let mut outs: Vec<&mut [f32]> =
                    fused.iter_mut().map(|v| v.as_mut_slice()).collect();
                matmul_many(&pool, &views, &x, batch, &mut outs, &mut scratch).unwrap();
                for (a, b) in separate.iter().zip(&fused) {
                    assert_eq!(
                        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "batch {batch}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod fast_against_reference {
    use super::*;
    use crate::kernels::test_data::{random_k_rows, values};
    use crate::kernels::{Kernels, PackedArena, packed_len};

    /// Every weight type our code can quantize, on the widths that take the VNNI kernels
    /// (512) and the AVX2 dot products (96), as in the file (67 rows) and repacked (80 rows),
    /// at the batch sizes of each kernel shape: the fast pool's outputs equal the reference
    /// pool's up to float summation order.
    #[test]
    fn every_weight_type_agrees_with_the_reference_pool() {
        for rows in [67, 80] {
            let fast = ThreadPool::new(2);
            let reference = ThreadPool::with_kernels(2, Kernels::Reference);
            let types = [
                GgmlType::Q4_0,
                GgmlType::Q4_1,
                GgmlType::Q5_0,
                GgmlType::Q5_1,
                GgmlType::Q8_0,
                GgmlType::F16,
                GgmlType::BF16,
                GgmlType::F32,
            ];
            // K-quant rows are random bytes with sane scales (our quantizer has no K types).
            let k_cases = [
                (GgmlType::Q4_K, 256),
                (GgmlType::Q4_K, 768),
                (GgmlType::Q6_K, 512),
            ];
            let cases = [96, 512]
                .into_iter()
                .flat_map(|cols| types.map(|ty| (ty, cols)))
                .chain(k_cases);
            for (ty, cols) in cases {
                {
                    let data = match ty {
                        GgmlType::Q4_K => random_k_rows(ty, rows, cols, 5, &[0, 2]),
                        GgmlType::Q6_K => random_k_rows(ty, rows, cols, 5, &[208]),
                        _ => {
                            let mut data = Vec::new();
                            quant::quantize_row(ty, &values(rows * cols, 5, 0.5), &mut data)
                                .unwrap();
                            data
                        }
                    };
                    let mut arena =
                        PackedArena::with_capacity(packed_len(ty, rows, cols).unwrap_or(0))
                            .unwrap();
                    arena.repack(&fast, ty, rows, cols, &data, &mut |_| {});
                    let packed = arena.into_matrices().pop();
                    #[cfg(target_arch = "x86_64")]
                    if crate::kernels::cpu::Avx512Vnni::detect().is_some() {
                        let repackable = matches!(
                            ty,
                            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0
                        ) || (ty == GgmlType::Q4_K && cols % 256 == 0);
                        assert_eq!(
                            packed.is_some(),
                            repackable && rows % 16 == 0,
                            "{ty} {rows}"
                        );
                    }
                    let w = WeightView {
                        ty,
                        rows,
                        cols,
                        data: &data,
                        packed: packed.as_ref(),
                    };
                    for batch in [1usize, 2, 3, 5, 40, 70] {
                        let x = values(batch * cols, 11 + batch as u64, 1.0);
                        let mut ours = vec![0.0; batch * rows];
                        let mut theirs = vec![0.0; batch * rows];
                        let mut scratch = MatmulScratch::default();
                        matmul(&fast, w, &x, batch, &mut ours, &mut scratch).unwrap();
                        matmul(&reference, w, &x, batch, &mut theirs, &mut scratch).unwrap();
                        let largest = theirs.iter().map(|v| v.abs()).fold(1.0, f32::max);
                        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                            assert!(
                                (a - b).abs() <= 1e-6 * largest,
                                "{ty}, {rows}×{cols}, repacked {}, batch {batch}, output {i}: {a} vs {b}",
                                packed.is_some()
                            );
                        }
                    }
                }
            }
        }
    }
}
