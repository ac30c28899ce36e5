//! NAT behaviours after RFC 4787 and a packet-level model of DCUtR hole punching.
//!
//! A NAT is described by its *mapping* behaviour (which external port an outgoing packet gets)
//! and its *filtering* behaviour (which incoming packets reach the host), each one of
//! endpoint-independent, address-dependent or address-and-port-dependent (RFC 4787 §4.1,
//! §5). Besides those nine NATs a host can be public (no NAT, no firewall) or UDP-blocked
//! (only outgoing TCP works).
//!
//! Whether two NATed hosts can punch a hole is not looked up in a hand-written table: it is
//! computed by [`punch_succeeds`], which plays the packets of a DCUtR exchange through two
//! simulated NAT boxes — each host first talks to a relay (which is how it learns its
//! observed address, as libp2p's identify does), then both send to each other's observed
//! address at the same moment (DCUtR's synchronised connect), and each host answers any
//! packet that got through, to the address it came from (as a QUIC listener does). The
//! punch succeeds when both hosts have received a packet from the other. Nobody predicts
//! ports: libp2p's DCUtR uses observed addresses only, so an address-and-port-dependent
//! mapping (a "symmetric" NAT, e.g. Linux masquerade with `random-fully`) hands the peer a
//! port it has never heard of.

use std::collections::BTreeSet;

use std::fmt;

use serde::Serialize;

/// RFC 4787 §4.1 mapping behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Mapping {
    /// Endpoint-independent: one external port per internal socket, whatever the destination.
    Eim,
    /// Address-dependent: a new external port per destination IP address.
    Adm,
    /// Address-and-port-dependent: a new external port per destination IP and port.
    Apdm,
}

/// RFC 4787 §5 filtering behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Filtering {
    /// Endpoint-independent: anything sent to a mapped port gets in.
    Eif,
    /// Address-dependent: only from IP addresses the mapping has sent to.
    Adf,
    /// Address-and-port-dependent: only from the exact IP and port the mapping has sent to.
    Apdf,
}

/// How a host sits on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatKind {
    /// A public address, no filtering.
    Public,
    /// UDP is blocked; outgoing TCP works (so it can dial public hosts and use relays).
    UdpBlocked,
    /// Behind a NAT with these behaviours.
    Nat(Mapping, Filtering),
}

/// How two peers end up connected — the same vocabulary the node reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// A direct connection, because at least one side is reachable.
    Direct,
    /// A direct connection obtained by hole punching (DCUtR).
    Punched,
    /// The connection stays on a relay circuit.
    Relayed,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::Punched => "punched",
            Path::Relayed => "relayed",
        })
    }
}

impl Mapping {
    fn name(self) -> &'static str {
        match self {
            Mapping::Eim => "eim",
            Mapping::Adm => "adm",
            Mapping::Apdm => "apdm",
        }
    }
}

impl Filtering {
    fn name(self) -> &'static str {
        match self {
            Filtering::Eif => "eif",
            Filtering::Adf => "adf",
            Filtering::Apdf => "apdf",
        }
    }
}

impl NatKind {
    /// Every kind the simulator knows, in a fixed order.
    pub fn all() -> Vec<NatKind> {
        let mut v = vec![NatKind::Public, NatKind::UdpBlocked];
        for m in [Mapping::Eim, Mapping::Adm, Mapping::Apdm] {
            for f in [Filtering::Eif, Filtering::Adf, Filtering::Apdf] {
                v.push(NatKind::Nat(m, f));
            }
        }
        v
    }

