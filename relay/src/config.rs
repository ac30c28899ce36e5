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
    /// Connection and memory limits.
    pub connections: ConnectionsConfig,
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
            connections: ConnectionsConfig::default(),
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
    /// Peer ids that may hold reservations at once from one IPv4 address or one IPv6 /64
    /// (0 = unlimited). Peer ids are free, so this is what stops one host from taking every
    /// reservation; it stays in the tens so that a carrier-grade NAT still works.
    pub max_reservations_per_ip: usize,
    /// Circuits open at once whose source is at one IPv4 address or one IPv6 /64
    /// (0 = unlimited).
    pub max_circuits_per_ip: usize,
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
            max_reservations_per_ip: 32,
            max_circuits_per_ip: 256,
        }
    }
}

/// `[rendezvous]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RendezvousConfig {
    /// Longest registration lifetime a client may ask for.
    pub max_ttl_secs: u64,
    /// Shortest registration lifetime a client may ask for.
    pub min_ttl_secs: u64,
    /// Registrations one peer may hold (one per room it is in).
    pub max_registrations_per_peer: usize,
    /// Registrations held in total.
    pub max_registrations_total: usize,
    /// Largest signed peer record (with its addresses) a registration may carry, in bytes.
    pub max_record_bytes: usize,
    /// Most registrations returned by one discover request (clients page with the cookie).
    pub max_discover_results: usize,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            max_ttl_secs: 72 * 3600,
            min_ttl_secs: 2 * 3600,
            max_registrations_per_peer: 64,
            max_registrations_total: 10_000,
            max_record_bytes: 4096,
            max_discover_results: 200,
        }
    }
}

/// `[connections]` table: limits on connections and memory. 0 means no limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Established connections, all peers together.
    pub max_established: u32,
    /// Incoming connections still in their handshake, all together.
    pub max_pending_incoming: u32,
    /// Established connections of one peer id.
    pub max_established_per_peer: u32,
    /// Established incoming connections from one IPv4 address or one IPv6 /64. Above the
    /// reservation limit per IP, because nodes that only open circuits also connect.
    pub max_established_per_ip: u32,
    /// Refuse new connections while the process uses more than this much memory (MiB).
    pub max_memory_mib: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_established: 4096,
            max_pending_incoming: 256,
            max_established_per_peer: 8,
            max_established_per_ip: 128,
            max_memory_mib: 1024,
        }
    }
}

