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

/// Copies the store `from` into a new private directory `to` (0700, files 0600).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    super::store::create_private_dir(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        let kind = e.file_type()?;
        if kind.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(e.path(), &target)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::Permissions::from_mode(super::store::FILE_MODE);
                std::fs::set_permissions(&target, mode)?;
            }
        }
    }
    Ok(())
}

/// The file in `db/` that says the store was closed cleanly, and how its files looked then.
const CLEAN_MARK: &str = "confab-clean";
/// First line of [`CLEAN_MARK`].
const CLEAN_MARK_V1: &str = "confab-clean-v1";
/// A fingerprint longer than this is not one confab wrote.
const CLEAN_MARK_MAX: u64 = 64 * 1024;

/// One line per file and directory under `db` (the mark itself left out): path, mode, inode,
/// and for files size, mtime and ctime to the nanosecond. A write, a truncation, a replaced,
/// added or removed file, a `touch` — any of them changes it (ctime cannot be set back by a
/// user). Directories' own times are left out: writing the mark changes them.
fn fingerprint(db: &Path) -> std::io::Result<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            if rel.as_os_str() == CLEAN_MARK {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)?;
            out.push(format!("{} {}", rel.display(), describe(&meta)));
            if meta.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut lines = Vec::new();
    walk(db, db, &mut lines)?;
    lines.sort();
    Ok(format!("{CLEAN_MARK_V1}\n{}\n", lines.join("\n")))
}

#[cfg(unix)]
fn describe(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    if m.is_dir() {
        return format!("{:o} {} {}", m.mode(), m.dev(), m.ino());
    }
    format!(
        "{:o} {} {} {} {}.{:09} {}.{:09}",
        m.mode(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

#[cfg(not(unix))]
fn describe(m: &std::fs::Metadata) -> String {
    format!("{} {} {:?}", m.is_dir(), m.len(), m.modified().ok())
}

/// After the store's database is closed: records that it was closed cleanly, and how its
/// files look, so that the next open can skip the damaged-store check. Best effort: if the
/// mark cannot be written, the next open checks.
pub(crate) fn mark_clean_close(dir: &Path) {
    let db = dir.join("db");
    let mark = db.join(CLEAN_MARK);
    // Files sled made while the store was open (snapshots, blobs) get their modes first:
    // a chmod after the fingerprint would change it.
    let print = super::store::restrict_store(dir)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|()| fingerprint(&db));
    let Ok(print) = print else {
        let _ = std::fs::remove_file(&mark);
        return;
    };
    // Unchanged (an open that wrote nothing): the mark stays as it is, byte for byte.
    if read_mark(&mark).as_deref() == Some(print.as_str()) {
        return;
    }
    let _ = std::fs::remove_file(&mark);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, super::store::FILE_MODE);
    let written = options.open(&mark).and_then(|mut f| {
        std::io::Write::write_all(&mut f, print.as_bytes())?;
        f.sync_all()
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&mark);
    }
}

/// The mark's text, if it is a plain file of a sane size.
fn read_mark(mark: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(mark).ok()?;
    if !meta.is_file() || meta.len() > CLEAN_MARK_MAX {
        return None;
    }
    std::fs::read_to_string(mark).ok()
}

/// Whether `db` was closed cleanly by confab and not touched since.
fn closed_cleanly(db: &Path) -> bool {
    match (read_mark(&db.join(CLEAN_MARK)), fingerprint(db)) {
        (Some(recorded), Ok(now)) => recorded == now,
        _ => false,
    }
}

/// How [`check_before_open`] judged the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// There is no store yet.
    New,
    /// Closed cleanly by confab and unchanged since: not copied.
    CleanClose,
    /// A copy was opened and found sound.
    Copied,
}

