//! Typed relay configuration, the TOML file format and its defaults.
//!
//! Every field has a default (see [`Config::default`] and `relay/example.toml`), so an
//! empty file is a valid configuration. Unknown fields are rejected with an error that
//! names them.

use std::{net::SocketAddr, path::PathBuf, str::FromStr};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Default TCP listen address.
pub const DEFAULT_LISTEN_TCP: &str = "/ip4/0.0.0.0/tcp/4001";
/// Default QUIC listen address.
pub const DEFAULT_LISTEN_QUIC: &str = "/ip4/0.0.0.0/udp/4001/quic-v1";
/// File name of the identity key inside the data directory.
pub const IDENTITY_FILE_NAME: &str = "identity.key";

/// The whole relay configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for state (the identity key unless `identity` says otherwise).
    pub data_dir: PathBuf,
    /// Path of the Ed25519 identity key; `None` means `<data_dir>/identity.key`.
    pub identity: Option<PathBuf>,
    /// Addresses to listen on (TCP and QUIC).
    #[serde(with = "multiaddr_list")]
    pub listen: Vec<Multiaddr>,
    /// Publicly reachable addresses of this relay, announced to clients in reservations.
    #[serde(with = "multiaddr_list")]
    pub external_addrs: Vec<Multiaddr>,
    /// Treat listen addresses as external addresses: a specific listen IP as is, and for
    /// an unspecified one (0.0.0.0, ::) every globally routable interface address.
    pub listen_as_external: bool,
    /// Serve Prometheus metrics on this address; `None` turns metrics off.
    pub metrics: Option<SocketAddr>,
    /// Put IP addresses into log lines. Off by default: logs carry peer ids only.
    pub log_ips: bool,
    /// Close connections that have had no open stream for this long.
    pub idle_connection_timeout_secs: u64,
    /// Who may make reservations and circuits.
    pub access: AccessConfig,
    /// Circuit relay limits.
    pub limits: Limits,
    /// Rendezvous server limits.
    pub rendezvous: RendezvousConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("confab-relay-data"),
            identity: None,
            listen: vec![
                parse_default(DEFAULT_LISTEN_TCP),
                parse_default(DEFAULT_LISTEN_QUIC),
            ],
            external_addrs: Vec::new(),
            listen_as_external: true,
            metrics: None,
            log_ips: false,
            idle_connection_timeout_secs: 60,
            access: AccessConfig::default(),
            limits: Limits::default(),
            rendezvous: RendezvousConfig::default(),
        }
    }
}

fn parse_default(s: &str) -> Multiaddr {
    // The two defaults are string constants in this file; a test checks they parse.
    Multiaddr::from_str(s).unwrap_or_else(|_| Multiaddr::empty())
}

/// Access policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Anyone may reserve and open circuits.
    #[default]
    Open,
    /// Only peers in `access.allowlist` may reserve, open circuits or be reached by one.
    Allowlist,
}

impl FromStr for AccessMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "open" => Ok(AccessMode::Open),
            "allowlist" => Ok(AccessMode::Allowlist),
            other => Err(Error::Config(format!(
                "access mode must be `open` or `allowlist`, not `{other}`"
            ))),
        }
    }
}

/// `[access]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// `open` or `allowlist`.
    pub mode: AccessMode,
    /// Peer ids allowed when `mode = "allowlist"`.
    #[serde(with = "peer_list")]
    pub allowlist: Vec<PeerId>,
}

