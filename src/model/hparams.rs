//! Hyperparameters, read from the GGUF metadata of each supported architecture.

use super::ModelError;
use crate::gguf::GgufFile;
use crate::kernels::RopeStyle;

/// Limits on what a file may declare, far above every released model and far below what
/// would overflow a size computation or ask the allocator for terabytes.
pub mod limits {
    /// Transformer blocks (the largest released models have under 200).
    pub const MAX_LAYERS: usize = 1024;
    /// Width of the residual stream, of the FFN, and of the concatenated heads.
    pub const MAX_WIDTH: usize = 1 << 20;
    /// Attention heads (query or key/value).
    pub const MAX_HEADS: usize = 4096;
    /// Positions of the training context, and of the context an engine may be given
    /// (16,777,216; the longest released contexts are 10M).
    pub const MAX_CONTEXT: usize = 1 << 24;
    /// The tensors one transformer block needs at least (norms, q, k, v, o, gate, up, down).
    pub const TENSORS_PER_LAYER: usize = 9;
}
use limits::*;

/// The architectures smallmind runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM/SmolLM2, TinyLlama, Mistral.
    Llama,
    /// Qwen 2 / 2.5: Q/K/V biases, NEOX RoPE.
    Qwen2,
    /// Qwen 3: per-head Q/K RMSNorm, NEOX RoPE.
    Qwen3,
    /// Gemma 3: scaled embeddings, four norms per layer, GELU FFN, local/global attention.
    Gemma3,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "llama, qwen2, qwen3, gemma3";

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "gemma3" => Some(Self::Gemma3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
        }
    }
}

/// Everything the forward pass needs to know about the shapes and constants of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Hyperparams {
    pub arch: Architecture,
    pub n_vocab: usize,
    /// Context length the model was trained for.
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head dimension of Q and K (`attention.key_length`; n_embd / n_head when absent).
    pub head_dim: usize,
    pub n_ff: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    /// RoPE base of sliding-window layers (Gemma 3's local layers).
    pub rope_freq_base_local: f32,
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    /// Sliding-window length of local-attention layers, when the model has them.
    pub sliding_window: Option<usize>,
    /// Layer `il` is a local (sliding-window) layer when `il % pattern < pattern - 1`.
    pub sliding_window_pattern: usize,
    /// Multiplies Q before attention.
    pub attention_scale: f32,
    /// Multiplies the token embeddings (Gemma: √n_embd).
    pub embedding_scale: Option<f32>,
}

impl Hyperparams {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let arch_name = file
            .architecture()
            .ok_or_else(|| ModelError::MissingMetadata("general.architecture".into()))?;
        let arch = Architecture::from_name(arch_name)
            .ok_or_else(|| ModelError::UnsupportedArchitecture(arch_name.to_string()))?;
        let key = |suffix: &str| format!("{arch_name}.{suffix}");
        let required = |suffix: &str| -> Result<usize, ModelError> {
            let k = key(suffix);
            file.get_u64(&k)
                .map(|v| v as usize)
                .ok_or(ModelError::MissingMetadata(k))
        };
        let optional = |suffix: &str| file.get_u64(&key(suffix)).map(|v| v as usize);

        let invalid = |m: String| ModelError::InvalidHyperparameter(format!("{arch_name}: {m}"));
        let in_range = |suffix: &str, v: usize, max: usize| -> Result<usize, ModelError> {
            if v == 0 || v > max {
                Err(invalid(format!(
                    "{} is {v}; it must be between 1 and {max}",
                    key(suffix)
                )))
            } else {
                Ok(v)
            }
        };

