//! The account store: one sled database per account, in the data directory.
//!
//! Trees: `meta` (schema version), `identity` (the Ed25519 secret key), `profile` (display
//! name), `rooms` (rooms this account created or joined: id, secret, listen addresses),
//! `settings` (listen addresses, relays, history retention), `history` (calls: room, peers,
//! start, duration). Every write that matters is flushed before the call returns, so a node
//! killed with SIGKILL loses nothing it reported as done.
//!
//! With a passphrase (see [`super::seal`]) the values of `identity`, `profile`, `rooms` and
//! `history` are sealed; `meta/seal` says how. Schema 2 added `history` and sealing; a schema-1
//! store is migrated on open (nothing to convert: it has neither).
//!
//! The data directory is 0700 and every directory and file of the store (sled's files under
//! `db/`) is 0700 or 0600, whatever the umask: set when they are created and fixed on every
//! open and at every close (sled creates snapshot and blob files as it goes).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the store layout; bumped with a migration whenever it changes.
pub const SCHEMA_VERSION: u32 = 2;

const META: &str = "meta";
const IDENTITY: &str = "identity";
const PROFILE: &str = "profile";
const ROOMS: &str = "rooms";
const SETTINGS: &str = "settings";
/// Trees whose values are sealed when the account has a passphrase.
pub const SEALED_TREES: [&str; 4] = [IDENTITY, PROFILE, ROOMS, super::history::HISTORY];
/// Key of the seal record in `meta`.
pub const SEAL_RECORD: &str = "seal";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the account store at {0} is in use by another confab process")]
    Locked(PathBuf),
    #[error("the account store at {path} is corrupt or unreadable: {detail}. It was left untouched: restore it from a backup or an export, or remove it with `confab account delete`")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the account store at {path} was written by a newer confab (schema {found}, this build knows {known}); it was left untouched")]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("no account in {0}: run `confab init` first")]
    NoAccount(PathBuf),
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make {path} private to this user: {source}")]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is malformed: {0}")]
    Record(String),
    #[error("the account in {0} is sealed with a passphrase: give it at the prompt or in CONFAB_PASSPHRASE")]
    PassphraseRequired(PathBuf),
    #[error("wrong passphrase for the account in {0}")]
    WrongPassphrase(PathBuf),
}

/// A room this account knows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredRoom {
    /// Room id, hex.
    pub room_id: String,
    /// Room secret, hex.
    pub secret: String,
    /// Addresses this node listens on for this room (rooms it created).
    #[serde(default)]
    pub listen: Vec<String>,
    /// The full ticket.
    pub ticket: String,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
}

/// Account settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Settings {
    /// Default listen addresses for calls.
    pub listen: Vec<String>,
    /// Relays to use when not publicly reachable.
    pub relays: Vec<String>,
}

pub struct Store {
    // Fields drop in this order: the database closes before `clean` fingerprints its files.
    db: sled::Db,
    dir: PathBuf,
    /// The passphrase key, once [`Store::unlock`] succeeded on a sealed store.
    seal: std::sync::OnceLock<super::seal::SealKey>,
    clean: CleanClose,
}

/// Marks the store as closed cleanly when dropped after the database (see
/// [`super::export::check_before_open`]), once the open has succeeded.
struct CleanClose {
    dir: PathBuf,
    armed: bool,
}

impl Drop for CleanClose {
    fn drop(&mut self) {
        if self.armed {
            super::export::mark_clean_close(&self.dir);
        }
    }
}

/// Mode of the data directory and of every directory of the store.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file of the store.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) as 0700 whatever the umask, or makes an existing one
/// 0700.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    restrict(dir, &meta)
}

/// Makes one directory 0700 or one file 0600. Changes the mode only when it differs: a chmod
/// moves the file's ctime, which the clean-close fingerprint reads. Symlinks are left alone.
#[cfg(unix)]
fn restrict(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let want = if meta.is_dir() {
        DIR_MODE
    } else if meta.is_file() {
        FILE_MODE
    } else {
        return Ok(());
    };
    if meta.permissions().mode() & 0o7777 == want {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _meta: &std::fs::Metadata) -> std::io::Result<()> {
    Ok(())
}

fn restrict_tree(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    restrict(path, &meta)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            restrict_tree(&entry?.path())?;
        }
    }
    Ok(())
}

