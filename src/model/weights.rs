//! The model's tensors: weight matrices borrowed from the mapped file, small vectors
//! (norms, biases) converted to f32 once.

use std::sync::Arc;

use super::{Hyperparams, ModelError};
use crate::gguf::{GgufFile, TensorInfo};
use crate::kernels::{self, PackedArena, PackedMatrix, ThreadPool, WeightView};

/// The memory map's page size (the OS drops pages whole).
const PAGE_BYTES: usize = 4096;
use crate::quant::{self, GgmlType};

/// A 2-D weight in its stored type, borrowed from the file (never dequantized), and, when
/// the fastest kernel reads another layout, repacked once at load.
#[derive(Debug, Clone)]
pub struct Matrix {
    file: Arc<GgufFile>,
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    len: usize,
    packed: Option<Arc<PackedMatrix>>,
}

impl Matrix {
    pub fn bytes(&self) -> &[u8] {
        &self.file.bytes()[self.offset..self.offset + self.len]
    }

    pub fn view(&self) -> WeightView<'_> {
        WeightView {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: self.bytes(),
            packed: self.packed.as_deref(),
        }
    }

    /// Repacks the matrix into `arena` when the CPU and type have a faster kernel for
    /// another layout (false otherwise), dropping the file's pages from memory as they are
    /// read (the embedding lookup reads the file's rows again, faulting in only those).
    fn repack_into(&self, arena: &mut PackedArena, pool: &ThreadPool) -> bool {
        let (start, end) = (self.offset, self.offset + self.len);
        // Pages are released up to the last one read whole; the last, shared with whatever
        // follows the tensor, when the matrix is done.
        let mut released = start / PAGE_BYTES * PAGE_BYTES;
        let repacked = arena.repack(
            pool,
            self.ty,
            self.rows,
            self.cols,
            self.bytes(),
            &mut |read| {
                let upto = (start + read.end) / PAGE_BYTES * PAGE_BYTES;
                if upto > released {
                    self.file.release_pages(released..upto);
                    released = upto;
                }
            },
        );
        if repacked {
            self.file
                .release_pages(released..end.next_multiple_of(PAGE_BYTES));
        }
        repacked
    }

    /// Bytes of the repacked copy (0 if none).
    pub fn packed_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |p| p.bytes())
    }

    /// Row `r` converted to f32 (embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let row_bytes = self.len / self.rows;
        let src = &self.bytes()[r * row_bytes..(r + 1) * row_bytes];
        quant::dequantize_row(self.ty, src, out).map_err(|e| ModelError::Quant(e.to_string()))
    }
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// (q_dim, n_embd)
    pub wq: Matrix,
    /// (kv_dim, n_embd)
    pub wk: Matrix,
    /// (kv_dim, n_embd)
    pub wv: Matrix,
    /// (n_embd, q_dim)
    pub wo: Matrix,
    /// Qwen 2 biases: (q_dim), (kv_dim), (kv_dim).
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Per-head RMSNorm weights over head_dim (Qwen 3, Gemma 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// Gemma 3 norm of the attention output before the residual add.
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    /// (n_ff, n_embd)
    pub w_gate: Matrix,
    /// (n_ff, n_embd)
    pub w_up: Matrix,
    /// (n_embd, n_ff)
    pub w_down: Matrix,
    /// Gemma 3 norm of the FFN output before the residual add.
    pub post_ffn_norm: Option<Vec<f32>>,
}

#[derive(Debug, Clone)]
pub struct Weights {
    /// (n_vocab, n_embd)
    pub token_embd: Matrix,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// (n_vocab, n_embd); the embedding matrix itself when the file ties them.
    pub output: Matrix,
    /// Per-pair RoPE frequency divisors (Llama 3.1 scaling), length rope_dims / 2.
    pub rope_freqs: Option<Vec<f32>>,
}

struct Loader<'a> {
    file: &'a Arc<GgufFile>,
}

impl Loader<'_> {
    fn info(&self, name: &str) -> Result<&TensorInfo, ModelError> {
        self.file
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    /// A matrix with `rows` rows of `cols` elements (ggml dims [cols, rows]).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
        let t = self.info(name)?;
        if t.dims.len() != 2 || t.dims[0] as usize != cols || t.dims[1] as usize != rows {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: format!("[{cols}, {rows}]"),
                found: format!("{:?}", t.dims),
            });
        }
        Ok(Matrix {
            file: Arc::clone(self.file),
            name: name.to_string(),
            ty: t.ggml_type,
            rows,
            cols,
            offset: t.offset as usize,
            len: t.n_bytes as usize,
            packed: None,
        })
    }

    fn optional_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Matrix>, ModelError> {
        match self.file.tensor(name) {
            Some(_) => self.matrix(name, rows, cols).map(Some),
            None => Ok(None),
        }
    }

    /// A 1-D tensor of `len` elements, converted to f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.info(name)?;
        if t.n_elements as usize != len {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: format!("[{len}]"),
                found: format!("{:?}", t.dims),
            });
        }
        let mut out = vec![0.0f32; len];
        quant::dequantize_row(t.ggml_type, self.file.tensor_bytes(t), &mut out)
            .map_err(|e| ModelError::Quant(format!("{name}: {e}")))?;
        Ok(out)
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        match self.file.tensor(name) {
            Some(_) => self.vector(name, len).map(Some),
            None => Ok(None),
        }
    }
}

