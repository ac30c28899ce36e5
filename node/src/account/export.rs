//! The account lifecycle on the local store: export, import, delete, and (re)sealing with a
//! passphrase.
//!
//! * Export is a JSON document, [`AccountExport`] (`{"format":"confab-account","version":1,…}`,
//!   documented in `docs/privacy.md`). The secret key is in it only when asked for.
//! * Import reads the whole document and checks it before it touches the store; a document
//!   from a newer confab is refused. An account that already exists is replaced only with
//!   `force`, and then the old one is deleted first (never merged).
//! * Delete takes the store's lock itself (a running node holds it, so delete is refused while
//!   a call runs), moves the database aside in one rename, and removes it; nothing of the
//!   account remains under the data directory.
//! * Sealing, changing or removing the passphrase rewrites the database into a fresh one and
//!   swaps it in, so no clear (or old-key) copy of a record survives in sled's log.

use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::history::HistoryEntry;
use super::seal::{SealKey, SealRecord};
use super::store::{Settings, Store, StoreError, StoredRoom, SEALED_TREES, SEAL_RECORD};

/// `format` of an export document.
pub const EXPORT_FORMAT: &str = "confab-account";
/// The export version this build writes and the newest it reads.
pub const EXPORT_VERSION: u64 = 1;

/// Prefixes of the directories that a delete or a reseal leaves for a moment.
const DELETING: &str = "db.deleting-";
const REWRITE: &str = "db.rewrite-";
const OLD: &str = "db.old-";
const CHECK: &str = "db.check-";

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("not a confab account export: {0}")]
    NotAnExport(String),
    #[error("this export is format version {found}, written by a newer confab; this build reads version {known}. Nothing was imported")]
    NewerExport { found: u64, known: u64 },
    #[error("the data directory {0} already holds an account; nothing was imported. Delete it first (`confab account delete`) or pass --force to replace it")]
    AccountExists(PathBuf),
    #[error("no account in {0}; nothing to delete")]
    NoAccount(PathBuf),
    #[error("the account in {0} is in use by a running confab (a call?); stop it first. Nothing was deleted")]
    InUse(PathBuf),
    #[error("{0}")]
    Io(String),
}

/// The export document, version 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountExport {
    /// Always `confab-account`.
    pub format: String,
    /// Always 1 for this layout.
    pub version: u64,
    /// When the export was made, ms since the Unix epoch.
    pub exported_ms: u64,
    /// The account's libp2p peer id.
    pub peer_id: String,
    /// The Ed25519 secret key, hex; only with `--include-secret-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub rooms: Vec<StoredRoom>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default = "default_retention")]
    pub history_retention_days: u32,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

fn default_retention() -> u32 {
    super::history::DEFAULT_RETENTION_DAYS
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn peer_id_of(secret: &[u8; 32]) -> Result<String, AccountError> {
    crate::net::keypair(secret)
        .map(|k| k.public().to_peer_id().to_string())
        .map_err(|e| AccountError::Io(e.to_string()))
}

/// The export document of an (unlocked) account.
pub fn export(
    store: &Store,
    include_secret_key: bool,
    now_ms: u64,
) -> Result<AccountExport, AccountError> {
    let secret = zeroize::Zeroizing::new(store.require_identity()?);
    Ok(AccountExport {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        exported_ms: now_ms,
        peer_id: peer_id_of(&secret)?,
        secret_key: include_secret_key.then(|| hex(secret.as_ref())),
        name: store.name()?,
        rooms: store.rooms()?,
        settings: store.settings()?,
        history_retention_days: store.history_retention_days()?,
        history: store.history()?,
    })
}

/// Parses and checks an export document: format, version (a newer one is refused), and that
/// the secret key, if present, belongs to the peer id.
pub fn parse_export(text: &str) -> Result<AccountExport, AccountError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| AccountError::NotAnExport(format!("invalid JSON: {e}")))?;
    if v.get("format").and_then(Value::as_str) != Some(EXPORT_FORMAT) {
        return Err(AccountError::NotAnExport(format!(
            "\"format\" is not \"{EXPORT_FORMAT}\""
        )));
    }
    let version = v
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| AccountError::NotAnExport("\"version\" is missing".into()))?;
    if version > EXPORT_VERSION {
        return Err(AccountError::NewerExport {
            found: version,
            known: EXPORT_VERSION,
        });
    }
    let doc: AccountExport =
        serde_json::from_value(v).map_err(|e| AccountError::NotAnExport(e.to_string()))?;
    if let Some(k) = &doc.secret_key {
        let secret =
            unhex32(k).ok_or_else(|| AccountError::NotAnExport("bad \"secret_key\"".into()))?;
        if peer_id_of(&secret)? != doc.peer_id {
            return Err(AccountError::NotAnExport(
                "\"secret_key\" does not belong to \"peer_id\"".into(),
            ));
        }
    }
    if let Some(n) = &doc.name {
        if n.len() > confab_protocol::wire::MAX_NAME {
            return Err(AccountError::NotAnExport("\"name\" is too long".into()));
        }
    }
    Ok(doc)
}

