//! The homes of the real-NAT testbed (`confab-sim testbed`) as the model sees them, and what
//! the model predicts for a pair of them: the path and the set-up times.
//!
//! A home is one of the NAT kinds of [`NatKind`] that nftables can build — `public`,
//! `udp-blocked`, `eim-eif`, `eim-adf`, `eim-apdf` (alias `port-preserving`) and `apdm-apdf`
//! (alias `random-port`) — optionally behind the shared carrier-grade NAT (`@cgnat`, e.g.
//! `eim-apdf@cgnat`): a double NAT. The carrier NAT is endpoint-independent with
//! address-and-port-dependent filtering (deterministic port blocks, as RFC 6888 and RFC 7422
//! ask of one), and it may or may not hairpin. Address-dependent mapping (`adm-*`) and a
//! symmetric NAT with looser filtering (`apdm-eif`, `apdm-adf`) have no nftables recipe.

use std::fmt;

use serde::Serialize;

use crate::nat::{punch_hosts, Filtering, Host, Mapping, NatKind, Path, Transport};
use crate::timing::Setup;

/// The carrier-grade NAT in front of `@cgnat` homes.
pub const CGNAT: NatKind = NatKind::Nat(Mapping::Eim, Filtering::Apdf);

/// Where one testbed member sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Home {
    /// The home router's NAT (or `public`: no router).
    pub kind: NatKind,
    /// Behind the shared carrier-grade NAT as well.
    pub cgnat: bool,
}

impl Home {
    /// Parses `KIND` or `KIND@cgnat`; the error says which kinds exist.
    pub fn parse(s: &str) -> Result<Home, String> {
        let (base, cgnat) = match s.strip_suffix("@cgnat") {
            Some(b) => (b, true),
            None => (s, false),
        };
        let kind = NatKind::parse(base)
            .ok_or_else(|| format!("unknown NAT kind {s:?}; the testbed makes {}", names()))?;
        if !buildable(kind) {
            return Err(format!(
                "the testbed cannot make {kind} with nftables; it makes {}",
                names()
            ));
        }
        if cgnat && kind == NatKind::Public {
            return Err("a public host cannot sit behind a carrier-grade NAT (use eim-eif@cgnat for a home router that forwards everything)".into());
        }
        Ok(Home { kind, cgnat })
    }

    /// What the two NATs in a row amount to.
    pub fn effective(self) -> NatKind {
        if self.cgnat {
            compose(self.kind, CGNAT)
        } else {
            self.kind
        }
    }

    /// Every home the testbed makes, in a fixed order (the matrix's).
    pub fn all() -> Vec<Home> {
        let mut v: Vec<Home> = NatKind::all()
            .into_iter()
            .filter(|k| buildable(*k))
            .map(|kind| Home { kind, cgnat: false })
            .collect();
        v.push(Home {
            kind: NatKind::Nat(Mapping::Eim, Filtering::Apdf),
            cgnat: true,
        });
        v
    }
}

impl fmt::Display for Home {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind, if self.cgnat { "@cgnat" } else { "" })
    }
}

/// Kinds nftables can make: Linux masquerade keeps ports (EIM) or randomises them per
/// 5-tuple (APDM); filtering is conntrack's (APDF) or opened by dynamic sets (EIF, ADF,
/// only with port preservation, where the external port names the host's socket).
fn buildable(k: NatKind) -> bool {
    match k {
        NatKind::Public | NatKind::UdpBlocked => true,
        NatKind::Nat(Mapping::Eim, _) => true,
        NatKind::Nat(Mapping::Apdm, Filtering::Apdf) => true,
        NatKind::Nat(_, _) => false,
    }
}

fn names() -> String {
    let mut v: Vec<String> = NatKind::all()
        .into_iter()
        .filter(|k| buildable(*k))
        .map(|k| k.to_string())
        .collect();
    v.push("KIND@cgnat (behind a carrier-grade NAT too)".into());
    v.join(", ")
}

/// Two NATs in a row (`inner` the home router, `outer` the one in front of it): the mapping
/// is the stricter of the two, and so is the filtering; UDP blocked by either stays
/// blocked; a public (absent) NAT changes nothing.
pub fn compose(inner: NatKind, outer: NatKind) -> NatKind {
    match (inner, outer) {
        (NatKind::Public, o) => o,
        (i, NatKind::Public) => i,
        (NatKind::UdpBlocked, _) | (_, NatKind::UdpBlocked) => NatKind::UdpBlocked,
        (NatKind::Nat(m1, f1), NatKind::Nat(m2, f2)) => NatKind::Nat(m1.max(m2), f1.max(f2)),
    }
}

/// Round-trip times of the testbed's network, ms, to put into the model's formulas.
#[derive(Debug, Clone, Copy)]
pub struct Rtts {
    /// Between the two homes, directly.
    pub direct_ms: f64,
    /// Between the two homes through the relay.
    pub relay_ms: f64,
}

/// What the model predicts for one pair of homes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Prediction {
    pub path: Path,
    /// From the dial to the open connection (on the relay, for punched and relayed pairs).
    pub open_ms: f64,
    /// From the dial to the direct connection, for punched pairs (first attempt).
    pub punched_ms: Option<f64>,
}

