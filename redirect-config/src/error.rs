use std::path::PathBuf;

/// A refused input. Always names where the value came from and the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{field}: {value:?} {problem}")]
    Invalid { field: String, value: String, problem: String },
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, value: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.into(), value: value.into(), problem: problem.into() }
    }
}