/// Whether `dir` holds an account (a database with an identity), without opening it.
pub fn has_store(dir: &Path) -> bool {
    dir.join("db").exists()
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    pub peer_id: String,
    /// The export had no secret key, so a new identity was made.
    pub new_identity: bool,
    pub replaced: bool,
}

/// Imports `doc` into `dir`. `seal` seals the new account with a passphrase key.
pub fn import(
    dir: &Path,
    doc: &AccountExport,
    force: bool,
    seal: Option<(SealKey, SealRecord)>,
    now_ms: u64,
) -> Result<Imported, AccountError> {
    let mut replaced = false;
    if has_store(dir) {
        let store = Store::open(dir)?;
        let has_identity = store
            .db()
            .open_tree("identity")
            .and_then(|t| t.contains_key("ed25519"))
            .map_err(StoreError::from)?;
        if has_identity {
            if !force {
                return Err(AccountError::AccountExists(dir.to_path_buf()));
            }
            drop(store);
            delete(dir)?;
            replaced = true;
        }
    }
    let store = Store::open(dir)?;
    if let Some((key, record)) = seal {
        store.seal_empty(key, &record)?;
    }
    let (secret, new_identity) = match &doc.secret_key {
        Some(k) => (
            unhex32(k).ok_or_else(|| AccountError::NotAnExport("bad \"secret_key\"".into()))?,
            false,
        ),
        None => {
            let mut s = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut s);
            (s, true)
        }
    };
    let secret = zeroize::Zeroizing::new(secret);
    store.set_identity_if_absent(&secret)?;
    if let Some(n) = &doc.name {
        store.set_name(n)?;
    }
    for r in &doc.rooms {
        store.put_room(r)?;
    }
    store.set_settings(&doc.settings)?;
    store.set_history_retention_days(doc.history_retention_days, now_ms)?;
    for e in &doc.history {
        store.record_call(e)?;
    }
    store.expire_history(now_ms)?;
    Ok(Imported {
        peer_id: peer_id_of(&secret)?,
        new_identity,
        replaced,
    })
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex(&b)
}

/// Takes the store's lock as sled does (an exclusive `flock` on `db/db`), without opening
/// the database, so that even a corrupt store can be deleted, but never one in use.
fn lock_store(dir: &Path) -> Result<Option<std::fs::File>, AccountError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .open(dir.join("db").join("db"))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AccountError::Io(format!("cannot open the store: {e}"))),
    };
    fs2::FileExt::try_lock_exclusive(&file).map_err(|_| AccountError::InUse(dir.to_path_buf()))?;
    Ok(Some(file))
}

/// Checks that the account in `dir` exists and is not in use; holding the returned guard
/// keeps it so until [`delete_locked`].
pub fn lock_for_delete(dir: &Path) -> Result<Option<std::fs::File>, AccountError> {
    if !has_store(dir) {
        return Err(AccountError::NoAccount(dir.to_path_buf()));
    }
    lock_store(dir)
}

