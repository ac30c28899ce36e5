//! Call history: which room, with whom, when and for how long — never what was said.
//!
//! One record per call in the `history` tree, keyed by 8 random bytes (not a time), valued by a JSON [`HistoryEntry`] (sealed when the account has a passphrase).
//! Entries older than the retention (default [`DEFAULT_RETENTION_DAYS`], setting
//! `history_retention_days` in the `settings` tree; 0 keeps no history at all) are removed
//! on every start of the store, when a sealed store is unlocked, and once a day during a long
//! call ([`with_periodic_expiry`]). The clock is always an argument, so tests inject it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::{Store, StoreError};

/// The sled tree that holds the history.
pub const HISTORY: &str = "history";
/// Retention when the user has not chosen one.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// How often a running call drops expired history.
pub const EXPIRY_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// Settings-tree key of the retention.
const RETENTION_KEY: &str = "history_retention_days";
const DAY_MS: u64 = 24 * 3600 * 1000;

/// One call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Room id, hex.
    pub room_id: String,
    /// Peer ids of the other members met in the call.
    pub peers: Vec<String>,
    /// Start, ms since the Unix epoch.
    pub started_ms: u64,
    /// Duration in ms.
    pub duration_ms: u64,
}

fn record_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Record(e.to_string())
}

impl Store {
    /// Days a call stays in the history.
    pub fn history_retention_days(&self) -> Result<u32, StoreError> {
        match self.db().open_tree("settings")?.get(RETENTION_KEY)? {
            None => Ok(DEFAULT_RETENTION_DAYS),
            Some(v) => {
                let b: [u8; 4] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| record_error("history retention"))?;
                Ok(u32::from_be_bytes(b))
            }
        }
    }

    /// Sets the retention, and applies it at once.
    pub fn set_history_retention_days(&self, days: u32, now_ms: u64) -> Result<(), StoreError> {
        self.db()
            .open_tree("settings")?
            .insert(RETENTION_KEY, &days.to_be_bytes())?;
        self.db().flush()?;
        if self.is_unlocked()? {
            self.expire_history(now_ms)?;
        }
        Ok(())
    }

    /// Records a call, unless the retention is 0 (no history).
    pub fn record_call(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        if self.history_retention_days()? == 0 {
            return Ok(());
        }
        // A random key, not a counter: resealing copies the records into a new database,
        // whose counter would start again.
        let mut key = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        let json = serde_json::to_vec(entry).map_err(record_error)?;
        let value = self.seal_value(HISTORY, &key, &json)?;
        self.db().open_tree(HISTORY)?.insert(key, value)?;
        self.db().flush()?;
        Ok(())
    }

    /// Every call in the history, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut all = self.history_with_keys()?;
        all.sort_by_key(|(_, e)| e.started_ms);
        Ok(all.into_iter().map(|(_, e)| e).collect())
    }

    fn history_with_keys(&self) -> Result<Vec<(sled::IVec, HistoryEntry)>, StoreError> {
        self.db()
            .open_tree(HISTORY)?
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let v = self.open_value(HISTORY, &k, &v)?;
                let e = serde_json::from_slice(&v).map_err(record_error)?;
                Ok((k, e))
            })
            .collect()
    }

    /// Removes every history entry; returns how many there were.
    pub fn clear_history(&self) -> Result<usize, StoreError> {
        let tree = self.db().open_tree(HISTORY)?;
        let n = tree.len();
        tree.clear()?;
        self.db().flush()?;
        Ok(n)
    }

    /// Removes the entries that started more than the retention before `now_ms`; returns
    /// how many. On a sealed store that is not unlocked it does nothing (the times are
    /// sealed too); it runs again when the store is unlocked.
    pub fn expire_history(&self, now_ms: u64) -> Result<usize, StoreError> {
        if !self.is_unlocked()? {
            return Ok(0);
        }
        let keep_ms = u64::from(self.history_retention_days()?).saturating_mul(DAY_MS);
        let tree = self.db().open_tree(HISTORY)?;
        let mut removed = 0;
        for (k, e) in self.history_with_keys()? {
            if e.started_ms.saturating_add(keep_ms) <= now_ms {
                tree.remove(k)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.db().flush()?;
        }
        Ok(removed)
    }
}

/// Runs `f` while a background thread drops expired history every `period` (the clock is
/// `now_ms`). The thread ends as soon as `f` returns.
pub fn with_periodic_expiry<T>(
    store: &Store,
    period: Duration,
    now_ms: impl Fn() -> u64 + Sync,
    f: impl FnOnce() -> T,
) -> T {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let now_ms = &now_ms;
        scope.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(period)
            {
                match store.expire_history(now_ms()) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "expired call history removed"),
                    Err(e) => tracing::warn!(error = %e, "cannot expire the call history"),
                }
            }
        });
        let out = f();
        let _ = stop.send(());
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(room: &str, started_ms: u64) -> HistoryEntry {
        HistoryEntry {
            room_id: room.into(),
            peers: vec!["12D3KooWpeer".into()],
            started_ms,
            duration_ms: 60_000,
        }
    }

    #[test]
    fn history_expires_after_the_retention_with_an_injected_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        assert_eq!(s.history_retention_days().expect("r"), 30);
        let t0 = 1_000 * DAY_MS;
        s.record_call(&entry("old", t0)).expect("old");
        s.record_call(&entry("new", t0 + 10 * DAY_MS)).expect("new");
        // 29 days after the first call: both stay.
        assert_eq!(s.expire_history(t0 + 29 * DAY_MS).expect("expire"), 0);
        assert_eq!(s.history().expect("h").len(), 2);
        // 30 days after it: the first goes, the second stays.
        assert_eq!(s.expire_history(t0 + 30 * DAY_MS).expect("expire"), 1);
        let h = s.history().expect("h");
        assert_eq!(h, vec![entry("new", t0 + 10 * DAY_MS)]);
        // A shorter retention applies at once.
        s.set_history_retention_days(5, t0 + 16 * DAY_MS)
            .expect("set");
        assert!(s.history().expect("h").is_empty());
        // 0 keeps nothing at all.
        s.set_history_retention_days(0, t0).expect("set");
        s.record_call(&entry("none", t0)).expect("record");
        assert!(s.history().expect("h").is_empty());
    }

    #[test]
    fn expired_history_is_removed_when_the_store_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            // Long before any real clock reading minus 30 days.
            s.record_call(&entry("ancient", 1_000)).expect("record");
            s.record_call(&entry("today", crate::clock::now_ms()))
                .expect("record");
        }
        let s = Store::open(dir.path()).expect("reopen");
        let rooms: Vec<_> = s
            .history()
            .expect("h")
            .into_iter()
            .map(|e| e.room_id)
            .collect();
        assert_eq!(rooms, vec!["today".to_string()]);
    }

    #[test]
    fn a_long_call_drops_expired_history_periodically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        s.record_call(&entry("old", 0)).expect("record");
        let clock = std::sync::atomic::AtomicU64::new(0);
        let gone = with_periodic_expiry(
            &s,
            Duration::from_millis(20),
            || clock.load(std::sync::atomic::Ordering::SeqCst),
            || {
                // The "call": time passes 31 days; wait (bounded) for the timer to act.
                clock.store(31 * DAY_MS, std::sync::atomic::Ordering::SeqCst);
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::time::Instant::now() < deadline {
                    if s.history().expect("h").is_empty() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                false
            },
        );
        assert!(gone, "the periodic expiry removed the old entry");
    }
}