    /// Parses `public`, `udp-blocked` or `<mapping>-<filtering>` (e.g. `eim-apdf`), and the
    /// testbed's names `port-preserving` and `random-port`.
    pub fn parse(s: &str) -> Option<NatKind> {
        match s {
            "public" => return Some(NatKind::Public),
            "udp-blocked" => return Some(NatKind::UdpBlocked),
            _ => {}
        }
        // The testbed's older names for Linux masquerade with and without random ports.
        match s {
            "port-preserving" => return Some(NatKind::Nat(Mapping::Eim, Filtering::Apdf)),
            "random-port" => return Some(NatKind::Nat(Mapping::Apdm, Filtering::Apdf)),
            _ => {}
        }
        let (m, f) = s.split_once('-')?;
        let m = match m {
            "eim" => Mapping::Eim,
            "adm" => Mapping::Adm,
            "apdm" => Mapping::Apdm,
            _ => return None,
        };
        let f = match f {
            "eif" => Filtering::Eif,
            "adf" => Filtering::Adf,
            "apdf" => Filtering::Apdf,
            _ => return None,
        };
        Some(NatKind::Nat(m, f))
    }

    /// Reachable without help: a public host, or a full-cone NAT (EIM + EIF), whose observed
    /// address accepts anyone — AutoNAT confirms it, so peers dial it directly.
    pub fn reachable(self) -> bool {
        matches!(
            self,
            NatKind::Public | NatKind::Nat(Mapping::Eim, Filtering::Eif)
        )
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatKind::Public => f.write_str("public"),
            NatKind::UdpBlocked => f.write_str("udp-blocked"),
            NatKind::Nat(m, fl) => write!(f, "{}-{}", m.name(), fl.name()),
        }
    }
}

/// The path two hosts end up on when nothing else (relay capacity, unlucky timing) gets in
/// the way: direct if either is reachable, punched if the packet model says a synchronised
/// punch gets through both NATs, relayed otherwise. `a` is the dialer (the peer that opened
/// the relayed connection, the QUIC client of the punch), `b` the listener; the outcome can
/// depend on the roles (see [`punch_succeeds`]).
pub fn predict_path(a: NatKind, b: NatKind) -> Path {
    predict_path_over(a, b, &[Transport::Quic, Transport::Tcp])
}

/// [`predict_path`] for a node that punches over these transports only (today's node:
/// TCP).
pub fn predict_path_over(a: NatKind, b: NatKind, transports: &[Transport]) -> Path {
    if a.reachable() || b.reachable() {
        Path::Direct
    } else if transports.iter().any(|t| punch_over(a, b, *t)) {
        Path::Punched
    } else {
        Path::Relayed
    }
}

/// The transport a hole punch runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Quic,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        })
    }
}

/// A host as the punch model sees it: its NAT, and whether that NAT keeps the host's port on
/// its first mapping (Linux masquerade does; a carrier-grade NAT handing out port blocks
/// does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub kind: NatKind,
    pub keeps_port: bool,
}

impl From<NatKind> for Host {
    fn from(kind: NatKind) -> Host {
        Host {
            kind,
            keeps_port: true,
        }
    }
}

/// Whether a punch over one transport gets through (see [`punch_succeeds`]).
pub fn punch_over(dialer: NatKind, listener: NatKind, t: Transport) -> bool {
    punch_hosts(dialer.into(), listener.into(), t)
}

/// [`punch_over`] for hosts whose NAT may not keep their port.
pub fn punch_hosts(dialer: Host, listener: Host, t: Transport) -> bool {
    match t {
        Transport::Quic => quic_punch(dialer, listener),
        Transport::Tcp => tcp_punch(dialer, listener),
    }
}

type Endpoint = (u32, u16);
/// What a mapping is keyed by: nothing (EIM), the destination IP (ADM), or IP and port (APDM).
type MapKey = (Option<u32>, Option<u16>);

const HOST_PORT: u16 = 4001;
const RELAY: Endpoint = (1, 443);

/// One NAT box in front of one host with one socket (libp2p reuses its listen port).
struct NatBox {
    kind: NatKind,
    keeps_port: bool,
    ip: u32,
    /// (destination key, external port)
    mappings: Vec<(MapKey, u16)>,
    /// (external port, destination) pairs sent to.
    sent: BTreeSet<(u16, Endpoint)>,
    next_port: u16,
}