        let n_embd = in_range("embedding_length", required("embedding_length")?, MAX_WIDTH)?;
        let n_layer = in_range("block_count", required("block_count")?, MAX_LAYERS)?;
        // Each block needs its own tensors: a count the file cannot back is refused before
        // anything is sized by it.
        if n_layer > file.tensors.len() / TENSORS_PER_LAYER {
            return Err(invalid(format!(
                "{} is {n_layer} but the file has only {} tensors, too few for that many blocks",
                key("block_count"),
                file.tensors.len()
            )));
        }
        let n_head = in_range(
            "attention.head_count",
            required("attention.head_count")?,
            MAX_HEADS,
        )?;
        let n_head_kv = match optional("attention.head_count_kv") {
            None => n_head,
            Some(v) => in_range("attention.head_count_kv", v, MAX_HEADS)?,
        };
        let n_ff = in_range(
            "feed_forward_length",
            required("feed_forward_length")?,
            MAX_WIDTH,
        )?;
        let n_ctx_train = in_range("context_length", required("context_length")?, MAX_CONTEXT)?;
        if n_head % n_head_kv != 0 {
            return Err(invalid(format!(
                "head_count {n_head} must be a multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = match optional("attention.key_length") {
            Some(v) => in_range("attention.key_length", v, MAX_WIDTH)?,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(invalid(format!(
                    "embedding_length {n_embd} is not divisible by head_count {n_head}, and the file has no attention.key_length"
                )));
            }
        };
        let value_dim = optional("attention.value_length").unwrap_or(head_dim);
        if value_dim != head_dim {
            return Err(invalid(format!(
                "key_length {head_dim} and value_length {value_dim} must be equal"
            )));
        }
        if n_head.checked_mul(head_dim).is_none_or(|q| q > MAX_WIDTH) {
            return Err(invalid(format!(
                "head_count {n_head} x key_length {head_dim} exceeds the widest supported {MAX_WIDTH}"
            )));
        }
        let rope_dims = optional("rope.dimension_count").unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(invalid(format!(
                "rope.dimension_count {rope_dims} must be even and at most the head size {head_dim}"
            )));
        }
        let rms_eps = file
            .get_f32(&key("attention.layer_norm_rms_epsilon"))
            .ok_or_else(|| ModelError::MissingMetadata(key("attention.layer_norm_rms_epsilon")))?;
        let rope_freq_base = file.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        // llama.cpp falls back to 10000 for the local layers when the file has no SWA base.
        let rope_freq_base_local = file.get_f32(&key("rope.freq_base_swa")).unwrap_or(10_000.0);
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(invalid(format!(
                "attention.layer_norm_rms_epsilon is {rms_eps}; it must be a finite number >= 0"
            )));
        }
        for (name, base) in [
            ("rope.freq_base", rope_freq_base),
            ("rope.freq_base_swa", rope_freq_base_local),
        ] {
            if !(base.is_finite() && base > 0.0) {
                return Err(invalid(format!(
                    "{name} is {base}; it must be a finite positive number"
                )));
            }
        }

        let (rope_style, sliding_window, sliding_window_pattern, embedding_scale) = match arch {
            Architecture::Llama => (RopeStyle::Normal, None, 1, None),
            Architecture::Qwen2 | Architecture::Qwen3 => (RopeStyle::Neox, None, 1, None),
            Architecture::Gemma3 => (
                RopeStyle::Neox,
                optional("attention.sliding_window"),
                // llama.cpp's gemma3 default when the key is absent: 5 local layers, 1 global.
                optional("attention.sliding_window_pattern").unwrap_or(6),
                Some((n_embd as f32).sqrt()),
            ),
        };
        if sliding_window_pattern == 0 || sliding_window == Some(0) {
            return Err(invalid(
                "attention.sliding_window and attention.sliding_window_pattern must be at least 1"
                    .into(),
            ));
        }

        let n_vocab = file
            .tensor("token_embd.weight")
            .map(|t| t.n_rows() as usize)
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;

        Ok(Self {
            arch,
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            rms_eps,
            rope_freq_base,
            rope_freq_base_local,
            rope_dims,
            rope_style,
            sliding_window,
            sliding_window_pattern,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            embedding_scale,
        })
    }

    /// Width of one K or V row in the cache: n_head_kv × head_dim.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the concatenated query heads: n_head × head_dim.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// The attention window of layer `il`, or `None` for full causal attention.
    pub fn layer_window(&self, il: usize) -> Option<usize> {
        let pattern = self.sliding_window_pattern;
        self.sliding_window
            .filter(|_| pattern > 1 && il % pattern < pattern - 1)
    }
}
