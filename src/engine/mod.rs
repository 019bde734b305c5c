//! The engine: a loaded model with its tokenizer and worker threads, and the generation loop
//! every higher layer (raw completion, chat sessions) runs on.

mod budget;
mod fingerprint;
mod generate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The model types the layers above the engine hold: the KV cache a chat keeps, its
/// precision, and the architecture that picks a chat format.
pub use crate::model::{Architecture, KV_CHUNK_POSITIONS, KvCache, KvType};
pub use budget::{BudgetExceeded, BudgetLimits, BudgetStats, CacheSlot, Eviction, KvBudget};
pub use generate::{
    FinishReason, GenerationEvents, GenerationOutput, GenerationRequest, NoEvents, TokenLogprob,
    Usage, check_fits,
};

/// Test hooks of the forward pass, for the layers above that exercise failure paths.
pub mod debug {
    pub use crate::model::debug::set_injected_panic;
}

use crate::error::{Error, ErrorKind, Result};
use crate::gguf::GgufFile;
pub use crate::kernels::Kernels;
use crate::kernels::ThreadPool;
use crate::model::Model;
use crate::quant::GgmlType;
use crate::tokenizer::Tokenizer;

/// How to load and run a model.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    pub model_path: PathBuf,
    /// Worker threads; `None` = one per physical core.
    pub threads: Option<usize>,
    /// Positions a sequence may hold; `None` = the model's training context.
    pub context_length: Option<usize>,
    pub kv_type: KvType,
    /// Map the file (default) or read it into memory.
    pub use_mmap: bool,
    /// The KV budget shared by every chat of the engine.
    pub budget: BudgetLimits,
    /// Load the metadata and tokenizer only (llama.cpp's `vocab_only`), for any architecture:
    /// tokenizing, detokenizing, info and prompt rendering work; generation is refused.
    pub vocab_only: bool,
    /// A Jinja chat template that replaces the file's `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Chats that begin with the same system turn take its KV rows from one another instead
    /// of computing them (see `GenerationRequest::shared_prefix`). Replies are the same
    /// either way; off, every chat computes its whole prompt.
    pub share_prefixes: bool,
    /// The fast kernels (default) or the scalar references, to check the fast path.
    pub kernels: Kernels,
}

impl EngineOptions {
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            threads: None,
            context_length: None,
            kv_type: KvType::F16,
            use_mmap: true,
            budget: BudgetLimits::default(),
            vocab_only: false,
            chat_template: None,
            share_prefixes: true,
            kernels: Kernels::Fast,
        }
    }
}

/// Severity of a message sent to the host's log sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Where the engine reports what it is doing during load.
pub trait LoadObserver {
    /// Fraction of the load done, 0..=1. Returning false aborts the load.
    fn progress(&mut self, fraction: f32) -> bool;
    fn log(&mut self, level: LogLevel, message: &str);
}

/// A load observer that ignores everything.
pub struct SilentLoad;

impl LoadObserver for SilentLoad {
    fn progress(&mut self, _fraction: f32) -> bool {
        true
    }
    fn log(&mut self, _level: LogLevel, _message: &str) {}
}

/// A model ready to run, shared by every session and thread.
#[derive(Debug)]
pub struct Engine {
    /// `None` for a vocab-only engine.
    model: Option<Model>,
    file: Arc<GgufFile>,
    /// The `chat_template` option, else the file's template.
    chat_template: Option<String>,
    pub tokenizer: Tokenizer,
    pool: ThreadPool,
    context_length: usize,
    kv_type: KvType,
    fingerprint: String,
    load_time: Duration,
    /// What the host should know about how the model was loaded (also sent to `on_log`).
    warnings: Vec<String>,
    kv_budget: KvBudget,
    share_prefixes: bool,
}

/// Number of cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Physical cores this process may use: hardware threads that share a core (SMT siblings,
/// from Linux's CPU topology) count once; elsewhere, or when the topology is unreadable,
/// every available hardware thread counts. The default thread count: a second thread on a
/// core only contends for the same vector units and memory bandwidth.
pub fn physical_cores() -> usize {
    let logical = available_cores();
    let siblings: Option<std::collections::BTreeSet<String>> =
        std::fs::read_dir("/sys/devices/system/cpu")
            .ok()
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        name.starts_with("cpu")
                            && name[3..].chars().all(|c| c.is_ascii_digit())
                            && name.len() > 3
                    })
                    .filter_map(|e| {
                        std::fs::read_to_string(e.path().join("topology/thread_siblings_list")).ok()
                    })
                    .map(|s| s.trim().to_string())
                    .collect()
            });
    match siblings {
        Some(cores) if !cores.is_empty() => cores.len().min(logical),
        _ => logical,
    }
}