/// Longest reservation lifetime (one day): clients renew well before.
pub const MAX_RESERVATION_DURATION_SECS: u64 = 24 * 3600;
/// Longest circuit lifetime (seven days).
pub const MAX_CIRCUIT_DURATION_SECS: u64 = 7 * 24 * 3600;
/// Longest idle timeout (one day).
pub const MAX_IDLE_TIMEOUT_SECS: u64 = 24 * 3600;
/// Longest rendezvous TTL (seven days).
pub const MAX_RENDEZVOUS_TTL_SECS: u64 = 7 * 24 * 3600;
/// Largest record cap (64 KiB; the wire message limit is set from it).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

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

    /// Check values that the types alone do not constrain. Every duration that libp2p
    /// turns into a deadline has an upper bound here, so no value can overflow a clock.
    pub fn validate(&self) -> Result<(), Error> {
        let l = &self.limits;
        in_range(
            "limits.max_circuit_duration_secs",
            l.max_circuit_duration_secs,
            1,
            MAX_CIRCUIT_DURATION_SECS,
        )?;
        in_range(
            "limits.reservation_duration_secs",
            l.reservation_duration_secs,
            1,
            MAX_RESERVATION_DURATION_SECS,
        )?;
        in_range(
            "idle_connection_timeout_secs",
            self.idle_connection_timeout_secs,
            1,
            MAX_IDLE_TIMEOUT_SECS,
        )?;
        if l.max_circuits_per_peer == 0 || l.max_reservations_per_peer == 0 {
            return Err(Error::Config(
                "limits.max_circuits_per_peer and limits.max_reservations_per_peer must be at least 1"
                    .into(),
            ));
        }
        let rv = &self.rendezvous;
        in_range(
            "rendezvous.max_ttl_secs",
            rv.max_ttl_secs,
            1,
            MAX_RENDEZVOUS_TTL_SECS,
        )?;
        in_range(
            "rendezvous.min_ttl_secs",
            rv.min_ttl_secs,
            1,
            rv.max_ttl_secs,
        )?;
        in_range(
            "rendezvous.max_record_bytes",
            rv.max_record_bytes as u64,
            256,
            MAX_RECORD_BYTES as u64,
        )?;
        if rv.max_discover_results == 0 {
            return Err(Error::Config(
                "rendezvous.max_discover_results must be at least 1".into(),
            ));
        }
        if self.connections.max_memory_mib > 1 << 30 {
            return Err(Error::Config(
                "connections.max_memory_mib must be at most 1073741824 (0 turns it off)".into(),
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

fn in_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), Error> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{field} must be between {min} and {max}, not {value}"
        )))
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

    #[test]
    fn reservation_duration_above_the_bound_is_an_error() {
        let text = format!(
            "[limits]\nreservation_duration_secs = {}\n",
            MAX_RESERVATION_DURATION_SECS + 1
        );
        let err = Config::from_toml_str(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("limits.reservation_duration_secs"), "{err}");
        let huge = format!("[limits]\nreservation_duration_secs = {}\n", i64::MAX);
        assert!(Config::from_toml_str(&huge).is_err());
        let ok = format!("[limits]\nreservation_duration_secs = {MAX_RESERVATION_DURATION_SECS}\n");
        assert!(Config::from_toml_str(&ok).is_ok());
    }

    #[test]
    fn other_durations_are_bounded() {
        for text in [
            "idle_connection_timeout_secs = 9223372036854775807\n",
            "[limits]\nmax_circuit_duration_secs = 4294967295\n",
            "[rendezvous]\nmax_ttl_secs = 9223372036854775807\n",
            "[rendezvous]\nmin_ttl_secs = 0\n",
            "[rendezvous]\nmax_record_bytes = 10000000\n",
        ] {
            assert!(Config::from_toml_str(text).is_err(), "{text}");
        }
    }

    mod decoder {
        use proptest::prelude::*;

        use super::super::Config;

        /// TOML-like text: keys and values from the config and arbitrary tokens.
        fn tomlish() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                Just("[limits]\n".to_owned()),
                Just("[rendezvous]\n".to_owned()),
                Just("[connections]\n".to_owned()),
                Just("[access]\n".to_owned()),
                Just("reservation_duration_secs = ".to_owned()),
                Just("max_circuit_duration_secs = ".to_owned()),
                Just("idle_connection_timeout_secs = ".to_owned()),
                Just("max_ttl_secs = ".to_owned()),
                Just("max_memory_mib = ".to_owned()),
                Just("listen = ".to_owned()),
                Just("allowlist = ".to_owned()),
                Just("mode = ".to_owned()),
                Just("metrics = ".to_owned()),
                Just("\n".to_owned()),
                any::<i64>().prop_map(|n| format!("{n}\n")),
                any::<u64>().prop_map(|n| format!("{n}\n")),
                "\"[ -~]{0,40}\"".prop_map(|s| s),
                "\\[\"/ip[46]/[0-9a-z:./]{0,30}\"\\]".prop_map(|s| s),
                "[ -~\n]{0,20}".prop_map(|s| s),
            ];
            proptest::collection::vec(token, 0..24).prop_map(|v| v.concat())
        }

        fn check(text: &str) {
            // Must return, never panic; a config it accepts is valid and usable.
            if let Ok(c) = Config::from_toml_str(text) {
                assert!(c.validate().is_ok());
                assert!(
                    c.limits.reservation_duration_secs
                        <= super::super::MAX_RESERVATION_DURATION_SECS
                );
                let _ = std::time::Instant::now()
                    + std::time::Duration::from_secs(c.limits.reservation_duration_secs)
                    + std::time::Duration::from_secs(c.limits.max_circuit_duration_secs)
                    + std::time::Duration::from_secs(c.rendezvous.max_ttl_secs)
                    + std::time::Duration::from_secs(c.idle_connection_timeout_secs);
            }
        }

        /// Cases for the long run: `CONFAB_CONFIG_FUZZ_CASES`, or 100 000.
        fn long_cases() -> u32 {
            std::env::var("CONFAB_CONFIG_FUZZ_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(100_000)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                check(&String::from_utf8_lossy(&bytes));
            }

            #[test]
            fn tomlish_text_never_panics(text in tomlish()) {
                check(&text);
            }
        }

        #[test]
        #[ignore = "long run: cargo test --release -p confab-relay -- --ignored config_decoder_long_run"]
        fn config_decoder_long_run() {
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
                cases: long_cases(),
                failure_persistence: None,
                ..ProptestConfig::default()
            });
            let strategy = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..1024)
                    .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
                tomlish(),
            ];
            let result = runner.run(&strategy, |text| {
                check(&text);
                Ok(())
            });
            assert!(result.is_ok(), "{result:?}");
        }
    }
}