impl NatBox {
    fn new(host: Host, ip: u32) -> Self {
        Self {
            kind: host.kind,
            keeps_port: host.keeps_port,
            ip,
            mappings: Vec::new(),
            sent: BTreeSet::new(),
            next_port: 20_000,
        }
    }

    /// Sends from the host's socket to `dst`; returns the packet's source as seen outside,
    /// or `None` if the packet cannot leave (UDP blocked).
    fn send(&mut self, dst: Endpoint) -> Option<Endpoint> {
        let port = match self.kind {
            NatKind::Public => HOST_PORT,
            NatKind::UdpBlocked => return None,
            NatKind::Nat(m, _) => {
                let key = match m {
                    Mapping::Eim => (None, None),
                    Mapping::Adm => (Some(dst.0), None),
                    Mapping::Apdm => (Some(dst.0), Some(dst.1)),
                };
                match self.mappings.iter().find(|(k, _)| *k == key) {
                    Some((_, p)) => *p,
                    None => {
                        // The first mapping keeps the host's port (port preservation) if the
                        // NAT does that; later ones get fresh ports nobody can know in
                        // advance.
                        let p = if self.mappings.is_empty() && self.keeps_port {
                            HOST_PORT
                        } else {
                            self.next_port += 7;
                            self.next_port
                        };
                        self.mappings.push((key, p));
                        p
                    }
                }
            }
        };
        self.sent.insert((port, dst));
        Some((self.ip, port))
    }

    /// Whether a packet from `src` to our external `port` reaches the host.
    fn accepts(&self, port: u16, src: Endpoint) -> bool {
        match self.kind {
            NatKind::Public => port == HOST_PORT,
            NatKind::UdpBlocked => false,
            NatKind::Nat(_, f) => {
                if !self.mappings.iter().any(|(_, p)| *p == port) {
                    return false;
                }
                match f {
                    Filtering::Eif => true,
                    Filtering::Adf => self.sent.iter().any(|(p, d)| *p == port && d.0 == src.0),
                    Filtering::Apdf => self.sent.contains(&(port, src)),
                }
            }
        }
    }
}

/// Whether DCUtR gets a direct connection between `dialer` (the peer that opened the relayed
/// connection; the QUIC client of the punch) and `listener` (the peer reached through its
/// relay reservation). libp2p tries QUIC and TCP addresses at once: either may win.
pub fn punch_succeeds(dialer: NatKind, listener: NatKind) -> bool {
    punch_over(dialer, listener, Transport::Quic) || punch_over(dialer, listener, Transport::Tcp)
}

/// The address a host hands its peer for the punch. libp2p's identify takes the address the
/// relay observed and, when its port is not the host's listening port (the NAT did not keep
/// it), puts the listening port in its place; so every host advertises its public IP with
/// its own port.
fn advertised(observed: Endpoint) -> Endpoint {
    (observed.0, HOST_PORT)
}

/// Both hosts talk to the relay first; that gives each its observed address, and so the
/// address it advertises.
fn observed(a: Host, b: Host) -> Option<([NatBox; 2], Endpoint, Endpoint)> {
    let mut nats = [NatBox::new(a, 10), NatBox::new(b, 20)];
    let obs_a = nats[0].send(RELAY)?;
    let obs_b = nats[1].send(RELAY)?;
    Some((nats, advertised(obs_a), advertised(obs_b)))
}

/// QUIC punch: after the synchronisation the listener sprays packets at the dialer's
/// advertised address (opening its own NAT) while the dialer sends its Initial to the
/// listener's; the listener answers from its socket to where the Initial came from, and the
/// dialer accepts the answer only if it comes from the address it dialed (RFC 9000 §9: a
/// client discards packets from an unknown server address). Three rounds of retransmission.
fn quic_punch(dialer: Host, listener: Host) -> bool {
    let Some((mut nats, adv_d, adv_l)) = observed(dialer, listener) else {
        return false;
    };
    for _ in 0..3 {
        let _ = nats[1].send(adv_d);
        let Some(s) = nats[0].send(adv_l) else {
            return false;
        };
        if nats[1].accepts(adv_l.1, s) {
            let Some(reply) = nats[1].send(s) else {
                return false;
            };
            if reply == adv_l && nats[0].accepts(s.1, reply) {
                return true;
            }
        }
    }
    false
}

