//! Tandem's engine: everything that decides what to write, with no I/O of its own.
//!
//! Systems are reached through [`connector::Connector`], state through [`store::StateStore`].

pub mod connector;
pub mod engine;
pub mod mapping;
pub mod merge;
pub mod rules;
pub mod sim;
pub mod store;
pub mod value;
