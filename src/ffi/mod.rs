//! The C API: the only `extern "C"` code. It converts pointers and strings, validates them,
//! catches panics and maps errors to status codes; all logic lives in the layers below.
//!
//! Conventions (stated once in README.md, "C API conventions"):
//! - every function returns a `smallmind_status`; outputs are written only on success;
//! - every `char *` the library returns is freed with `smallmind_string_free`;
//! - `smallmind_last_error` gives the calling thread's message for its last failed call.

#![allow(non_camel_case_types)]

mod boundary;
mod callbacks;
mod chat;
mod engine;
mod status;

pub use callbacks::{
    smallmind_chat_callbacks, smallmind_engine_callbacks, smallmind_host_result,
    smallmind_host_result_set, smallmind_usage,
};
pub use chat::*;
pub use engine::*;
pub use status::smallmind_status;