/// Before sled opens an existing `dir/db`: sled repairs a damaged database silently on
/// open (a truncated or overwritten log loses records, a damaged `conf` is rewritten), so
/// the check opens a copy first. The store is refused, untouched, when opening the copy
/// fails, rewrites its `conf`, or loses the schema version that every store has.
///
/// The copy is skipped when the store was closed cleanly by confab and none of its files
/// changed since (the `db/confab-clean` fingerprint of sizes, inodes, mtimes and ctimes,
/// written after the database closed); after a crash, a kill, or any change made from
/// outside, the copy is made. Everything runs under the store's lock, so a store being
/// written is never mistaken for damaged, and the copies that a crashed check left are
/// removed first.
pub fn check_before_open(dir: &Path) -> Result<Checked, StoreError> {
    let db = dir.join("db");
    if !db.exists() {
        return Ok(Checked::New);
    }
    let corrupt = |detail: String| StoreError::Corrupt {
        path: dir.to_path_buf(),
        detail,
    };
    let _lock = match std::fs::File::open(db.join("db")) {
        Ok(f) => {
            if fs2::FileExt::try_lock_exclusive(&f).is_err() {
                return Err(StoreError::Locked(dir.to_path_buf()));
            }
            Some(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(corrupt(format!("cannot read db/db: {e}"))),
    };
    remove_prefixed(dir, &[CHECK]);
    if closed_cleanly(&db) {
        return Ok(Checked::CleanClose);
    }
    let check = dir.join(format!("{CHECK}{}", random_suffix()));
    let result = (|| {
        copy_dir(&db, &check).map_err(|e| corrupt(format!("cannot read the store: {e}")))?;
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
            Some(v) if v.len() == 4 => Ok(Checked::Copied),
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

/// After the store's lock is taken: removes what an interrupted delete, reseal or check
/// left.
pub fn remove_leftovers(dir: &Path) {
    remove_prefixed(dir, &[DELETING, REWRITE, OLD, CHECK]);
}

fn remove_prefixed(dir: &Path, prefixes: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p)) {
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
pub fn reseal(mut store: Store, how: Reseal) -> Result<Store, AccountError> {
    if !store.is_unlocked()? {
        return Err(StoreError::PassphraseRequired(store.dir().to_path_buf()).into());
    }
    let dir = store.dir().to_path_buf();
    let fresh_path = dir.join(format!("{REWRITE}{}", random_suffix()));
    let io = |e: std::io::Error| AccountError::Io(e.to_string());
    {
        // Private before sled puts anything in it.
        super::store::create_private_dir(&fresh_path).map_err(io)?;
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
    // Its database is now `old_path`: no clean-close mark for the fresh one.
    store.forget_clean_close();
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

    /// JSON values that look more or less like an export document, so that the decoder gets
    /// past its first checks: the known keys with values of any type, nested.
    fn export_like() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            Just(Value::from(EXPORT_FORMAT)),
            Just(Value::from(1u64)),
            "[0-9a-f]{0,70}".prop_map(Value::from),
            ".{0,80}".prop_map(Value::from),
        ];
        let value = leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        proptest::collection::btree_map(key(), value, 0..12).prop_map(|m| {
            let mut o: serde_json::Map<String, Value> = m.into_iter().collect();
            o.entry("format")
                .or_insert_with(|| Value::from(EXPORT_FORMAT));
            o.entry("version").or_insert_with(|| Value::from(1u64));
            Value::Object(o)
        })
    }

    fn key() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::sample::select(vec![
                "format",
                "version",
                "exported_ms",
                "peer_id",
                "secret_key",
                "name",
                "rooms",
                "settings",
                "history_retention_days",
                "history",
                "room_id",
                "secret",
                "listen",
                "ticket",
                "created_ms",
                "relays",
                "peers",
                "started_ms",
                "duration_ms",
            ])
            .prop_map(str::to_owned),
            ".{0,12}",
        ]
    }

    /// The decoder's property: any input gives a document or an error, never a panic, and a
    /// document it accepts is one it accepts again after a round trip.
    fn decodes_without_panic(text: &str) {
        if let Ok(doc) = parse_export(text) {
            let again = serde_json::to_string(&doc).expect("serialize");
            assert_eq!(parse_export(&again).expect("round trip"), doc);
        }
    }

    fn cases(default: u32) -> u32 {
        std::env::var("CONFAB_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn run_decoder_property(n: u32) {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let mut runner = TestRunner::new(Config {
            cases: n,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = prop_oneof![
            ".{0,200}",
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            export_like().prop_map(|v| v.to_string()),
            // A valid document with one byte changed.
            (export_like(), any::<proptest::sample::Index>(), any::<u8>()).prop_map(
                |(v, at, b)| {
                    let mut bytes = v.to_string().into_bytes();
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                    String::from_utf8_lossy(&bytes).into_owned()
                }
            ),
        ];
        runner
            .run(&strategy, |text| {
                decodes_without_panic(&text);
                Ok(())
            })
            .expect("the export decoder never panics");
    }

    #[test]
    fn the_export_decoder_never_panics() {
        run_decoder_property(cases(2_000));
    }

    /// The long run: `cargo test --release -p confab-node --lib -- --ignored
    /// export_decoder_long_run` (100k cases; `CONFAB_PROPTEST_CASES` sets another count).
    #[test]
    #[ignore = "long run: 100k cases"]
    fn export_decoder_long_run() {
        run_decoder_property(cases(100_000));
    }

    #[test]
    fn a_real_export_and_deep_nesting_decode_without_panic() {
        let doc = AccountExport {
            format: EXPORT_FORMAT.into(),
            version: 1,
            exported_ms: 5,
            peer_id: peer_id_of(&[3; 32]).expect("pid"),
            secret_key: Some(hex(&[3; 32])),
            name: Some("ada".into()),
            rooms: vec![],
            settings: Settings::default(),
            history_retention_days: 30,
            history: vec![],
        };
        let text = serde_json::to_string(&doc).expect("json");
        assert_eq!(parse_export(&text).expect("parse"), doc);
        decodes_without_panic(&"[".repeat(100_000));
        decodes_without_panic(&format!("{{\"format\":{}", "[".repeat(100_000)));
        // A multi-byte character where the hex key is split into pairs.
        let odd = text.replace(&hex(&[3; 32]), &format!("é{}", &hex(&[3; 32])[2..]));
        decodes_without_panic(&odd);
    }

    #[test]
    fn a_clean_close_skips_the_copy_and_any_change_brings_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert_eq!(check_before_open(d).expect("new"), Checked::New);
        {
            let s = Store::open(d).expect("open");
            s.set_name("ada").expect("name");
        }
        assert_eq!(check_before_open(d).expect("clean"), Checked::CleanClose);
        // Opened and closed again, still clean; nothing left beside the store.
        drop(Store::open(d).expect("reopen"));
        assert_eq!(check_before_open(d).expect("clean"), Checked::CleanClose);
        // Any change from outside (here: the same bytes written again) means a full check.
        let conf = std::fs::read(d.join("db/conf")).expect("conf");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.join("db/conf"), conf).expect("rewrite");
        assert_eq!(check_before_open(d).expect("copied"), Checked::Copied);
        // While a store is open and written (what a crash leaves), its mark no longer fits.
        let s = Store::open(d).expect("open");
        s.set_name("bob").expect("name");
        assert!(!closed_cleanly(&d.join("db")));
        drop(s);
        assert!(closed_cleanly(&d.join("db")));
    }

    #[test]
    fn a_check_copy_left_by_a_crash_is_removed_at_the_next_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        drop(Store::open(d).expect("open"));
        let left = d.join(format!("{CHECK}deadbeef"));
        copy_dir(&d.join("db"), &left).expect("copy");
        // Even when the open then fails (the store is refused as damaged).
        std::fs::write(d.join("db/db"), b"").expect("damage");
        assert!(matches!(Store::open(d), Err(StoreError::Corrupt { .. })));
        assert!(!left.exists(), "the leftover copy was removed");
        let names: Vec<_> = std::fs::read_dir(d)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("db")]);
    }
}
