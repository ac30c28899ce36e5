//! Passphrase sealing of account records: Argon2id turns the passphrase into a key,
//! XChaCha20-Poly1305 seals each record.
//!
//! A sealed store keeps one clear record, `meta/seal` ([`SealRecord`]): the Argon2id
//! parameters, the salt, and a check value (a known plaintext sealed with the key) that tells
//! a wrong passphrase from a damaged record. Every sealed value is
//! `version u8 = 1 ‖ nonce [24] ‖ ciphertext ‖ tag [16]`, with the tree name and the record
//! key as associated data, so a sealed value cannot be moved to another record unnoticed.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Version byte at the start of every sealed value.
const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const CHECK_AAD: &[u8] = b"confab-seal-check-v1";
const CHECK_PLAINTEXT: &[u8] = b"confab";

/// Environment variable that scripts use to give the passphrase.
pub const PASSPHRASE_ENV: &str = "CONFAB_PASSPHRASE";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("a sealed record does not decrypt (damaged, or moved from another record)")]
    Damaged,
    #[error("invalid key derivation parameters: {0}")]
    Params(String),
    #[error("the passphrase is empty")]
    EmptyPassphrase,
}

/// Bounds on the Argon2id cost that [`SealKey::unlock`] accepts from a seal record (which is
/// stored in clear, so whoever can write the data directory chooses it) and that
/// [`SealKey::create`] writes. They keep an unlock within a few hundred MiB and seconds; the
/// default cost sits well inside.
pub const MIN_M_KIB: u32 = 8 * 1024;
/// At most 256 MiB of memory.
pub const MAX_M_KIB: u32 = 256 * 1024;
/// At most 16 passes.
pub const MAX_T: u32 = 16;
/// At most 8 lanes.
pub const MAX_P: u32 = 8;
/// At most this much work (memory in KiB times passes): 1 GiB·pass, 16 times the default.
pub const MAX_WORK_KIB: u64 = 1024 * 1024;
/// Salt length in bytes.
const SALT_LEN: usize = 16;

/// Refuses an Argon2id cost outside the bounds, with the reason.
pub fn check_cost(cost: Cost) -> Result<(), SealError> {
    let bad = |what: String| Err(SealError::Params(what));
    if !(MIN_M_KIB..=MAX_M_KIB).contains(&cost.m_kib) {
        return bad(format!(
            "memory {} KiB is outside {MIN_M_KIB}..={MAX_M_KIB} KiB",
            cost.m_kib
        ));
    }
    if !(1..=MAX_T).contains(&cost.t) {
        return bad(format!("{} passes is outside 1..={MAX_T}", cost.t));
    }
    if !(1..=MAX_P).contains(&cost.p) {
        return bad(format!("{} lanes is outside 1..={MAX_P}", cost.p));
    }
    if u64::from(cost.m_kib) * u64::from(cost.t) > MAX_WORK_KIB {
        return bad(format!(
            "memory × passes = {} KiB is over {MAX_WORK_KIB} KiB",
            u64::from(cost.m_kib) * u64::from(cost.t)
        ));
    }
    Ok(())
}

/// Refuses a passphrase that is empty or only white space.
pub fn check_new_passphrase(passphrase: &str) -> Result<(), SealError> {
    if passphrase.trim().is_empty() {
        return Err(SealError::EmptyPassphrase);
    }
    Ok(())
}

