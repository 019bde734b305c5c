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

/// The FFN's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU.
    Silu,
    /// GeGLU with the tanh approximation of GELU.
    GeluTanh,
}

/// The chat turn markup a family's models were trained on (the chat layer renders it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFamily {
    /// `<|im_start|>role … <|im_end|>` (Llama 3 files use their own header tokens instead,
    /// which the chat layer detects from the vocabulary).
    ChatMl,
    /// `<start_of_turn>role … <end_of_turn>`, no system role.
    Gemma,
}

/// Everything that differs between architectures, decided once per architecture here: the
/// metadata reader, the weight loader, the forward pass and the chat layer read it from this
/// table, so a new architecture is one row (and its tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchTraits {
    pub arch: Architecture,
    /// `general.architecture` in the file, and the metadata keys' prefix.
    pub name: &'static str,
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// Q/K/V biases (`attn_q.bias`, …), loaded when present.
    pub qkv_bias: bool,
    /// Per-head RMSNorm of Q and K (`attn_q_norm`, `attn_k_norm`), required.
    pub qk_norm: bool,
    /// Norms of the attention and FFN outputs before the residual adds
    /// (`post_attention_norm`, `post_ffw_norm`), required.
    pub post_norms: bool,
    /// Token embeddings multiplied by √n_embd.
    pub scaled_embeddings: bool,
    /// Local (sliding-window) layers, read from `attention.sliding_window`, with this
    /// local/global pattern when `attention.sliding_window_pattern` is absent.
    pub sliding_window_pattern: Option<usize>,
    /// The chat format of files without a template.
    pub default_chat_format: ChatFamily,
}

/// One row per architecture.
const ARCHITECTURES: [ArchTraits; 4] = [
    ArchTraits {
        arch: Architecture::Llama,
        name: "llama",
        rope_style: RopeStyle::Normal,
        activation: Activation::Silu,
        qkv_bias: false,
        qk_norm: false,
        post_norms: false,
        scaled_embeddings: false,
        sliding_window_pattern: None,
        default_chat_format: ChatFamily::ChatMl,
    },
    ArchTraits {
        arch: Architecture::Qwen2,
        name: "qwen2",
        rope_style: RopeStyle::Neox,
        activation: Activation::Silu,
        qkv_bias: true,
        qk_norm: false,
        post_norms: false,
        scaled_embeddings: false,
        sliding_window_pattern: None,
        default_chat_format: ChatFamily::ChatMl,
    },
    ArchTraits {
        arch: Architecture::Qwen3,
        name: "qwen3",
        rope_style: RopeStyle::Neox,
        activation: Activation::Silu,
        qkv_bias: false,
        qk_norm: true,
        post_norms: false,
        scaled_embeddings: false,
        sliding_window_pattern: None,
        default_chat_format: ChatFamily::ChatMl,
    },
    ArchTraits {
        arch: Architecture::Gemma3,
        name: "gemma3",
        rope_style: RopeStyle::Neox,
        activation: Activation::GeluTanh,
        qkv_bias: false,
        qk_norm: true,
        post_norms: true,
        scaled_embeddings: true,
        // llama.cpp's gemma3 default when the key is absent: 5 local layers, 1 global.
        sliding_window_pattern: Some(6),
        default_chat_format: ChatFamily::Gemma,
    },
];

impl Architecture {
    pub const SUPPORTED: &'static str = "llama, qwen2, qwen3, gemma3";

    pub fn from_name(name: &str) -> Option<Self> {
        ARCHITECTURES
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.arch)
    }

    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// This architecture's row of the table.
    pub fn traits(self) -> &'static ArchTraits {
        ARCHITECTURES
            .iter()
            .find(|t| t.arch == self)
            .expect("every architecture has a row")
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

        let traits = arch.traits();
        let rope_style = traits.rope_style;
        let (sliding_window, sliding_window_pattern) = match traits.sliding_window_pattern {
            None => (None, 1),
            Some(default_pattern) => (
                optional("attention.sliding_window"),
                optional("attention.sliding_window_pattern").unwrap_or(default_pattern),
            ),
        };
        let embedding_scale = traits.scaled_embeddings.then(|| (n_embd as f32).sqrt());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_has_one_row_and_the_supported_list_names_them() {
        let names: Vec<&str> = ARCHITECTURES.iter().map(|t| t.name).collect();
        assert_eq!(names.join(", "), Architecture::SUPPORTED);
        for t in &ARCHITECTURES {
            assert_eq!(Architecture::from_name(t.name), Some(t.arch));
            assert_eq!(t.arch.traits(), t);
        }
        assert_eq!(Architecture::from_name("falcon"), None);
    }
}
