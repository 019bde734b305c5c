//! smallmind: a CPU inference engine and chat runtime for small language models,
//! exposed to C, C++, .NET and Python through a C ABI (`include/smallmind.h`).
//!
//! Layers, lowest first. Each knows only the ones above it in this list:
//! `gguf` (container), `quant` (block formats), `kernels` (SIMD), `model` (forward pass),
//! `tokenizer`, `sample`, `engine` (model + tokenizer + generation loop), `api` and `chat`
//! (request/response shapes, sessions), `store` (persistence), `ffi` (the only `extern "C"`).

pub mod api;
pub mod chat;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod sample;
pub mod store;
pub mod tokenizer;

pub use error::{Error, ErrorKind};
