//! The one error type of the library. Every variant names the file (or the thing the user
//! gave) and, for tensors, the tensor name and the shapes involved, so that a binary can print
//! it as a single line.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Not a model, truncated, unknown container, broken pickle or header.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    /// A model we recognise but do not run.
    #[error("{}: {what} ({evidence}); these tools run {runs} models", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        what: &'static str,
        evidence: String,
        /// The versions that run, as `RWKV-4, RWKV-5.2, RWKV-6, RWKV-7a and RWKV-7`.
        runs: String,
    },

    #[error("{}: missing tensor `{name}`", path.display())]
    MissingTensor { path: PathBuf, name: String },

    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected}", path.display())]
    Shape {
        path: PathBuf,
        name: String,
        /// As written in the message: `[4, 64]`, or `[V, D]` where a size is not known.
        expected: String,
        found: Vec<usize>,
    },

    #[error("{}: tensor `{name}` has unsupported dtype {dtype}", path.display())]
    DType {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A state that does not belong to the model it is used with.
    #[error("{0}")]
    StateMismatch(String),

    /// A compute device that cannot be used (none found, not built in, kernel failure).
    #[error("{0}")]
    Device(String),

    /// A value the caller passed that cannot be used (token id out of range, ...).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A shape as a [`Error::Shape`] writes it.
    pub fn dims(shape: &[usize]) -> String {
        format!("{shape:?}")
    }

    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}
