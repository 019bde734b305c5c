//! Architectures and the forward pass. Weights are borrowed from the mapped GGUF file.
//!
//! `forward` reads top to bottom in the order of the math (llama2.c style); every buffer
//! carries its shape.

mod hparams;
mod kv_cache;
mod weights;

use std::fmt;
use std::sync::Arc;

pub use hparams::{Activation, ArchTraits, Architecture, ChatFamily, Hyperparams, limits};
pub use kv_cache::{KV_CHUNK_POSITIONS, KvCache, KvType, SharedRows};
pub use weights::{LayerWeights, Matrix, Weights};

use crate::error::{Error, ErrorKind};
use crate::gguf::GgufFile;
use crate::kernels::{self, AttentionShape, MatmulScratch, ThreadPool};

#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    UnsupportedArchitecture(String),
    MissingMetadata(String),
    InvalidHyperparameter(String),
    MissingTensor(String),
    TensorShape {
        name: String,
        expected: String,
        found: String,
    },
    Quant(String),
    TokenOutOfRange {
        token: u32,
        n_vocab: usize,
    },
    ContextFull {
        needed: usize,
        max: usize,
    },
    LoadAborted,
    /// The system refused the memory for the repacked weights.
    OutOfMemory {
        bytes: usize,
    },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedArchitecture(a) => write!(
                f,
                "model architecture '{a}' is not supported; smallmind runs {}",
                Architecture::SUPPORTED
            ),
            Self::MissingMetadata(k) => write!(
                f,
                "the model file has no '{k}' metadata key, which this architecture needs"
            ),
            Self::InvalidHyperparameter(m) => write!(f, "invalid hyperparameters: {m}"),
            Self::MissingTensor(n) => write!(
                f,
                "the model file has no tensor '{n}', which this architecture needs"
            ),
            Self::TensorShape {
                name,
                expected,
                found,
            } => {
                write!(
                    f,
                    "tensor '{name}' has shape {found}; the hyperparameters require {expected}"
                )
            }
            Self::Quant(m) => write!(f, "tensor data error: {m}"),
            Self::TokenOutOfRange { token, n_vocab } => {
                write!(
                    f,
                    "token id {token} is out of range: the vocabulary has {n_vocab} tokens (ids 0..{})",
                    n_vocab.saturating_sub(1)
                )
            }
            Self::ContextFull { needed, max } => {
                write!(
                    f,
                    "the sequence needs {needed} positions but the context holds {max}"
                )
            }
            Self::LoadAborted => write!(f, "loading was cancelled by the progress callback"),
            Self::OutOfMemory { bytes } => write!(
                f,
                "the weights repacked for this CPU's fastest kernels need {} MiB, which the \
                 system could not provide; free memory or load a smaller model",
                bytes.div_ceil(1 << 20)
            ),
        }
    }
}

impl std::error::Error for ModelError {}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        let kind = match &e {
            ModelError::UnsupportedArchitecture(_) => ErrorKind::UnsupportedModel,
            ModelError::TokenOutOfRange { .. } => ErrorKind::InvalidArgument,
            ModelError::ContextFull { .. } => ErrorKind::ContextOverflow,
            ModelError::LoadAborted => ErrorKind::Cancelled,
            ModelError::Quant(_) => ErrorKind::Internal,
            _ => ErrorKind::ModelLoad,
        };
        Error::new(kind, e.to_string())
    }
}

/// Which positions' logits a forward pass should produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (prefill of a prefix whose continuation is already known).
    None,
    /// Only the last position's (generation).
    Last,
    /// Every position's (scoring, prompt log-probabilities).
    All,
}

/// A loaded model: hyperparameters and weights borrowed from the file.
#[derive(Debug)]
pub struct Model {
    pub file: Arc<GgufFile>,
    pub hparams: Hyperparams,
    pub weights: Weights,
}

