//! What can be wrong with a GGUF file.

use std::fmt;

use crate::error::{Error, ErrorKind};

#[derive(Debug)]
pub enum GgufError {
    /// The file could not be opened or read.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file ends before a field it declares.
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    BadMagic([u8; 4]),
    UnsupportedVersion(u32),
    UnknownValueType {
        key: String,
        type_id: u32,
    },
    UnsupportedTensorType {
        tensor: String,
        type_id: u32,
    },
    /// A count or size above what any real file has.
    LimitExceeded {
        what: String,
        value: u64,
        limit: u64,
    },
    /// Anything else inconsistent, with a description.
    Malformed(String),
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "cannot read model file '{path}': {source}"),
            Self::Truncated {
                what,
                offset,
                needed,
                file_len,
            } => write!(
                f,
                "truncated GGUF file: needed {needed} bytes for {what} at offset {offset}, but the file has {file_len} bytes"
            ),
            Self::BadMagic(m) => write!(
                f,
                "not a GGUF file: it starts with bytes {m:02x?} instead of \"GGUF\" (is this the right file?)"
            ),
            Self::UnsupportedVersion(v) => {
                write!(
                    f,
                    "GGUF version {v} is not supported; smallmind reads versions 2 and 3 (re-convert the model with a current llama.cpp)"
                )
            }
            Self::UnknownValueType { key, type_id } => {
                write!(
                    f,
                    "metadata key '{key}' has unknown value type {type_id} (valid types are 0..=12)"
                )
            }
            Self::UnsupportedTensorType { tensor, type_id } => write!(
                f,
                "tensor '{tensor}' has ggml type id {type_id}, which smallmind does not support (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
            ),
            Self::LimitExceeded { what, value, limit } => {
                write!(
                    f,
                    "malformed GGUF file: {what} is {value}, above the limit of {limit}"
                )
            }
            Self::Malformed(m) => write!(f, "malformed GGUF file: {m}"),
        }
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<GgufError> for Error {
    fn from(e: GgufError) -> Self {
        let kind = match &e {
            GgufError::Io { .. } => ErrorKind::Io,
            GgufError::UnsupportedTensorType { .. } => ErrorKind::UnsupportedModel,
            _ => ErrorKind::ModelLoad,
        };
        Error::new(kind, e.to_string())
    }
}
