//! Status codes.

use crate::error::ErrorKind;

/// The result of every smallmind call. 0 is success; each error has its own code, and
/// `smallmind_last_error()` gives the message. Values are stable: retired codes are never reused.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum smallmind_status {
    SMALLMIND_OK = 0,
    /// A parameter is NULL, out of range, or not valid UTF-8.
    SMALLMIND_ERR_INVALID_ARGUMENT = 1,
    /// A JSON document did not parse, had a wrong type, or named an unknown field.
    SMALLMIND_ERR_INVALID_JSON = 2,
    /// The model file is missing, unreadable as GGUF, or malformed.
    SMALLMIND_ERR_MODEL_LOAD = 3,
    /// The model uses an architecture, tokenizer or tensor type smallmind does not run.
    SMALLMIND_ERR_UNSUPPORTED_MODEL = 4,
    /// The prompt plus the reply's room does not fit the context.
    SMALLMIND_ERR_CONTEXT_OVERFLOW = 5,
    /// The call was cancelled by the host.
    SMALLMIND_ERR_CANCELLED = 6,
    /// The object is in use by another call on another thread.
    SMALLMIND_ERR_BUSY = 7,
    /// A memory budget would be exceeded.
    SMALLMIND_ERR_BUDGET_EXCEEDED = 8,
    /// A file could not be read or written.
    SMALLMIND_ERR_IO = 9,
    /// A bug in smallmind (including a caught panic); please report it with the message.
    SMALLMIND_ERR_INTERNAL = 10,
}

impl From<ErrorKind> for smallmind_status {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidArgument => Self::SMALLMIND_ERR_INVALID_ARGUMENT,
            ErrorKind::InvalidJson => Self::SMALLMIND_ERR_INVALID_JSON,
            ErrorKind::ModelLoad => Self::SMALLMIND_ERR_MODEL_LOAD,
            ErrorKind::UnsupportedModel => Self::SMALLMIND_ERR_UNSUPPORTED_MODEL,
            ErrorKind::ContextOverflow => Self::SMALLMIND_ERR_CONTEXT_OVERFLOW,
            ErrorKind::Cancelled => Self::SMALLMIND_ERR_CANCELLED,
            ErrorKind::Busy => Self::SMALLMIND_ERR_BUSY,
            ErrorKind::BudgetExceeded => Self::SMALLMIND_ERR_BUDGET_EXCEEDED,
            ErrorKind::Io => Self::SMALLMIND_ERR_IO,
            ErrorKind::Internal => Self::SMALLMIND_ERR_INTERNAL,
        }
    }
}