/// Makes the data directory 0700 and everything under its `db/` 0700 (directories) or 0600
/// (files). Only the store is walked: a data directory that also holds other things keeps
/// them as they are.
pub(crate) fn restrict_store(dir: &Path) -> Result<(), StoreError> {
    let fail = |source| StoreError::Permissions {
        path: dir.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(fail)?;
    restrict(dir, &meta).map_err(fail)?;
    restrict_tree(&dir.join("db")).map_err(fail)
}

/// Whether another process holds the lock on the database in `db_dir`.
fn is_locked(db_dir: &Path) -> bool {
    std::fs::File::open(db_dir.join("db"))
        .map(|f| fs2::FileExt::try_lock_exclusive(&f).is_err())
        .unwrap_or(false)
}

/// How long [`Store::open`] keeps trying while the store's lock is held (500 ms).
///
/// A lock can be held for a moment by no confab at all: the file lock (`flock`) belongs to
/// the open file, and a process that forks — any thread of ours starting a child — hands
/// the child a copy of every open file until the child execs. If that happens while the
/// open's own check holds the lock, the child keeps it for that moment and the real open
/// that follows finds it taken (seen as a spurious "store locked" in the tests, about one
/// open in a hundred under load). Another confab holding the store holds it for seconds or
/// more, and is still reported as [`StoreError::Locked`].
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Store {
    /// Opens (creating if needed) the store in `dir`; a held lock is waited for up to
    /// [`LOCK_WAIT`] before [`StoreError::Locked`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match Self::open_once(dir) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn open_once(dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("db");
        super::export::recover_interrupted_swap(dir);
        restrict_store(dir)?;
        super::export::check_before_open(dir)?;
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked(dir.to_path_buf())
                }
                // sled reports a held lock as a plain IO error: look at the lock itself.
                sled::Error::Io(_) if is_locked(&path) => StoreError::Locked(dir.to_path_buf()),
                sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => {
                    StoreError::Corrupt {
                        path: dir.to_path_buf(),
                        detail: e.to_string(),
                    }
                }
                other => StoreError::Corrupt {
                    path: dir.to_path_buf(),
                    detail: other.to_string(),
                },
            })?;
        // What sled created just now (a new store) gets its modes before anything is written.
        restrict_store(dir)?;
        let mut store = Self {
            db,
            dir: dir.to_path_buf(),
            seal: std::sync::OnceLock::new(),
            clean: CleanClose {
                dir: dir.to_path_buf(),
                armed: false,
            },
        };
        store.check_schema()?;
        super::export::remove_leftovers(dir);
        store.clean.armed = true;
        // Expired history goes on every start (a sealed store: when it is unlocked).
        if !store.is_sealed()? {
            store.expire_history(crate::clock::now_ms())?;
        }
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let meta = self.db.open_tree(META)?;
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                self.db.flush()?;
                Ok(())
            }
            Some(v) => {
                let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    path: self.dir.clone(),
                    detail: "schema version record is malformed".into(),
                })?;
                let found = u32::from_be_bytes(bytes);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::TooNew {
                        path: self.dir.clone(),
                        found,
                        known: SCHEMA_VERSION,
                    });
                }
                if found < SCHEMA_VERSION {
                    // 1 → 2: the `history` tree and sealing are new; a schema-1 store has
                    // neither, so there is nothing to convert.
                    meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                    self.db.flush()?;
                }
                Ok(())
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the account is sealed with a passphrase.
    pub fn is_sealed(&self) -> Result<bool, StoreError> {
        Ok(self.db.open_tree(META)?.contains_key(SEAL_RECORD)?)
    }

    /// The seal record of a sealed store.
    pub fn seal_record(&self) -> Result<Option<super::seal::SealRecord>, StoreError> {
        self.db
            .open_tree(META)?
            .get(SEAL_RECORD)?
            .map(|v| serde_json::from_slice(&v).map_err(|e| StoreError::Record(e.to_string())))
            .transpose()
    }

    /// Whether the sealed records can be read and written now (unsealed, or unlocked).
    pub fn is_unlocked(&self) -> Result<bool, StoreError> {
        Ok(self.seal.get().is_some() || !self.is_sealed()?)
    }

    /// Unlocks a sealed store with its passphrase (a no-op on an unsealed one), then drops
    /// expired history.
    pub fn unlock(&self, passphrase: &str) -> Result<(), StoreError> {
        let Some(record) = self.seal_record()? else {
            return Ok(());
        };
        if self.seal.get().is_none() {
            let key = super::seal::SealKey::unlock(passphrase, &record).map_err(|e| match e {
                super::seal::SealError::WrongPassphrase => {
                    StoreError::WrongPassphrase(self.dir.clone())
                }
                other => StoreError::Corrupt {
                    path: self.dir.clone(),
                    detail: other.to_string(),
                },
            })?;
            let _ = self.seal.set(key);
        }
        self.expire_history(crate::clock::now_ms()).map(|_| ())
    }

    /// Closes without marking the store clean (its database is being swapped out).
    pub(crate) fn forget_clean_close(&mut self) {
        self.clean.armed = false;
    }

    /// Installs the key of a store that was just resealed with it.
    pub(crate) fn install_key(&self, key: super::seal::SealKey) {
        let _ = self.seal.set(key);
    }

    /// Seals a new, empty account with `key` (used by `confab init --passphrase` before
    /// anything is written, so no clear copy ever reaches the disk).
    pub fn seal_empty(
        &self,
        key: super::seal::SealKey,
        record: &super::seal::SealRecord,
    ) -> Result<(), StoreError> {
        for tree in SEALED_TREES {
            if !self.db.open_tree(tree)?.is_empty() {
                return Err(StoreError::Record(format!(
                    "cannot seal a store that already holds {tree} records in place"
                )));
            }
        }
        let json = serde_json::to_vec(record).map_err(|e| StoreError::Record(e.to_string()))?;
        self.db.open_tree(META)?.insert(SEAL_RECORD, json)?;
        self.db.flush()?;
        let _ = self.seal.set(key);
        Ok(())
    }

    /// The value to store for record `key` of `tree`: sealed when the account is.
    pub fn seal_value(&self, tree: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        if let Some(k) = self.seal.get() {
            return Ok(k.seal(tree, key, plain));
        }
        if self.is_sealed()? {
            return Err(StoreError::PassphraseRequired(self.dir.clone()));
        }
        Ok(plain.to_vec())
    }

    /// The clear value of record `key` of `tree`, as stored by [`Store::seal_value`].
    pub fn open_value(&self, tree: &str, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        if let Some(k) = self.seal.get() {
            return k.open(tree, key, stored).map_err(|e| StoreError::Corrupt {
                path: self.dir.clone(),
                detail: format!("{tree} record: {e}"),
            });
        }
        if self.is_sealed()? {
            return Err(StoreError::PassphraseRequired(self.dir.clone()));
        }
        Ok(stored.to_vec())
    }

    /// The identity secret key, if the account was initialised.
    pub fn identity_secret(&self) -> Result<Option<[u8; 32]>, StoreError> {
        match self.db.open_tree(IDENTITY)?.get("ed25519")? {
            None => Ok(None),
            Some(v) => {
                let v = zeroize::Zeroizing::new(self.open_value(IDENTITY, b"ed25519", &v)?);
                let key: [u8; 32] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    path: self.dir.clone(),
                    detail: "identity key has the wrong length".into(),
                })?;
                Ok(Some(key))
            }
        }
    }

    /// The identity secret key, or a clear error telling the user to run `confab init`.
    pub fn require_identity(&self) -> Result<[u8; 32], StoreError> {
        self.identity_secret()?
            .ok_or_else(|| StoreError::NoAccount(self.dir.clone()))
    }

    /// Stores the identity key (only if none exists). Returns whether it was stored.
    pub fn set_identity_if_absent(&self, secret: &[u8; 32]) -> Result<bool, StoreError> {
        let tree = self.db.open_tree(IDENTITY)?;
        let value = self.seal_value(IDENTITY, b"ed25519", secret)?;
        let stored = tree
            .compare_and_swap("ed25519", None as Option<&[u8]>, Some(value))?
            .is_ok();
        self.db.flush()?;
        Ok(stored)
    }

    pub fn name(&self) -> Result<Option<String>, StoreError> {
        self.db
            .open_tree(PROFILE)?
            .get("name")?
            .map(|v| {
                let v = self.open_value(PROFILE, b"name", &v)?;
                String::from_utf8(v).map_err(|_| StoreError::Record("name".into()))
            })
            .transpose()
    }

    pub fn set_name(&self, name: &str) -> Result<(), StoreError> {
        let value = self.seal_value(PROFILE, b"name", name.as_bytes())?;
        self.db.open_tree(PROFILE)?.insert("name", value)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn put_room(&self, room: &StoredRoom) -> Result<(), StoreError> {
        let json = serde_json::to_vec(room).map_err(|e| StoreError::Record(e.to_string()))?;
        let value = self.seal_value(ROOMS, room.room_id.as_bytes(), &json)?;
        self.db
            .open_tree(ROOMS)?
            .insert(room.room_id.as_bytes(), value)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn room(&self, room_id_hex: &str) -> Result<Option<StoredRoom>, StoreError> {
        self.db
            .open_tree(ROOMS)?
            .get(room_id_hex.as_bytes())?
            .map(|v| {
                let v = self.open_value(ROOMS, room_id_hex.as_bytes(), &v)?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Record(e.to_string()))
            })
            .transpose()
    }

    pub fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError> {
        self.db
            .open_tree(ROOMS)?
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let v = self.open_value(ROOMS, &k, &v)?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Record(e.to_string()))
            })
            .collect()
    }

    pub fn settings(&self) -> Result<Settings, StoreError> {
        match self.db.open_tree(SETTINGS)?.get("settings")? {
            None => Ok(Settings::default()),
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Record(e.to_string())),
        }
    }

    pub fn set_settings(&self, s: &Settings) -> Result<(), StoreError> {
        let json = serde_json::to_vec(s).map_err(|e| StoreError::Record(e.to_string()))?;
        self.db.open_tree(SETTINGS)?.insert("settings", json)?;
        self.db.flush()?;
        Ok(())
    }

    /// The underlying database, for modules that keep their own trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_set_once_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            assert!(s.identity_secret().expect("read").is_none());
            assert!(s.set_identity_if_absent(&[7; 32]).expect("set"));
            assert!(!s.set_identity_if_absent(&[8; 32]).expect("set again"));
            s.set_name("ada").expect("name");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.identity_secret().expect("read"), Some([7; 32]));
        assert_eq!(s.name().expect("name").as_deref(), Some("ada"));
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_is_alive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Store::open(dir.path()).expect("open");
        match Store::open(dir.path()) {
            Err(StoreError::Locked(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            s.db.open_tree(META)
                .expect("meta")
                .insert("schema_version", &99u32.to_be_bytes())
                .expect("insert");
            s.db.flush().expect("flush");
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { found: 99, .. })
        ));
        // Still 99: nothing was overwritten.
        let db = sled::open(dir.path().join("db")).expect("raw open");
        let v = db
            .open_tree(META)
            .expect("meta")
            .get("schema_version")
            .expect("get")
            .expect("present");
        assert_eq!(v.as_ref(), &99u32.to_be_bytes());
    }

    #[test]
    fn rooms_and_settings_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let room = StoredRoom {
            room_id: "ab".into(),
            secret: "cd".into(),
            listen: vec!["/ip4/127.0.0.1/tcp/1".into()],
            ticket: "confab1x".into(),
            created_ms: 5,
        };
        s.put_room(&room).expect("put");
        assert_eq!(s.room("ab").expect("get"), Some(room.clone()));
        assert_eq!(s.rooms().expect("list"), vec![room]);
        let settings = Settings {
            listen: vec!["/ip4/0.0.0.0/tcp/4701".into()],
            relays: vec![],
        };
        s.set_settings(&settings).expect("set");
        assert_eq!(s.settings().expect("get"), settings);
    }
}
