//! Tandem's connectors, one module per kind of system, and the SQLite-backed state store.

#[cfg(feature = "postgres")]
mod commits;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod state;

pub use tandem_core::connector::ConnectorError;
