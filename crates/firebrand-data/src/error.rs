use std::path::PathBuf;

/// Why data could not be read. Every variant names the file (or source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content is malformed.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the position where it helps.
        msg: String,
    },
    /// The data set is not where it was looked for.
    #[error("{what} not found; looked in: {looked:?}. {hint}")]
    NotFound {
        /// What was looked for.
        what: String,
        /// The places tried.
        looked: Vec<PathBuf>,
        /// How to get it.
        hint: String,
    },
}

impl DataError {
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Format { path: path.into(), msg: msg.into() }
    }
}