impl Engine {
    /// Opens, validates and prepares the model at `options.model_path`.
    pub fn load(options: &EngineOptions, observer: &mut dyn LoadObserver) -> Result<Arc<Engine>> {
        let start = Instant::now();
        let cores = available_cores();
        let threads = options.threads.unwrap_or_else(physical_cores);
        if threads == 0 || threads > cores {
            return Err(Error::invalid_argument(format!(
                "threads is {threads}; it must be between 1 and the {cores} cores this machine has"
            )));
        }
        if !options.model_path.exists() {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "model file '{}' does not exist",
                    options.model_path.display()
                ),
            ));
        }
        if options.model_path.is_dir() {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "model_path '{}' is a directory; give the path of a .gguf file (for example one inside it)",
                    options.model_path.display()
                ),
            ));
        }
        observer.log(
            LogLevel::Info,
            &format!("loading {}", options.model_path.display()),
        );
        let file = Arc::new(GgufFile::open(&options.model_path, options.use_mmap)?);
        if !observer.progress(0.05) {
            return Err(Error::new(
                ErrorKind::Cancelled,
                "loading was cancelled by the progress callback",
            ));
        }
        let tokenizer = Tokenizer::from_gguf(&file)?;
        if !observer.progress(0.15) {
            return Err(Error::new(
                ErrorKind::Cancelled,
                "loading was cancelled by the progress callback",
            ));
        }
        let pool = ThreadPool::with_kernels(threads, options.kernels);
        let model = if options.vocab_only {
            None
        } else {
            let mut layer_progress = |done: usize, total: usize| {
                observer.progress(0.15 + 0.8 * done as f32 / total as f32)
            };
            // The reference kernels read the file's layout only.
            let repack_on = (options.kernels == Kernels::Fast).then_some(&pool);
            let model = Model::load(Arc::clone(&file), repack_on, &mut layer_progress)?;
            if tokenizer.n_vocab() != model.hparams.n_vocab {
                return Err(Error::new(
                    ErrorKind::ModelLoad,
                    format!(
                        "the tokenizer has {} tokens but token_embd.weight has {} rows",
                        tokenizer.n_vocab(),
                        model.hparams.n_vocab
                    ),
                ));
            }
            Some(model)
        };
        let context_length = match options.context_length {
            None => model
                .as_ref()
                .map(|m| m.hparams.n_ctx_train)
                .or_else(|| metadata_context_length(&file))
                .unwrap_or(0),
            Some(0) => return Err(Error::invalid_argument("context_length must be at least 1")),
            Some(n) if n > crate::model::limits::MAX_CONTEXT => {
                return Err(Error::invalid_argument(format!(
                    "context_length is {n}; smallmind holds at most {} positions",
                    crate::model::limits::MAX_CONTEXT
                )));
            }
            Some(n) => n,
        };
        let mut warnings = Vec::new();
        if let Some(n_ctx_train) = model.as_ref().map(|m| m.hparams.n_ctx_train)
            && context_length > n_ctx_train
        {
            let warning = format!(
                "context_length {context_length} is above the {n_ctx_train} tokens this model was trained on; past that, its output usually degrades (omit context_length to use the training context)"
            );
            observer.log(LogLevel::Warn, &warning);
            warnings.push(warning);
        }
        let fingerprint = fingerprint::of_file(&file);
        if !observer.progress(1.0) {
            return Err(Error::new(
                ErrorKind::Cancelled,
                "loading was cancelled by the progress callback",
            ));
        }
        let load_time = start.elapsed();
        let layers = match &model {
            Some(m) => format!("{} layers", m.hparams.n_layer),
            None => "vocabulary only".to_string(),
        };
        observer.log(
            LogLevel::Info,
            &format!(
                "loaded {} ({layers}, {} tokens) in {:.0} ms with {threads} threads",
                file.get_str("general.architecture").unwrap_or("?"),
                tokenizer.n_vocab(),
                load_time.as_secs_f64() * 1000.0
            ),
        );
        let chat_template = options
            .chat_template
            .clone()
            .or_else(|| file.get_str("tokenizer.chat_template").map(str::to_string));
        Ok(Arc::new(Engine {
            model,
            file,
            chat_template,
            tokenizer,
            pool,
            context_length,
            kv_type: options.kv_type,
            fingerprint,
            load_time,
            warnings,
            kv_budget: KvBudget::new(options.budget),
            share_prefixes: options.share_prefixes,
        }))
    }

    /// The model's weights; a vocab-only engine has none and says so.
    pub fn model(&self) -> Result<&Model> {
        self.model.as_ref().ok_or_else(|| {
            Error::invalid_argument(
                "this engine was created with \"vocab_only\": true and holds no weights; it tokenizes and renders prompts only. Create the engine without vocab_only to generate",
            )
        })
    }

    /// Ok when the engine can generate; a vocab-only engine's error otherwise.
    pub fn ensure_weights(&self) -> Result<()> {
        self.model().map(|_| ())
    }

    /// The model's layer count and the key (or value) values each position stores per layer:
    /// the shape a KV cache of this engine has. A vocab-only engine's error otherwise.
    pub fn kv_shape(&self) -> Result<(usize, usize)> {
        let hp = &self.model()?.hparams;
        Ok((hp.n_layer, hp.kv_dim()))
    }

    /// `general.name` from the file, or "model" when it has none.
    pub fn model_name(&self) -> &str {
        self.file.get_str("general.name").unwrap_or("model")
    }

    pub fn is_vocab_only(&self) -> bool {
        self.model.is_none()
    }

    /// The chat template sessions use: the `chat_template` option, else the file's.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The GGUF file: metadata, and the weights unless vocab-only.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The architecture when smallmind runs it (always, unless vocab-only).
    pub fn architecture(&self) -> Option<Architecture> {
        match &self.model {
            Some(m) => Some(m.hparams.arch),
            None => self
                .file
                .get_str("general.architecture")
                .and_then(Architecture::from_name),
        }
    }

    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Identifies the model's weights (for KV caches saved alongside sessions).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Warnings of the load (e.g. a context longer than the model's training context).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Whether chats take a common system turn's KV rows from one another.
    pub fn shares_prefixes(&self) -> bool {
        self.share_prefixes
    }

    /// The KV budget every chat of this engine shares.
    pub fn kv_budget(&self) -> &KvBudget {
        &self.kv_budget
    }

    /// An empty KV cache for one sequence of this engine.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_of(self.context_length)
    }

    /// An empty KV cache of `max_positions` (a vocab-only engine's has no layers).
    pub fn new_cache_of(&self, max_positions: usize) -> KvCache {
        match &self.model {
            Some(m) => m.new_cache(self.kv_type, max_positions),
            None => KvCache::new(self.kv_type, 0, 0, max_positions),
        }
    }

    /// Facts about the loaded model for introspection.
    pub fn info(&self) -> ModelInfo {
        let hp = self.model.as_ref().map(|m| &m.hparams);
        let file = &self.file;
        let mut tensor_types: Vec<(GgmlType, usize)> = Vec::new();
        let mut n_params = 0u64;
        for t in &file.tensors {
            n_params += t.n_elements;
            match tensor_types.iter_mut().find(|(ty, _)| *ty == t.ggml_type) {
                Some((_, n)) => *n += 1,
                None => tensor_types.push((t.ggml_type, 1)),
            }
        }
        tensor_types.sort_by_key(|(ty, _)| ty.id());
        ModelInfo {
            architecture: file
                .get_str("general.architecture")
                .unwrap_or_default()
                .to_string(),
            name: file.get_str("general.name").map(str::to_string),
            vocab_only: hp.is_none(),
            n_vocab: self.tokenizer.n_vocab(),
            n_ctx_train: hp
                .map(|hp| hp.n_ctx_train)
                .or_else(|| metadata_context_length(file)),
            context_length: self.context_length,
            n_embd: hp.map(|hp| hp.n_embd),
            n_layer: hp.map(|hp| hp.n_layer),
            n_head: hp.map(|hp| hp.n_head),
            n_head_kv: hp.map(|hp| hp.n_head_kv),
            head_dim: hp.map(|hp| hp.head_dim),
            n_ff: hp.map(|hp| hp.n_ff),
            n_params,
            file_bytes: file.file_len(),
            tensor_types: tensor_types
                .into_iter()
                .map(|(ty, n)| (ty.name(), n))
                .collect(),
            chat_template: self.chat_template.clone(),
            bos_id: self.tokenizer.bos_id(),
            eos_id: self.tokenizer.eos_id(),
            kv_type: self.kv_type,
            threads: self.pool.n_threads(),
            kernels: self.pool.kernels(),
            fingerprint: self.fingerprint.clone(),
            load_ms: self.load_time.as_secs_f64() * 1000.0,
            warnings: self.warnings.clone(),
        }
    }
}

/// `{arch}.context_length` from the metadata, for engines that do not load the model.
fn metadata_context_length(file: &GgufFile) -> Option<usize> {
    let arch = file.get_str("general.architecture")?;
    file.get_u64(&format!("{arch}.context_length"))
        .map(|n| n as usize)
}

/// What `Engine::info` reports. The model's shape is `None` for a vocab-only engine.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// `general.architecture`.
    pub architecture: String,
    pub name: Option<String>,
    pub vocab_only: bool,
    pub n_vocab: usize,
    pub n_ctx_train: Option<usize>,
    pub context_length: usize,
    pub n_embd: Option<usize>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_head_kv: Option<usize>,
    pub head_dim: Option<usize>,
    pub n_ff: Option<usize>,
    pub n_params: u64,
    pub file_bytes: u64,
    /// Tensor type name and how many tensors use it.
    pub tensor_types: Vec<(&'static str, usize)>,
    pub chat_template: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub kv_type: KvType,
    pub threads: usize,
    pub kernels: Kernels,
    pub fingerprint: String,
    pub load_ms: f64,
    pub warnings: Vec<String>,
}