/// The parts of a forward pass that [`OpProfile`] times apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Embedding rows looked up and scaled.
    Embed,
    /// RMSNorms of the residual stream, of the Q/K heads and of sub-block outputs.
    Norm,
    /// The Q, K and V matrices (one pass), with their biases.
    QkvMatmul,
    /// RoPE of Q and K and the K/V rows appended to the cache.
    RopeAndCache,
    Attention,
    /// The attention output matrix.
    OutputMatmul,
    /// The gate and up matrices (one pass).
    GateUpMatmul,
    /// SiLU or GELU of the gate times up.
    Activation,
    /// The down matrix.
    DownMatmul,
    /// Residual adds.
    Residual,
    /// The output norm and the vocabulary-sized output matrix.
    OutputHead,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::Embed,
        Op::Norm,
        Op::QkvMatmul,
        Op::RopeAndCache,
        Op::Attention,
        Op::OutputMatmul,
        Op::GateUpMatmul,
        Op::Activation,
        Op::DownMatmul,
        Op::Residual,
        Op::OutputHead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Embed => "embedding lookup",
            Op::Norm => "RMSNorms",
            Op::QkvMatmul => "Q/K/V matmul",
            Op::RopeAndCache => "RoPE + KV append",
            Op::Attention => "attention",
            Op::OutputMatmul => "attention output matmul",
            Op::GateUpMatmul => "gate/up matmul",
            Op::Activation => "SiLU/GELU × up",
            Op::DownMatmul => "down matmul",
            Op::Residual => "residual adds",
            Op::OutputHead => "output norm + vocabulary matmul",
        }
    }
}

/// Wall time per part of the forward passes run with a scratch that holds one (the
/// benchmark's `--profile`); each part's time includes its hand-off to the worker threads
/// and the wait for the slowest one.
#[derive(Debug, Default, Clone)]
pub struct OpProfile {
    /// Indexed like [`Op::ALL`].
    pub time: [std::time::Duration; 11],
    pub tokens: usize,
}

impl OpProfile {
    fn add(&mut self, op: Op, since: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        self.time[op as usize] += now - *since;
        *since = now;
    }
}

/// Activation buffers reused across forward calls (one per sequence being computed).
#[derive(Debug, Default)]
pub struct ForwardScratch {
    /// Set to time the parts of every forward pass run with this scratch.
    pub profile: Option<OpProfile>,
    /// (batch, n_embd) residual stream
    x: Vec<f32>,
    /// (batch, n_embd) normalised input of a sub-block
    xn: Vec<f32>,
    /// (batch, q_dim)
    q: Vec<f32>,
    /// (batch, kv_dim)
    k: Vec<f32>,
    /// (batch, kv_dim)
    v: Vec<f32>,
    /// (batch, q_dim)
    attn: Vec<f32>,
    /// (batch, n_embd) output of a sub-block before the residual add
    delta: Vec<f32>,
    /// (batch, n_ff)
    gate: Vec<f32>,
    /// (batch, n_ff)
    up: Vec<f32>,
    /// (rope_dims / 2) (sin, cos) of the position being rotated
    rope: Vec<(f32, f32)>,
    matmul: MatmulScratch,
}

