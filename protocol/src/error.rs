//! The one error type of the protocol crate.

use thiserror::Error;

/// Everything that can go wrong inside the protocol crate. Every decoder returns one of
/// these instead of panicking.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("truncated input: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("{what} is {len} bytes, limit is {limit}")]
    TooLong {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("invalid ticket: {0}")]
    InvalidTicket(&'static str),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("wrong room secret: the peer's handshake did not authenticate")]
    BadRoomSecret,
    #[error("identity proof invalid: {0}")]
    BadIdentity(&'static str),
    #[error("decryption failed")]
    Decrypt,
    #[error("replayed frame (epoch {epoch}, seq {seq})")]
    Replay { epoch: u32, seq: u32 },
    #[error("no key for epoch {0}")]
    UnknownEpoch(u32),
    #[error("no session with this peer")]
    NoSession,
    #[error("session not established yet")]
    NotEstablished,
}

pub type Result<T> = std::result::Result<T, Error>;