/// The model's prediction for `dialer` reaching `listener` when the node punches over
/// `transports`, for today's node: it has no AutoNAT client, so only a public host is dialed
/// directly (the room's creator announces its address when it is public); everyone else is
/// reached through its relay circuit and DCUtR — also from a public dialer, whose direct
/// connection is then a dial-back, which the node reports as punched. A home behind the
/// carrier NAT does not keep its port there, so it advertises a port nobody mapped. Two
/// homes behind the one carrier NAT see each other at its public address: without
/// hairpinning no packet sent there comes back in, so they cannot punch.
pub fn predict(
    dialer: Home,
    listener: Home,
    transports: &[Transport],
    hairpin: bool,
    rtts: Rtts,
) -> Prediction {
    let l = listener.effective();
    let host = |h: Home| Host {
        kind: h.effective(),
        keeps_port: !h.cgnat,
    };
    let punched = transports
        .iter()
        .any(|t| punch_hosts(host(dialer), host(listener), *t));
    let path = if l == NatKind::Public {
        Path::Direct
    } else if punched && !(dialer.cgnat && listener.cgnat && !hairpin) {
        Path::Punched
    } else {
        Path::Relayed
    };
    let us = |ms: f64| (ms * 1000.0) as u64;
    let setup = Setup { setup_rtts: 1.0 };
    let ms = |us: u64| us as f64 / 1000.0;
    let (open_us, punched_us) = match path {
        Path::Direct => (setup.direct_us(us(rtts.direct_ms), l.reachable()), None),
        Path::Punched => (
            setup.relayed_us(us(rtts.relay_ms)),
            Some(setup.first_punch_us(us(rtts.relay_ms), us(rtts.direct_ms))),
        ),
        Path::Relayed => (setup.relayed_us(us(rtts.relay_ms)), None),
    };
    Prediction {
        path,
        open_ms: ms(open_us),
        punched_ms: punched_us.map(ms),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn h(s: &str) -> Home {
        Home::parse(s).expect("home")
    }

    const TCP: [Transport; 1] = [Transport::Tcp];
    const RTTS: Rtts = Rtts {
        direct_ms: 1.0,
        relay_ms: 2.0,
    };

    #[test]
    fn names_round_trip_and_unbuildable_kinds_are_refused() {
        for home in Home::all() {
            assert_eq!(Home::parse(&home.to_string()), Ok(home));
        }
        assert_eq!(h("port-preserving"), h("eim-apdf"));
        assert_eq!(h("random-port"), h("apdm-apdf"));
        for bad in ["adm-apdf", "apdm-eif", "public@cgnat", "nat", "eim-apdf@cg"] {
            assert!(Home::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_double_nat_is_as_strict_as_its_stricter_half() {
        assert_eq!(h("eim-eif@cgnat").effective(), CGNAT);
        assert_eq!(
            h("apdm-apdf@cgnat").effective(),
            NatKind::parse("apdm-apdf").expect("kind")
        );
        assert_eq!(h("udp-blocked@cgnat").effective(), NatKind::UdpBlocked);
    }

    #[test]
    fn the_testbed_pairs_the_old_tests_checked() {
        let p = |a: &str, b: &str| predict(h(a), h(b), &TCP, true, RTTS).path;
        assert_eq!(p("public", "public"), Path::Direct);
        assert_eq!(p("port-preserving", "port-preserving"), Path::Punched);
        assert_eq!(p("port-preserving", "random-port"), Path::Relayed);
        assert_eq!(p("random-port", "random-port"), Path::Relayed);
    }

    #[test]
    fn a_home_behind_the_carrier_nat_is_never_reached() {
        let a = h("eim-apdf@cgnat");
        for hairpin in [true, false] {
            assert_eq!(predict(a, a, &TCP, hairpin, RTTS).path, Path::Relayed);
        }
        assert_eq!(
            predict(h("public"), a, &TCP, true, RTTS).path,
            Path::Relayed
        );
        // Dialing out, its SYN comes from a port the listener never heard of: only a
        // listener filtering by address lets it in.
        assert_eq!(
            predict(a, h("eim-adf"), &TCP, true, RTTS).path,
            Path::Punched
        );
        assert_eq!(
            predict(a, h("eim-apdf"), &TCP, true, RTTS).path,
            Path::Relayed
        );
    }

    #[test]
    fn only_a_public_listener_is_dialed_directly() {
        let p = |a: &str, b: &str| predict(h(a), h(b), &TCP, true, RTTS).path;
        assert_eq!(p("apdm-apdf", "public"), Path::Direct);
        // No AutoNAT: a full cone is reached through its circuit, and punched.
        assert_eq!(p("apdm-apdf", "eim-eif"), Path::Punched);
        // A public dialer: the dial-back through DCUtR.
        assert_eq!(p("public", "eim-apdf"), Path::Punched);
        assert_eq!(p("public", "apdm-apdf"), Path::Relayed);
        // UDP blocked: TCP still punches.
        assert_eq!(p("udp-blocked", "eim-apdf"), Path::Punched);
    }

    #[test]
    fn set_up_times_follow_the_engine_formulas() {
        let p = predict(h("eim-apdf"), h("eim-apdf"), &TCP, true, RTTS);
        assert_eq!(p.open_ms, 3.0);
        assert_eq!(p.punched_ms, Some(3.0 + 3.0 + 1.0));
        assert_eq!(
            predict(h("public"), h("public"), &TCP, true, RTTS).punched_ms,
            None
        );
    }
}