impl Model {
    /// Reads hyperparameters and collects the weights of `file`; with `repack_on` a pool,
    /// repacks on it the matrices the fast kernels read in another layout (None for the
    /// reference kernels).
    pub fn load(
        file: Arc<GgufFile>,
        repack_on: Option<&ThreadPool>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Self, ModelError> {
        let hparams = Hyperparams::from_gguf(&file)?;
        let weights = Weights::load(&file, &hparams, repack_on, progress)?;
        Ok(Self {
            file,
            hparams,
            weights,
        })
    }

    /// A cache sized for this model.
    pub fn new_cache(&self, ty: KvType, max_positions: usize) -> KvCache {
        KvCache::new(
            ty,
            self.hparams.n_layer,
            self.hparams.kv_dim(),
            max_positions,
        )
    }

    /// Runs `tokens` at positions cache.len().. through the model, appending their keys and
    /// values to `cache`, and writes the requested logits to `logits`:
    /// (n_vocab) for `Last`, (tokens, n_vocab) for `All`, nothing for `None`.
    pub fn forward(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        cache: &mut KvCache,
        wanted: Logits,
        scratch: &mut ForwardScratch,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let hp = &self.hparams;
        if tokens.is_empty() {
            logits.clear();
            return Ok(());
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= hp.n_vocab) {
            return Err(ModelError::TokenOutOfRange {
                token: bad,
                n_vocab: hp.n_vocab,
            });
        }
        let first_pos = cache.len();
        if first_pos + tokens.len() > cache.max_positions() {
            return Err(ModelError::ContextFull {
                needed: first_pos + tokens.len(),
                max: cache.max_positions(),
            });
        }
        // An error or a panic (unwinding to the host's boundary) leaves the cache as it was:
        // no layer keeps rows the token list does not account for.
        let mut guard = RollbackOnUnwind { cache, armed: true };
        let result = self.forward_layers(pool, tokens, guard.cache, wanted, scratch, logits);
        guard.armed = false;
        match result {
            Ok(()) => guard.cache.commit_tokens(tokens),
            Err(_) => guard.cache.rollback_layers(),
        }
        result
    }

    fn forward_layers(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        cache: &mut KvCache,
        wanted: Logits,
        s: &mut ForwardScratch,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let hp = &self.hparams;
        let w = &self.weights;
        let batch = tokens.len();
        let (n_embd, q_dim, kv_dim, n_ff, head_dim) =
            (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff, hp.head_dim);
        let first_pos = cache.len();
        let quant_err = |e: crate::quant::QuantError| ModelError::Quant(e.to_string());

        s.x.resize(batch * n_embd, 0.0);
        s.xn.resize(batch * n_embd, 0.0);
        s.q.resize(batch * q_dim, 0.0);
        s.k.resize(batch * kv_dim, 0.0);
        s.v.resize(batch * kv_dim, 0.0);
        s.attn.resize(batch * q_dim, 0.0);
        s.delta.resize(batch * n_embd, 0.0);
        s.gate.resize(batch * n_ff, 0.0);
        s.up.resize(batch * n_ff, 0.0);

        let mut lap = std::time::Instant::now();
        let mut timed = |s: &mut ForwardScratch, op: Op| {
            if let Some(profile) = &mut s.profile {
                profile.add(op, &mut lap);
            }
        };
        if let Some(profile) = &mut s.profile {
            profile.tokens += batch;
        }

        // Token embeddings, (batch, n_embd).
        for (row, &t) in s.x.chunks_exact_mut(n_embd).zip(tokens) {
            w.token_embd.dequantize_row(t as usize, row)?;
            if let Some(scale) = hp.embedding_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        timed(s, Op::Embed);

        for (il, layer) in w.layers.iter().enumerate() {
            // Attention block.
            for (xn, x) in s.xn.chunks_exact_mut(n_embd).zip(s.x.chunks_exact(n_embd)) {
                kernels::rms_norm(x, &layer.attn_norm, hp.rms_eps, xn);
            }
            timed(s, Op::Norm);
            kernels::matmul_many(
                pool,
                &[layer.wq.view(), layer.wk.view(), layer.wv.view()],
                &s.xn,
                batch,
                &mut [&mut s.q, &mut s.k, &mut s.v],
                &mut s.matmul,
            )
            .map_err(quant_err)?;
            add_bias(&mut s.q, layer.bq.as_deref());
            add_bias(&mut s.k, layer.bk.as_deref());
            add_bias(&mut s.v, layer.bv.as_deref());
            timed(s, Op::QkvMatmul);
            if let Some(norm) = &layer.q_norm {
                s.q.chunks_exact_mut(head_dim)
                    .for_each(|h| kernels::rms_norm_in_place(h, norm, hp.rms_eps));
            }
            if let Some(norm) = &layer.k_norm {
                s.k.chunks_exact_mut(head_dim)
                    .for_each(|h| kernels::rms_norm_in_place(h, norm, hp.rms_eps));
            }
            timed(s, Op::Norm);
            let window = hp.layer_window(il);
            let freq_base = if window.is_some() {
                hp.rope_freq_base_local
            } else {
                hp.rope_freq_base
            };
            let freq_factors = w.rope_freqs.as_deref();
            for b in 0..batch {
                let pos = first_pos + b;
                // One (sin, cos) table per position serves every query and key head.
                kernels::rope_table(pos, hp.rope_dims, freq_base, freq_factors, &mut s.rope);
                for head in s.q[b * q_dim..(b + 1) * q_dim].chunks_exact_mut(head_dim) {
                    kernels::rope_with_table(head, &s.rope, hp.rope_style);
                }
                for head in s.k[b * kv_dim..(b + 1) * kv_dim].chunks_exact_mut(head_dim) {
                    kernels::rope_with_table(head, &s.rope, hp.rope_style);
                }
            }
            cache.append_layer(il, &s.k, &s.v);
            timed(s, Op::RopeAndCache);
            if il + 1 == w.layers.len() && debug::take_injected_panic() {
                // Inside a parallel job, as a real kernel panic would be.
                pool.for_ranges(1 << 16, 1, |range| {
                    if range.start == 0 {
                        panic!("{}", debug::INJECTED_PANIC_MESSAGE);
                    }
                });
            }
            let (keys, values) = cache.layer(il);
            let shape = AttentionShape {
                n_head: hp.n_head,
                n_head_kv: hp.n_head_kv,
                head_dim,
                first_pos,
                scale: hp.attention_scale,
                window,
            };
            kernels::attention(pool, &s.q, keys, values, shape, &mut s.attn);
            timed(s, Op::Attention);
            kernels::matmul(
                pool,
                layer.wo.view(),
                &s.attn,
                batch,
                &mut s.delta,
                &mut s.matmul,
            )
            .map_err(quant_err)?;
            timed(s, Op::OutputMatmul);
            if let Some(norm) = &layer.post_attn_norm {
                s.delta
                    .chunks_exact_mut(n_embd)
                    .for_each(|r| kernels::rms_norm_in_place(r, norm, hp.rms_eps));
            }
            timed(s, Op::Norm);
            kernels::add_in_place(&mut s.x, &s.delta);
            timed(s, Op::Residual);

            // Feed-forward block: down(act(gate(x)) * up(x)).
            for (xn, x) in s.xn.chunks_exact_mut(n_embd).zip(s.x.chunks_exact(n_embd)) {
                kernels::rms_norm(x, &layer.ffn_norm, hp.rms_eps, xn);
            }
            timed(s, Op::Norm);
            kernels::matmul_many(
                pool,
                &[layer.w_gate.view(), layer.w_up.view()],
                &s.xn,
                batch,
                &mut [&mut s.gate, &mut s.up],
                &mut s.matmul,
            )
            .map_err(quant_err)?;
            timed(s, Op::GateUpMatmul);
            let gelu = hp.arch.traits().activation == Activation::GeluTanh;
            kernels::gated_activation(pool, gelu, &mut s.gate, &s.up, n_ff);
            timed(s, Op::Activation);
            kernels::matmul(
                pool,
                layer.w_down.view(),
                &s.gate,
                batch,
                &mut s.delta,
                &mut s.matmul,
            )
            .map_err(quant_err)?;
            timed(s, Op::DownMatmul);
            if let Some(norm) = &layer.post_ffn_norm {
                s.delta
                    .chunks_exact_mut(n_embd)
                    .for_each(|r| kernels::rms_norm_in_place(r, norm, hp.rms_eps));
            }
            timed(s, Op::Norm);
            kernels::add_in_place(&mut s.x, &s.delta);
            timed(s, Op::Residual);
        }

        // Output head over the rows whose logits were asked for.
        let rows = match wanted {
            Logits::None => return Ok(()),
            Logits::Last => (batch - 1)..batch,
            Logits::All => 0..batch,
        };
        let n_out = rows.len();
        for (xn, x) in
            s.xn.chunks_exact_mut(n_embd)
                .zip(s.x[rows.start * n_embd..rows.end * n_embd].chunks_exact(n_embd))
        {
            kernels::rms_norm(x, &w.output_norm, hp.rms_eps, xn);
        }
        logits.resize(n_out * hp.n_vocab, 0.0);
        kernels::matmul(
            pool,
            w.output.view(),
            &s.xn[..n_out * n_embd],
            n_out,
            logits,
            &mut s.matmul,
        )
        .map_err(quant_err)?;
        timed(s, Op::OutputHead);
        Ok(())
    }
}

/// Rolls the cache back to its committed tokens when dropped armed, i.e. while a panic
/// unwinds through `forward`.
struct RollbackOnUnwind<'a> {
    cache: &'a mut KvCache,
    armed: bool,
}

impl Drop for RollbackOnUnwind<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cache.rollback_layers();
        }
    }
}

/// A way for the C API's tests to make a forward pass panic, as a bug in a kernel would.
/// Armed per thread and only by `chat::Chat` when the `SMALLMIND_DEBUG_INJECT_PANIC`
/// environment variable names the chat's session id; never otherwise.
#[doc(hidden)]
pub mod debug {
    use std::cell::Cell;

    pub const INJECTED_PANIC_MESSAGE: &str = "injected panic (SMALLMIND_DEBUG_INJECT_PANIC)";

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
    }

    /// Makes this thread's forward passes panic in their last layer until disarmed.
    pub fn set_injected_panic(armed: bool) {
        let _ = ARMED.try_with(|a| a.set(armed));
    }

    /// Whether this thread's next forward pass should panic; consumes the request.
    pub(super) fn take_injected_panic() -> bool {
        ARMED.try_with(|a| a.replace(false)).unwrap_or(false)
    }
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(bias) = bias {
        for row in x.chunks_exact_mut(bias.len()) {
            kernels::add_in_place(row, bias);
        }
    }
}
