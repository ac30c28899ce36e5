//! confab-relay: a community relay for confab.
//!
//! A libp2p circuit relay v2 server with limits that suit calls, plus identify, AutoNAT v2
//! (server side), ping and a rendezvous server for room discovery by hashed namespace.
//! Prometheus metrics, a persistent identity, a TOML config and an access policy.
//!
//! Start one with [`start`], which returns a [`RelayHandle`] that knows the relay's peer id
//! and bound addresses; [`RelayHandle::shutdown`] stops it.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod gate;
pub mod identity;
pub mod iplimit;
pub mod metrics;
pub mod rendezvous;
mod server;

use std::{net::SocketAddr, path::PathBuf};

pub use config::{AccessMode, Config, Limits};
pub use server::{start, RelayHandle, Summary};

/// Everything that can go wrong in the relay library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (the message names the field).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file operation failed.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The identity key file exists but cannot be used. It is left untouched.
    #[error(
        "identity key file {path} is unreadable or corrupt ({reason}); it was left untouched — \
         restore it from a backup, or move it away to create a new identity (and a new peer id)"
    )]
    CorruptIdentity {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Building the libp2p transport or behaviour failed.
    #[error("setting up libp2p: {0}")]
    Libp2p(String),
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The configured address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The metrics address could not be bound.
    #[error("cannot bind the metrics address {addr}: {source}")]
    MetricsBind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The relay did not come up in time.
    #[error("relay did not start: {0}")]
    Startup(String),
    /// The relay task ended abnormally.
    #[error("relay task failed: {0}")]
    Task(String),
    /// A benchmark step failed.
    #[error("benchmark: {0}")]
    Bench(String),
}
