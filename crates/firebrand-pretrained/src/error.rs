//! The typed errors of loading a checkpoint: each names the file and the
//! field or tensor.

use firebrand_nn::WeightsError;
use std::path::PathBuf;

/// Why a checkpoint, config or tokenizer could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PretrainedError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No checkpoint where one was looked for.
    #[error("no checkpoint {what:?}: looked in {tried:?}")]
    NotFound {
        /// The folder or model id asked for.
        what: String,
        /// The folders tried.
        tried: Vec<PathBuf>,
    },
    /// A JSON file (config, shard index) does not parse.
    #[error("{path}: not valid JSON: {msg}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        msg: String,
    },
    /// A config field is missing or has the wrong type or value.
    #[error("{path}: field {field:?} {msg}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The checkpoint is of another architecture than the model asked for.
    #[error("{path}: a {found:?} checkpoint, not {expected}")]
    Architecture {
        /// The config file.
        path: PathBuf,
        /// Its `model_type`.
        found: String,
        /// What the loader reads.
        expected: &'static str,
    },
    /// The weights: a corrupt or truncated file, a missing tensor, a shape or dtype mismatch.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A GGUF file that does not parse: bad magic, truncated, an unknown
    /// value or tensor type, a tensor that does not fit the file.
    #[error("{path}: {}{msg}", tensor.as_ref().map(|t| format!("tensor {t:?}: ")).unwrap_or_default())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The tensor concerned, if one.
        tensor: Option<String>,
        /// What is wrong.
        msg: String,
    },
    /// A tokenizer that does not load, or does not fit the model.
    #[error("{path}: {msg}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A chat template that does not parse or render (a syntax error, an
    /// unknown function, or the template's own `raise_exception`).
    #[error("chat template of {origin}: {msg}")]
    Template {
        /// Where the template came from (a file and its key).
        origin: String,
        /// What went wrong.
        msg: String,
    },
}