/// `[limits]` table: circuit relay v2 limits. Rates are "per hour" token buckets; 0 means
/// no rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Reservations held at once, all peers together.
    pub max_reservations: usize,
    /// Reservations one peer may hold at once (one per connection to the relay).
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the client must renew it.
    pub reservation_duration_secs: u64,
    /// Circuits open at once, all peers together.
    pub max_circuits: usize,
    /// Circuits one peer may be part of at once (as source or destination).
    pub max_circuits_per_peer: usize,
    /// Longest life of one circuit. The library default (2 minutes) would cut calls.
    pub max_circuit_duration_secs: u64,
    /// Bytes one circuit may carry (both directions). The library default (128 KiB) is
    /// about 16 s of audio.
    pub max_circuit_bytes: u64,
    /// New reservations per peer per hour (0 = unlimited).
    pub reservations_per_peer_per_hour: u32,
    /// New reservations per source IP per hour (0 = unlimited).
    pub reservations_per_ip_per_hour: u32,
    /// New circuits per source peer per hour (0 = unlimited).
    pub circuits_per_peer_per_hour: u32,
    /// New circuits per source IP per hour (0 = unlimited).
    pub circuits_per_ip_per_hour: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_reservations: 512,
            max_reservations_per_peer: 4,
            reservation_duration_secs: 3600,
            max_circuits: 1024,
            max_circuits_per_peer: 64,
            max_circuit_duration_secs: 6 * 3600,
            max_circuit_bytes: 1 << 30,
            reservations_per_peer_per_hour: 60,
            reservations_per_ip_per_hour: 0,
            circuits_per_peer_per_hour: 600,
            circuits_per_ip_per_hour: 0,
        }
    }
}

/// `[rendezvous]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RendezvousConfig {
    /// Longest registration lifetime a client may ask for.
    pub max_ttl_secs: u64,
    /// Registrations one peer may hold (one per room it is in).
    pub max_registrations_per_peer: usize,
    /// Registrations held in total.
    pub max_registrations_total: usize,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            max_ttl_secs: 72 * 3600,
            max_registrations_per_peer: 64,
            max_registrations_total: 100_000,
        }
    }
}

impl Config {
    /// Parse a TOML document. Unknown fields are an error naming the field.
    pub fn from_toml_str(text: &str) -> Result<Config, Error> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Read and parse a TOML config file.
    pub fn load(path: &std::path::Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "reading the config file",
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Path of the identity key file.
    pub fn identity_path(&self) -> PathBuf {
        self.identity
            .clone()
            .unwrap_or_else(|| self.data_dir.join(IDENTITY_FILE_NAME))
    }

    /// Check values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), Error> {
        let l = &self.limits;
        if l.max_circuit_duration_secs == 0 || l.max_circuit_duration_secs > u64::from(u32::MAX) {
            return Err(Error::Config(
                "limits.max_circuit_duration_secs must be between 1 and 4294967295".into(),
            ));
        }
        if l.reservation_duration_secs == 0 {
            return Err(Error::Config(
                "limits.reservation_duration_secs must be at least 1".into(),
            ));
        }
        if l.max_circuits_per_peer == 0 || l.max_reservations_per_peer == 0 {
            return Err(Error::Config(
                "limits.max_circuits_per_peer and limits.max_reservations_per_peer must be at least 1"
                    .into(),
            ));
        }
        if self.listen.is_empty() {
            return Err(Error::Config(
                "at least one listen address is needed".into(),
            ));
        }
        if self.access.mode == AccessMode::Open && !self.access.allowlist.is_empty() {
            return Err(Error::Config(
                "access.allowlist is set but access.mode is `open`; set mode = \"allowlist\""
                    .into(),
            ));
        }
        Ok(())
    }
}

mod multiaddr_list {
    use std::str::FromStr;

    use libp2p::Multiaddr;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[Multiaddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| a.to_string()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| {
                Multiaddr::from_str(s)
                    .map_err(|e| D::Error::custom(format!("invalid multiaddr `{s}`: {e}")))
            })
            .collect()
    }
}

mod peer_list {
    use std::str::FromStr;

    use libp2p::PeerId;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| a.to_string()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| {
                PeerId::from_str(s)
                    .map_err(|e| D::Error::custom(format!("invalid peer id `{s}`: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_listen_addresses_parse() {
        assert_eq!(Config::default().listen[0].to_string(), DEFAULT_LISTEN_TCP);
        assert_eq!(Config::default().listen[1].to_string(), DEFAULT_LISTEN_QUIC);
    }

    #[test]
    fn empty_file_is_default() {
        assert_eq!(Config::from_toml_str("").ok(), Some(Config::default()));
    }

    #[test]
    fn nested_unknown_field_is_named() {
        let err = Config::from_toml_str("[limits]\nmax_circuitz = 3\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("max_circuitz"), "{err}");
    }

    #[test]
    fn bad_multiaddr_is_reported() {
        let err = Config::from_toml_str("listen = [\"/ip4/nope\"]")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/ip4/nope"), "{err}");
    }
}