/// The clear record that describes how a store is sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealRecord {
    /// Always `argon2id`.
    pub kdf: String,
    /// Argon2 memory cost in KiB.
    pub m_kib: u32,
    /// Argon2 iterations.
    pub t: u32,
    /// Argon2 lanes.
    pub p: u32,
    /// Salt, hex.
    pub salt: String,
    /// `CHECK_PLAINTEXT` sealed with the key, hex.
    pub check: String,
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for Cost {
    /// 64 MiB, 3 passes, 1 lane: about a quarter of a second on a laptop.
    fn default() -> Self {
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

/// A key derived from a passphrase. Wiped from memory when dropped.
pub struct SealKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn derive(passphrase: &str, salt: &[u8], cost: Cost) -> Result<SealKey, SealError> {
    let params = Params::new(cost.m_kib, cost.t, cost.p, Some(32))
        .map_err(|e| SealError::Params(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|e| SealError::Params(e.to_string()))?;
    Ok(SealKey { key })
}

/// Associated data of a record: the tree and the key it belongs to.
fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + tree.len() + key.len());
    v.extend_from_slice(b"confab-seal-v1\0");
    v.extend_from_slice(tree.as_bytes());
    v.push(0);
    v.extend_from_slice(key);
    v
}

impl SealKey {
    /// A new key for `passphrase` with a fresh random salt, and the record that describes it.
    /// An empty passphrase and a cost outside the bounds ([`check_cost`]) are refused.
    pub fn create(passphrase: &str, cost: Cost) -> Result<(SealKey, SealRecord), SealError> {
        check_new_passphrase(passphrase)?;
        check_cost(cost)?;
        let mut salt = [0u8; SALT_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let key = derive(passphrase, &salt, cost)?;
        let check = key.seal_raw(CHECK_AAD, CHECK_PLAINTEXT);
        let record = SealRecord {
            kdf: "argon2id".into(),
            m_kib: cost.m_kib,
            t: cost.t,
            p: cost.p,
            salt: hex(&salt),
            check: hex(&check),
        };
        Ok((key, record))
    }

    /// The key for `passphrase` under `record`, or [`SealError::WrongPassphrase`]. The
    /// record's parameters are checked before any work: a cost outside the bounds, a salt
    /// or check value of the wrong length is [`SealError::Params`].
    pub fn unlock(passphrase: &str, record: &SealRecord) -> Result<SealKey, SealError> {
        if record.kdf != "argon2id" {
            return Err(SealError::Params(format!(
                "unknown kdf {:?}",
                record.kdf.chars().take(32).collect::<String>()
            )));
        }
        let cost = Cost {
            m_kib: record.m_kib,
            t: record.t,
            p: record.p,
        };
        check_cost(cost)?;
        if record.salt.len() != 2 * SALT_LEN {
            return Err(SealError::Params("the salt is not 16 bytes".into()));
        }
        if record.check.len() != 2 * (1 + NONCE_LEN + CHECK_PLAINTEXT.len() + TAG_LEN) {
            return Err(SealError::Params(
                "the check value has the wrong length".into(),
            ));
        }
        let salt = unhex(&record.salt).ok_or_else(|| SealError::Params("salt".into()))?;
        let check = unhex(&record.check).ok_or_else(|| SealError::Params("check".into()))?;
        let key = derive(passphrase, &salt, cost)?;
        match key.open_raw(CHECK_AAD, &check) {
            Ok(p) if p == CHECK_PLAINTEXT => Ok(key),
            _ => Err(SealError::WrongPassphrase),
        }
    }

    fn seal_raw(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Encryption fails only for messages over 256 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    fn open_raw(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != SEALED_V1 {
            return Err(SealError::Damaged);
        }
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        cipher
            .decrypt(
                XNonce::from_slice(&sealed[1..1 + NONCE_LEN]),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad,
                },
            )
            .map_err(|_| SealError::Damaged)
    }

    /// Seals the value of record `key` in `tree`.
    pub fn seal(&self, tree: &str, key: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.seal_raw(&aad(tree, key), plaintext)
    }

    /// Opens the value of record `key` in `tree`.
    pub fn open(&self, tree: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        self.open_raw(&aad(tree, key), sealed)
    }
}

/// Reads the passphrase of a sealed account: from `CONFAB_PASSPHRASE` if set, else from a
/// prompt on the terminal (no echo).
pub fn read_passphrase(prompt: &str) -> Result<String, String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    rpassword::prompt_password(prompt).map_err(|e| {
        format!("cannot read a passphrase ({e}); set {PASSPHRASE_ENV} when there is no terminal")
    })
}

/// Environment variable for the new passphrase when a script changes it.
pub const NEW_PASSPHRASE_ENV: &str = "CONFAB_NEW_PASSPHRASE";

/// Reads a new passphrase: `CONFAB_NEW_PASSPHRASE`, else (when nothing is sealed yet, so
/// there is no old one) `CONFAB_PASSPHRASE`, else a prompt asked twice.
pub fn read_new_passphrase(already_sealed: bool) -> Result<String, String> {
    if let Ok(p) = std::env::var(NEW_PASSPHRASE_ENV) {
        return Ok(p);
    }
    if !already_sealed {
        if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
            return Ok(p);
        }
    }
    let first = rpassword::prompt_password("new passphrase: ").map_err(|e| {
        format!(
            "cannot read a passphrase ({e}); set {NEW_PASSPHRASE_ENV} when there is no terminal"
        )
    })?;
    let second = rpassword::prompt_password("again: ")
        .map_err(|e| format!("cannot read the passphrase: {e}"))?;
    if first != second {
        return Err("the two passphrases differ".into());
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Cost = Cost {
        m_kib: MIN_M_KIB,
        t: 1,
        p: 1,
    };

    #[test]
    fn an_empty_passphrase_is_refused() {
        for p in ["", "   ", "\t\n"] {
            assert_eq!(
                SealKey::create(p, FAST).map(|_| ()),
                Err(SealError::EmptyPassphrase)
            );
        }
    }

    #[test]
    fn a_hostile_seal_record_is_refused_before_any_work() {
        let (_, good) = SealKey::create("p", FAST).expect("create");
        let hostile = [
            (u32::MAX, 1, 1),
            (4 * 1024 * 1024, 1, 1),
            (MAX_M_KIB + 1, 1, 1),
            (MIN_M_KIB, u32::MAX, 1),
            (MIN_M_KIB, MAX_T + 1, 1),
            (MIN_M_KIB, 1, u32::MAX),
            (MIN_M_KIB, 1, 0),
            (MIN_M_KIB, 0, 1),
            (0, 1, 1),
            (MAX_M_KIB, MAX_T, 1),
        ];
        for (m_kib, t, p) in hostile {
            let record = SealRecord {
                m_kib,
                t,
                p,
                ..good.clone()
            };
            let started = std::time::Instant::now();
            let e = SealKey::unlock("p", &record)
                .map(|_| ())
                .expect_err("refused");
            assert!(matches!(e, SealError::Params(_)), "{m_kib} {t} {p}: {e}");
            assert!(started.elapsed() < std::time::Duration::from_millis(100));
        }
        let long_salt = SealRecord {
            salt: "00".repeat(1 << 20),
            ..good.clone()
        };
        assert!(matches!(
            SealKey::unlock("p", &long_salt),
            Err(SealError::Params(_))
        ));
        let short_check = SealRecord {
            check: "00".into(),
            ..good.clone()
        };
        assert!(matches!(
            SealKey::unlock("p", &short_check),
            Err(SealError::Params(_))
        ));
        // The bounds themselves are accepted, and the default is inside them.
        assert!(check_cost(Cost::default()).is_ok());
        assert!(check_cost(Cost {
            m_kib: MAX_M_KIB,
            t: 4,
            p: MAX_P
        })
        .is_ok());
        assert!(SealKey::unlock("p", &good).is_ok());
    }

    #[test]
    fn the_right_passphrase_opens_what_was_sealed() {
        let (key, record) = SealKey::create("correct horse", FAST).expect("create");
        let sealed = key.seal("identity", b"ed25519", b"secret bytes");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let again = SealKey::unlock("correct horse", &record).expect("unlock");
        assert_eq!(
            again.open("identity", b"ed25519", &sealed).expect("open"),
            b"secret bytes"
        );
    }

    #[test]
    fn a_wrong_passphrase_is_refused() {
        let (_, record) = SealKey::create("correct horse", FAST).expect("create");
        assert_eq!(
            SealKey::unlock("battery staple", &record).map(|_| ()),
            Err(SealError::WrongPassphrase)
        );
    }

    #[test]
    fn a_sealed_value_moved_to_another_record_or_tampered_fails() {
        let (key, _) = SealKey::create("p", FAST).expect("create");
        let mut sealed = key.seal("profile", b"name", b"ada");
        assert_eq!(
            key.open("profile", b"other", &sealed),
            Err(SealError::Damaged)
        );
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(
            key.open("profile", b"name", &sealed),
            Err(SealError::Damaged)
        );
        assert_eq!(
            key.open("profile", b"name", &[1, 2]),
            Err(SealError::Damaged)
        );
    }
}