/// TCP punch as libp2p's DCUtR does it: both ends dial the other's advertised address, the
/// listener's SYN opening its own NAT. It works when the dialer's SYN gets into the
/// listener — meeting the listener's own SYN (a simultaneous open on one 4-tuple) or its
/// listening socket, which answers through the NAT's connection tracking from the address
/// the dialer dialed. The listener dials with its role overridden to "listener", so its SYN
/// reaching the dialer's *listening* socket makes both ends listeners and fails: that way
/// alone never works. A UDP-blocked host is behind a stateful firewall that lets its TCP out
/// and the replies in (as `eim-apdf`).
fn tcp_punch(dialer: Host, listener: Host) -> bool {
    let tcp = |h: Host| match h.kind {
        NatKind::UdpBlocked => Host {
            kind: NatKind::Nat(Mapping::Eim, Filtering::Apdf),
            ..h
        },
        _ => h,
    };
    let Some((mut nats, adv_d, adv_l)) = observed(tcp(dialer), tcp(listener)) else {
        return false;
    };
    for _ in 0..3 {
        let _ = nats[1].send(adv_d);
        let Some(s) = nats[0].send(adv_l) else {
            return false;
        };
        if nats[1].accepts(adv_l.1, s) {
            return true;
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn k(s: &str) -> NatKind {
        NatKind::parse(s).expect("kind")
    }

    #[test]
    fn names_round_trip() {
        for kind in NatKind::all() {
            assert_eq!(NatKind::parse(&kind.to_string()), Some(kind));
        }
        assert_eq!(NatKind::parse("eim-xyz"), None);
    }

    fn table(f: impl Fn(NatKind, NatKind) -> bool) -> Vec<String> {
        let nats: Vec<NatKind> = NatKind::all().into_iter().skip(2).collect();
        nats.iter()
            .map(|a| {
                nats.iter()
                    .map(|b| if f(*a, *b) { 'P' } else { '.' })
                    .collect()
            })
            .collect()
    }

    /// The full truth tables of the punch for NATed pairs: rows are the dialer, columns the
    /// listener, both in [`NatKind::all`] order without public and udp-blocked; `P` =
    /// punched, `.` = fails. Reasons in docs/simulations.md.
    #[test]
    fn truth_table_for_every_nat_pair() {
        // QUIC needs an endpoint-independent listener, and a port-restricted (APDF) listener
        // additionally needs an endpoint-independent dialer.
        let quic = [
            // listener: eim-eif eim-adf eim-apdf adm-eif adm-adf adm-apdf apdm-eif apdm-adf apdm-apdf
            "PPP......", // dialer eim-eif
            "PPP......", // dialer eim-adf
            "PPP......", // dialer eim-apdf
            "PP.......", // dialer adm-eif
            "PP.......", // dialer adm-adf
            "PP.......", // dialer adm-apdf
            "PP.......", // dialer apdm-eif
            "PP.......", // dialer apdm-adf
            "PP.......", // dialer apdm-apdf
        ];
        // TCP: the dialer's SYN must get into the listener at its advertised port; the
        // answer comes back through connection tracking, so a listener mapping per
        // destination works as long as it filters nothing (EIF).
        let tcp = [
            "PPPP..P..", // dialer eim-eif
            "PPPP..P..", // dialer eim-adf
            "PPPP..P..", // dialer eim-apdf
            "PP.P..P..", // dialer adm-eif
            "PP.P..P..", // dialer adm-adf
            "PP.P..P..", // dialer adm-apdf
            "PP.P..P..", // dialer apdm-eif
            "PP.P..P..", // dialer apdm-adf
            "PP.P..P..", // dialer apdm-apdf
        ];
        let got_quic = table(|a, b| punch_over(a, b, Transport::Quic));
        assert_eq!(got_quic, quic, "{got_quic:#?}");
        let got_tcp = table(|a, b| punch_over(a, b, Transport::Tcp));
        assert_eq!(got_tcp, tcp, "{got_tcp:#?}");
        // Either transport may win.
        assert_eq!(table(punch_succeeds), tcp);
    }

    #[test]
    fn a_nat_that_changes_the_port_cannot_be_reached() {
        // identify advertises the listening port, which such a NAT has not mapped.
        let moved = Host {
            kind: k("eim-apdf"),
            keeps_port: false,
        };
        for t in [Transport::Tcp, Transport::Quic] {
            for other in NatKind::all() {
                assert!(
                    !punch_hosts(other.into(), moved, t),
                    "{other} -> moved, {t}"
                );
            }
        }
        // Dialing out from one, its SYN comes from an unadvertised port: only a listener
        // that filters by address (or not at all) lets it in.
        assert!(punch_hosts(moved, k("eim-adf").into(), Transport::Tcp));
        assert!(!punch_hosts(moved, k("eim-apdf").into(), Transport::Tcp));
    }

    #[test]
    fn well_known_pairs() {
        // Both endpoint-independent: works with any filtering when both send at once.
        for f in ["eif", "adf", "apdf"] {
            for g in ["eif", "adf", "apdf"] {
                assert!(punch_succeeds(
                    k(&format!("eim-{f}")),
                    k(&format!("eim-{g}"))
                ));
            }
        }
        // Symmetric against port-restricted filtering fails.
        assert!(!punch_succeeds(k("apdm-apdf"), k("eim-apdf")));
        assert!(!punch_succeeds(k("apdm-apdf"), k("apdm-apdf")));
        // Symmetric against a full cone (EIM + EIF) works.
        assert!(punch_succeeds(k("apdm-apdf"), k("eim-eif")));
        // UDP-blocked never punches over QUIC; over TCP its firewall behaves as `eim-apdf`.
        for other in NatKind::all() {
            assert!(!punch_over(NatKind::UdpBlocked, other, Transport::Quic));
            assert_eq!(
                punch_over(NatKind::UdpBlocked, other, Transport::Tcp),
                punch_over(k("eim-apdf"), other, Transport::Tcp) || other == NatKind::UdpBlocked,
                "{other}"
            );
        }
    }

    #[test]
    fn paths_for_reachable_and_blocked_hosts() {
        assert_eq!(predict_path(k("public"), k("apdm-apdf")), Path::Direct);
        assert_eq!(predict_path(k("udp-blocked"), k("public")), Path::Direct);
        assert_eq!(predict_path(k("eim-eif"), k("apdm-apdf")), Path::Direct);
        assert_eq!(predict_path(k("udp-blocked"), k("eim-apdf")), Path::Punched);
        assert_eq!(predict_path(k("apdm-apdf"), k("eim-apdf")), Path::Relayed);
        assert_eq!(predict_path(k("eim-apdf"), k("eim-apdf")), Path::Punched);
    }

    #[test]
    fn tcp_answers_through_connection_tracking_where_quic_answers_from_a_new_mapping() {
        let tcp = [Transport::Tcp];
        let quic = [Transport::Quic];
        // A symmetric dialer into an address-restricted listener: both work.
        assert_eq!(
            predict_path_over(k("apdm-apdf"), k("eim-adf"), &tcp),
            Path::Punched
        );
        // A listener that maps per destination but filters nothing: its TCP answer goes back
        // through the inbound connection's own mapping; its QUIC answer leaves from a new
        // port, which the client discards.
        assert_eq!(
            predict_path_over(k("eim-apdf"), k("apdm-eif"), &tcp),
            Path::Punched
        );
        assert_eq!(
            predict_path_over(k("eim-apdf"), k("apdm-eif"), &quic),
            Path::Relayed
        );
    }
}
