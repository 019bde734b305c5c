//! The limits every call enforces, exported to the header as constants. Each is checked with
//! an error that names it (SMALLMIND_ERR_INVALID_ARGUMENT for requests and options,
//! SMALLMIND_ERR_MODEL_LOAD for files); none is ever silently truncated. The values are the
//! layers' own constants, restated as literals for cbindgen (a test keeps them equal).

/// Bytes of any JSON text passed in (requests, options, imports): 64 MiB.
pub const SMALLMIND_MAX_REQUEST_BYTES: u64 = 67_108_864;
/// Messages in one chat request.
pub const SMALLMIND_MAX_MESSAGES: u64 = 65_536;
/// Positions of a context: a model's `context_length` and the engine option alike.
/// Requests whose prompt plus `max_tokens` exceed the engine's context return
/// SMALLMIND_ERR_CONTEXT_OVERFLOW, naming both sizes.
pub const SMALLMIND_MAX_CONTEXT_LENGTH: u64 = 16_777_216;
/// Bytes of a prompt rendered by a chat template: 16 MiB.
pub const SMALLMIND_MAX_RENDERED_PROMPT_BYTES: u64 = 16_777_216;
/// Work one template render may do (minijinja fuel: about one instruction or 64 bytes of
/// data each); a template that needs more fails with a message saying so.
pub const SMALLMIND_MAX_TEMPLATE_FUEL: u64 = 4_000_000;
/// Nesting of macro calls and recursive loops in one template render.
pub const SMALLMIND_MAX_TEMPLATE_RECURSION: u64 = 64;
/// GGUF files: bytes of one string (16 MiB).
pub const SMALLMIND_MAX_GGUF_STRING_BYTES: u64 = 16_777_216;
/// GGUF files: elements of one metadata array.
pub const SMALLMIND_MAX_GGUF_ARRAY_ELEMENTS: u64 = 67_108_864;
/// GGUF files: tensors, and metadata keys, in one file.
pub const SMALLMIND_MAX_GGUF_TENSORS: u64 = 1_048_576;
/// Model hyperparameters: transformer blocks.
pub const SMALLMIND_MAX_LAYERS: u64 = 1024;
/// Model hyperparameters: embedding, feed-forward and concatenated head widths.
pub const SMALLMIND_MAX_WIDTH: u64 = 1_048_576;
/// Model hyperparameters: attention heads.
pub const SMALLMIND_MAX_HEADS: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_constants_are_the_limits_the_layers_enforce() {
        use crate::model::limits;
        assert_eq!(
            SMALLMIND_MAX_REQUEST_BYTES,
            crate::api::MAX_REQUEST_BYTES as u64
        );
        assert_eq!(SMALLMIND_MAX_MESSAGES, crate::chat::MAX_MESSAGES as u64);
        assert_eq!(SMALLMIND_MAX_CONTEXT_LENGTH, limits::MAX_CONTEXT as u64);
        assert_eq!(
            SMALLMIND_MAX_RENDERED_PROMPT_BYTES,
            crate::chat::MAX_RENDERED_BYTES as u64
        );
        assert_eq!(SMALLMIND_MAX_TEMPLATE_FUEL, crate::chat::MAX_TEMPLATE_FUEL);
        assert_eq!(
            SMALLMIND_MAX_TEMPLATE_RECURSION,
            crate::chat::MAX_TEMPLATE_RECURSION as u64
        );
        assert_eq!(
            SMALLMIND_MAX_GGUF_STRING_BYTES,
            crate::gguf::MAX_STRING_BYTES
        );
        assert_eq!(
            SMALLMIND_MAX_GGUF_ARRAY_ELEMENTS,
            crate::gguf::MAX_ARRAY_ELEMENTS
        );
        assert_eq!(SMALLMIND_MAX_GGUF_TENSORS, crate::gguf::MAX_TENSORS);
        assert_eq!(SMALLMIND_MAX_LAYERS, limits::MAX_LAYERS as u64);
        assert_eq!(SMALLMIND_MAX_WIDTH, limits::MAX_WIDTH as u64);
        assert_eq!(SMALLMIND_MAX_HEADS, limits::MAX_HEADS as u64);
    }
}
