//! The one error type of the simulator library.

use thiserror::Error;

/// Everything that can go wrong in the simulator library.
#[derive(Debug, Error)]
pub enum Error {
    /// The scenario file is malformed or a value is out of range.
    #[error("{file}:{line}: field `{field}`: {message}")]
    Scenario {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
    /// A `--param KEY=V1,V2` override is malformed.
    #[error("parameter `{0}`: {1}")]
    Param(String, String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plot {path}: {message}")]
    Plot { path: String, message: String },
    #[error("protocol: {0}")]
    Protocol(#[from] confab_protocol::Error),
}

/// Result with the simulator's error.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
