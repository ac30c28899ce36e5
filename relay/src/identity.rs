//! The relay's persistent Ed25519 identity key.
//!
//! The key is stored in libp2p's protobuf encoding
//! ([`Keypair::to_protobuf_encoding`]) in a file of mode 0600. It is created on first
//! start; an unreadable or corrupt file is an error and is never overwritten, because
//! replacing it would silently change the relay's peer id and break every ticket and
//! config that names it.

use std::{
    fs::OpenOptions,
    io::{ErrorKind, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use libp2p::identity::Keypair;

use crate::Error;

/// Longest identity file we accept (an Ed25519 key is 68 bytes in this encoding).
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Load the key at `path`, or create a new Ed25519 key there if no file exists.
///
/// Returns the key and whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(Keypair, bool), Error> {
    match load(path) {
        Ok(key) => Ok((key, false)),
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            create(path).map(|k| (k, true))
        }
        Err(e) => Err(e),
    }
}

/// Load an existing key file.
pub fn load(path: &Path) -> Result<Keypair, Error> {
    let io_err = |source| Error::Io {
        what: "reading the identity key",
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(Error::CorruptIdentity {
            path: path.to_path_buf(),
            reason: format!("file is {} bytes, far larger than a key", meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(io_err)?;
    if bytes.is_empty() {
        return Err(Error::CorruptIdentity {
            path: path.to_path_buf(),
            reason: "file is empty".into(),
        });
    }
    Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::CorruptIdentity {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn create(path: &Path) -> Result<Keypair, Error> {
    let io_err = |source| Error::Io {
        what: "creating the identity key",
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let key = Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| Error::CorruptIdentity {
            path: path.to_path_buf(),
            reason: format!("cannot encode the new key: {e}"),
        })?;
    // Write to a temporary file first so that a crash never leaves a truncated key
    // behind, then link it into place without replacing anything that appeared meanwhile.
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err)?;
        file.write_all(&bytes).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(io_err)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn created_key_has_mode_0600_and_reloads() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            what: "tempdir",
            path: ".".into(),
            source,
        })?;
        let path = dir.path().join("sub").join("id.key");
        let (a, created) = load_or_create(&path)?;
        assert!(created);
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        let (b, created) = load_or_create(&path)?;
        assert!(!created);
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        Ok(())
    }
}