/// Deletes the account in `dir`: refused while a node holds the store.
pub fn delete(dir: &Path) -> Result<(), AccountError> {
    let guard = lock_for_delete(dir)?;
    delete_locked(dir, guard)
}

/// Deletes the account whose lock is held: one rename moves the whole database out of the
/// way (so no process can ever open half of it), then it is removed, then the data
/// directory itself if nothing else is in it.
pub fn delete_locked(dir: &Path, guard: Option<std::fs::File>) -> Result<(), AccountError> {
    let tomb = dir.join(format!("{DELETING}{}", random_suffix()));
    std::fs::rename(dir.join("db"), &tomb)
        .map_err(|e| AccountError::Io(format!("cannot delete the account: {e}")))?;
    drop(guard);
    std::fs::remove_dir_all(&tomb).map_err(|e| {
        AccountError::Io(format!(
            "the account is gone from use, but {} could not be removed: {e}",
            tomb.display()
        ))
    })?;
    remove_leftovers(dir);
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// Before sled opens an existing `dir/db`: sled repairs a damaged database silently on
/// open (a truncated or overwritten log loses records, a damaged `conf` is rewritten), so
/// the check opens a copy first. The store is refused, untouched, when opening the copy
/// fails, rewrites its `conf`, or loses the schema version that every store has.
pub fn check_before_open(dir: &Path) -> Result<(), StoreError> {
    let db = dir.join("db");
    if !db.exists() {
        return Ok(());
    }
    let corrupt = |detail: String| StoreError::Corrupt {
        path: dir.to_path_buf(),
        detail,
    };
    // Copy under the store's lock, so a store being written is not mistaken for damaged.
    let lock = match std::fs::File::open(db.join("db")) {
        Ok(f) => {
            if fs2::FileExt::try_lock_exclusive(&f).is_err() {
                return Err(StoreError::Locked(dir.to_path_buf()));
            }
            Some(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(corrupt(format!("cannot read db/db: {e}"))),
    };
    let check = dir.join(format!("{CHECK}{}", random_suffix()));
    let copied = copy_dir(&db, &check);
    drop(lock);
    let result = (|| {
        copied.map_err(|e| corrupt(format!("cannot read the store: {e}")))?;
        let conf_before = std::fs::read(check.join("conf")).ok();
        let opened = sled::Config::new()
            .path(&check)
            .open()
            .map_err(|e| corrupt(e.to_string()))?;
        let version = opened
            .open_tree("meta")
            .and_then(|t| t.get("schema_version"))
            .map_err(|e| corrupt(e.to_string()))?;
        drop(opened);
        if std::fs::read(check.join("conf")).ok() != conf_before {
            return Err(corrupt("its configuration file db/conf is damaged".into()));
        }
        match version {
            Some(v) if v.len() == 4 => Ok(()),
            Some(_) => Err(corrupt("the schema version record is malformed".into())),
            None => Err(corrupt(
                "its records are unreadable (the database file db/db is truncated or damaged)"
                    .into(),
            )),
        }
    })();
    let _ = std::fs::remove_dir_all(&check);
    result
}

/// Before sled opens `dir/db`: if a reseal stopped between its two renames (no `db`, an
/// `db.old-*` present), put the old database back.
pub fn recover_interrupted_swap(dir: &Path) {
    if dir.join("db").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(OLD) {
            let _ = std::fs::rename(e.path(), dir.join("db"));
            return;
        }
    }
}

/// After the store's lock is taken: removes what an interrupted delete or reseal left.
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if [DELETING, REWRITE, OLD, CHECK]
            .iter()
            .any(|p| name.starts_with(p))
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// How [`reseal`] stores the sealed records.
pub enum Reseal {
    /// With the current passphrase key (to compact the log after removing records).
    Keep,
    /// In clear (the passphrase is removed).
    Clear,
    /// With a new key.
    New(SealKey, SealRecord),
}

/// Rewrites the (unlocked) account into a fresh database sealed as `how` says, swaps it in
/// and removes the old one, so that nothing removed or re-keyed survives in sled's log.
/// Returns the reopened store (unlocked unless `how` is [`Reseal::Keep`]).
pub fn reseal(store: Store, how: Reseal) -> Result<Store, AccountError> {
    if !store.is_unlocked()? {
        return Err(StoreError::PassphraseRequired(store.dir().to_path_buf()).into());
    }
    let dir = store.dir().to_path_buf();
    let fresh_path = dir.join(format!("{REWRITE}{}", random_suffix()));
    let io = |e: std::io::Error| AccountError::Io(e.to_string());
    {
        let fresh = sled::Config::new()
            .path(&fresh_path)
            .open()
            .map_err(StoreError::from)?;
        for name in store.db().tree_names() {
            let tree_name = String::from_utf8_lossy(&name).into_owned();
            let from = store.db().open_tree(&name).map_err(StoreError::from)?;
            let to = fresh.open_tree(&name).map_err(StoreError::from)?;
            let sealed = SEALED_TREES.contains(&tree_name.as_str());
            for kv in from.iter() {
                let (k, v) = kv.map_err(StoreError::from)?;
                if tree_name == "meta" && k.as_ref() == SEAL_RECORD.as_bytes() {
                    continue;
                }
                let value = if sealed {
                    let plain = zeroize::Zeroizing::new(store.open_value(&tree_name, &k, &v)?);
                    match &how {
                        Reseal::New(key, _) => key.seal(&tree_name, &k, &plain),
                        Reseal::Keep => store.seal_value(&tree_name, &k, &plain)?,
                        Reseal::Clear => plain.to_vec(),
                    }
                } else {
                    v.to_vec()
                };
                to.insert(k, value).map_err(StoreError::from)?;
            }
        }
        let record = match &how {
            Reseal::New(_, record) => Some(record.clone()),
            Reseal::Keep => store.seal_record()?,
            Reseal::Clear => None,
        };
        if let Some(record) = record {
            let json = serde_json::to_vec(&record).map_err(|e| AccountError::Io(e.to_string()))?;
            fresh
                .open_tree("meta")
                .and_then(|t| t.insert(SEAL_RECORD, json))
                .map_err(StoreError::from)?;
        }
        fresh.flush().map_err(StoreError::from)?;
    }
    let old_path = dir.join(format!("{OLD}{}", random_suffix()));
    std::fs::rename(dir.join("db"), &old_path).map_err(io)?;
    if let Err(e) = std::fs::rename(&fresh_path, dir.join("db")) {
        // Put the old database back; the account is unchanged.
        let _ = std::fs::rename(&old_path, dir.join("db"));
        let _ = std::fs::remove_dir_all(&fresh_path);
        return Err(io(e));
    }
    drop(store);
    std::fs::remove_dir_all(&old_path).map_err(io)?;
    let reopened = Store::open(&dir)?;
    if let Reseal::New(key, _) = how {
        reopened.install_key(key);
    }
    Ok(reopened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_from_a_newer_version_is_refused_with_a_clear_error() {
        let doc = r#"{"format":"confab-account","version":2,"peer_id":"x","future":true}"#;
        let e = parse_export(doc).expect_err("newer");
        assert!(matches!(
            e,
            AccountError::NewerExport { found: 2, known: 1 }
        ));
        assert!(e.to_string().contains("newer confab"), "{e}");
        assert!(matches!(
            parse_export(r#"{"format":"other","version":1}"#),
            Err(AccountError::NotAnExport(_))
        ));
        assert!(matches!(
            parse_export("{not json"),
            Err(AccountError::NotAnExport(_))
        ));
    }

    #[test]
    fn a_secret_key_of_another_peer_is_refused() {
        let doc = AccountExport {
            format: EXPORT_FORMAT.into(),
            version: 1,
            exported_ms: 0,
            peer_id: peer_id_of(&[1; 32]).expect("pid"),
            secret_key: Some(hex(&[2; 32])),
            name: None,
            rooms: vec![],
            settings: Settings::default(),
            history_retention_days: 30,
            history: vec![],
        };
        let text = serde_json::to_string(&doc).expect("json");
        assert!(matches!(
            parse_export(&text),
            Err(AccountError::NotAnExport(_))
        ));
    }
}
