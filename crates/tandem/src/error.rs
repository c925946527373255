//! Errors shown to the person running `tandem`, with the exit code each one gets.

use crate::config::ConfigErrors;
use tandem_core::connector::ConnectorError;
use tandem_core::engine::EngineError;
use tandem_core::store::StoreError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config file has problems.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The state store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A system failed.
    #[error("{0}")]
    Connector(#[from] ConnectorError),
    /// The engine failed.
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// The command was used wrongly.
    #[error("{0}")]
    Usage(String),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// The process exit code: 2 for config and usage problems, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}
