//! GGUF v2/v3 container parsing over a memory map.
//!
//! The reader trusts nothing: every length is checked against the bytes that remain, every
//! size is computed with checked arithmetic, and counts are capped before anything is
//! allocated, so a hostile file yields an error naming the problem, never a panic.

mod error;
mod reader;
mod value;

pub use error::GgufError;
pub use reader::{GgufFile, MAX_ARRAY_ELEMENTS, MAX_STRING_BYTES, MAX_TENSORS, TensorInfo};
pub use value::Value;
