//! The crate-wide error: a kind (which the C API maps to a status code) and a message that
//! tells the user what to fix. Each lower layer has its own error enum converted into this.

use std::fmt;

/// What went wrong, in the categories a host program can act on.
/// The C API maps each kind to one `smallmind_status` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A parameter is missing, out of range or inconsistent.
    InvalidArgument,
    /// A JSON document did not parse, had the wrong shape, or named an unknown field.
    InvalidJson,
    /// The model file could not be read or is malformed.
    ModelLoad,
    /// The model file is valid GGUF but uses an architecture, tokenizer or tensor type we do not run.
    UnsupportedModel,
    /// The prompt (plus the reply's reserved room) does not fit the context.
    ContextOverflow,
    /// The caller cancelled the operation.
    Cancelled,
    /// The object is in use by another call.
    Busy,
    /// A memory budget would be exceeded.
    BudgetExceeded,
    /// A file could not be read or written.
    Io,
    /// A bug in smallmind: please report it.
    Internal,
}

/// An error with its kind and a message written for the person who has to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidJson, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
