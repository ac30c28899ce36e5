//! The account: everything a user owns, in one sled database under the data directory.
//!
//! * [`store`] — the sled store (identity, profile, rooms, settings, history), schema
//!   version and migration, damaged-store checks.
//! * [`seal`] — Argon2id + XChaCha20-Poly1305 sealing of the secret records.
//! * [`history`] — call history (room, peers, start, duration; never content) with retention.
//! * [`rooms`] — creating a room and its ticket.
//! * [`export`] — export, import, delete and (re)sealing of the whole account.

pub mod export;
pub mod history;
pub mod rooms;
pub mod seal;
pub mod store;

pub use export::{has_store, AccountError, AccountExport};
pub use history::HistoryEntry;
pub use store::{Settings, Store, StoreError, StoredRoom};