impl Weights {
    /// Collects every tensor the architecture needs, checking each shape against `hp`, and
    /// with `repack_on` a pool repacks on it the matrices the fastest kernels read in another
    /// layout. `progress(done, total)` is told after each layer.
    pub fn load(
        file: &Arc<GgufFile>,
        hp: &Hyperparams,
        repack_on: Option<&ThreadPool>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Self, ModelError> {
        let l = Loader { file };
        let (n_embd, q_dim, kv_dim, n_ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
        let mut token_embd = l.matrix("token_embd.weight", hp.n_vocab, n_embd)?;
        let mut output = l.optional_matrix("output.weight", hp.n_vocab, n_embd)?;
        let output_norm = l.vector("output_norm.weight", n_embd)?;
        let rope_freqs = l.optional_vector("rope_freqs.weight", hp.rope_dims / 2)?;

        let traits = hp.arch.traits();
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let name = |suffix: &str| format!("blk.{il}.{suffix}");
            let (has_qk_norm, has_bias, has_post_norms) =
                (traits.qk_norm, traits.qkv_bias, traits.post_norms);
            layers.push(LayerWeights {
                attn_norm: l.vector(&name("attn_norm.weight"), n_embd)?,
                wq: l.matrix(&name("attn_q.weight"), q_dim, n_embd)?,
                wk: l.matrix(&name("attn_k.weight"), kv_dim, n_embd)?,
                wv: l.matrix(&name("attn_v.weight"), kv_dim, n_embd)?,
                wo: l.matrix(&name("attn_output.weight"), n_embd, q_dim)?,
                bq: if has_bias {
                    l.optional_vector(&name("attn_q.bias"), q_dim)?
                } else {
                    None
                },
                bk: if has_bias {
                    l.optional_vector(&name("attn_k.bias"), kv_dim)?
                } else {
                    None
                },
                bv: if has_bias {
                    l.optional_vector(&name("attn_v.bias"), kv_dim)?
                } else {
                    None
                },
                q_norm: if has_qk_norm {
                    Some(l.vector(&name("attn_q_norm.weight"), hp.head_dim)?)
                } else {
                    None
                },
                k_norm: if has_qk_norm {
                    Some(l.vector(&name("attn_k_norm.weight"), hp.head_dim)?)
                } else {
                    None
                },
                post_attn_norm: if has_post_norms {
                    Some(l.vector(&name("post_attention_norm.weight"), n_embd)?)
                } else {
                    None
                },
                ffn_norm: l.vector(&name("ffn_norm.weight"), n_embd)?,
                w_gate: l.matrix(&name("ffn_gate.weight"), n_ff, n_embd)?,
                w_up: l.matrix(&name("ffn_up.weight"), n_ff, n_embd)?,
                w_down: l.matrix(&name("ffn_down.weight"), n_embd, n_ff)?,
                post_ffn_norm: if has_post_norms {
                    Some(l.vector(&name("post_ffw_norm.weight"), n_embd)?)
                } else {
                    None
                },
            });
        }
        match repack_on {
            Some(pool) => {
                // The embedding is only looked up by row; as the tied output matrix it is
                // read whole for every token.
                let vocabulary = output.as_mut().unwrap_or(&mut token_embd);
                repack(pool, vocabulary, &mut layers, progress)?;
            }
            None => {
                for il in 0..hp.n_layer {
                    if !progress(il + 1, hp.n_layer) {
                        return Err(ModelError::LoadAborted);
                    }
                }
            }
        }
        let output = output.unwrap_or_else(|| token_embd.clone());
        Ok(Self {
            token_embd,
            layers,
            output_norm,
            output,
            rope_freqs,
        })
    }
}

impl LayerWeights {
    fn matrices_mut(&mut self) -> [&mut Matrix; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.w_gate,
            &mut self.w_up,
            &mut self.w_down,
        ]
    }
}

/// Repacks on `pool`, into one arena, the vocabulary matrix and every layer's matrices that
/// the fastest kernels read in another layout; `progress` is told after each layer.
fn repack(
    pool: &ThreadPool,
    vocabulary: &mut Matrix,
    layers: &mut [LayerWeights],
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(), ModelError> {
    let packed_len = |m: &Matrix| kernels::packed_len(m.ty, m.rows, m.cols).unwrap_or(0);
    let capacity = packed_len(vocabulary)
        + layers
            .iter_mut()
            .flat_map(|layer| layer.matrices_mut())
            .map(|m| packed_len(m))
            .sum::<usize>();
    let mut arena =
        PackedArena::with_capacity(capacity).ok_or(ModelError::OutOfMemory { bytes: capacity })?;
    let mut repacked = vec![vocabulary.repack_into(&mut arena, pool)];
    let n_layer = layers.len();
    for (il, layer) in layers.iter_mut().enumerate() {
        for m in layer.matrices_mut() {
            repacked.push(m.repack_into(&mut arena, pool));
        }
        if !progress(il + 1, n_layer) {
            return Err(ModelError::LoadAborted);
        }
    }
    let mut packed = arena.into_matrices().into_iter().map(Arc::new);
    let matrices =
        std::iter::once(vocabulary).chain(layers.iter_mut().flat_map(|layer| layer.matrices_mut()));
    for (m, repacked) in matrices.zip(repacked) {
        if repacked {
            m.packed = packed.next();
        }
    }
    Ok(())
}
