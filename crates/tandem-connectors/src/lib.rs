//! Tandem's connectors, one module per kind of system, and the SQLite-backed state store.

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod state;
