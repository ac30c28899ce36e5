//! The nftables rulesets of the testbed's routers: the home routers (one NAT kind each) and
//! the carrier-grade NAT.
//!
//! Every router has a forward filter that admits only conntrack replies from the WAN (plus
//! what its filtering behaviour opens), and an input filter that silently drops unsolicited
//! packets to the router itself — like a home router, which neither answers a stray SYN with
//! a reset nor a stray UDP packet with an ICMP error (either would kill a hole punch whose
//! first packet arrives before the other side's has opened the mapping).
//!
//! | kind | mapping | filtering |
//! | --- | --- | --- |
//! | `eim-apdf` | `masquerade` (keeps the port) | conntrack: replies to the exact 5-tuple |
//! | `eim-adf` | 〃 | 〃, plus new packets to a port the host sent from, from an address it sent to (dynamic set, DNAT to the host) |
//! | `eim-eif` | 〃 | 〃, plus new packets from anyone to a port the host sent from |
//! | `apdm-apdf` | `masquerade random,fully-random` | conntrack |
//! | `udp-blocked` | `masquerade` | conntrack; every UDP packet dropped |
//!
//! EIF and ADF rely on port preservation: the external port is the host's own, so a DNAT to
//! the host's address (port unchanged) reaches the socket the mapping belongs to. Set
//! entries expire two minutes after the host last sent from that port (to that address).

use anyhow::{bail, Result};

use confab_simulator::nat::{Filtering, Mapping, NatKind};

/// How long an opened filter entry lives after the host last used it.
const FILTER_TIMEOUT: &str = "120s";

/// The ruleset of a home router with NAT `kind` in front of the host at `host_ip`.
pub fn home(kind: NatKind, host_ip: &str) -> Result<String> {
    let (masq, filtering, udp) = match kind {
        NatKind::Nat(Mapping::Eim, f) => ("masquerade", f, true),
        NatKind::Nat(Mapping::Apdm, Filtering::Apdf) => {
            ("masquerade random,fully-random", Filtering::Apdf, true)
        }
        NatKind::UdpBlocked => ("masquerade", Filtering::Apdf, false),
        other => bail!("the testbed has no router for {other}"),
    };
    let (sets, prerouting, learn) = match filtering {
        Filtering::Apdf => (String::new(), String::new(), String::new()),
        Filtering::Eif => (
            format!("\tset opened {{ type inet_proto . inet_service; flags dynamic,timeout; timeout {FILTER_TIMEOUT}; }}\n"),
            format!("iifname \"wan\" meta l4proto {{ tcp, udp }} meta l4proto . th dport @opened dnat to {host_ip}; "),
            "iifname \"lan\" oifname \"wan\" meta l4proto { tcp, udp } update @opened { meta l4proto . th sport }; ".to_string(),
        ),
        Filtering::Adf => (
            format!("\tset opened {{ type ipv4_addr . inet_proto . inet_service; flags dynamic,timeout; timeout {FILTER_TIMEOUT}; }}\n"),
            format!("iifname \"wan\" meta l4proto {{ tcp, udp }} ip saddr . meta l4proto . th dport @opened dnat to {host_ip}; "),
            "iifname \"lan\" oifname \"wan\" meta l4proto { tcp, udp } update @opened { ip daddr . meta l4proto . th sport }; ".to_string(),
        ),
    };
    let drop_udp = if udp { "" } else { "meta l4proto udp drop; " };
    Ok(format!(
        "table ip confab_nat {{\n{sets}\
         \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept; {prerouting}}}\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; oifname \"wan\" {masq}; }}\n\
         \tchain forward {{ type filter hook forward priority filter; policy drop; {drop_udp}{learn}ct state established,related accept; ct status dnat accept; iifname \"lan\" oifname \"wan\" accept; }}\n\
         \tchain input {{ type filter hook input priority filter; policy drop; ct state established,related accept; iifname {{ \"lo\", \"lan\" }} accept; }}\n\
         }}\n"
    ))
}

/// The carrier NAT's public port for the home behind its link `index`: deterministic NAT
/// (RFC 7422), so the mapping of the home's port 4001 is the same whatever the destination
/// (endpoint-independent), and two homes never collide.
pub fn carrier_port(index: usize) -> u16 {
    10_001 + 1000 * index as u16
}

/// The carrier NAT's ruleset for the homes behind its links `h<i>` (home router at
/// 100.64.<i>.2), with its public address `public_ip`: port 4001 of each home mapped to its
/// own public port (other ports masqueraded), conntrack filtering, and with `hairpin` a
/// packet from one home to the public address and a home's port goes back in to that home,
/// from the sender's public address and port (RFC 4787 REQ-9).
pub fn carrier(behind: &[usize], public_ip: &str, hairpin: bool) -> String {
    let mut pre = String::new();
    let mut post = String::new();
    for &i in behind {
        let p = carrier_port(i);
        let home = format!("100.64.{i}.2");
        let m = format!(
            "ip saddr {home} meta l4proto {{ tcp, udp }} th sport 4001 snat to {public_ip}:{p}"
        );
        post.push_str(&format!("oifname \"wan\" {m}; "));
        if hairpin {
            pre.push_str(&format!("iifname \"h*\" ip daddr {public_ip} meta l4proto {{ tcp, udp }} th dport {p} dnat to {home}:4001; "));
            post.push_str(&format!(
                "iifname \"h*\" oifname \"h*\" ct status dnat {m}; "
            ));
        }
    }
    let hairpin_fwd = if hairpin {
        "iifname \"h*\" oifname \"h*\" ct status dnat accept; "
    } else {
        ""
    };
    format!(
        "table ip confab_cgnat {{\n\
         \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept; {pre}}}\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; {post}oifname \"wan\" masquerade; }}\n\
         \tchain forward {{ type filter hook forward priority filter; policy drop; ct state established,related accept; {hairpin_fwd}iifname \"h*\" oifname \"wan\" accept; }}\n\
         \tchain input {{ type filter hook input priority filter; policy drop; ct state established,related accept; iifname \"lo\" accept; }}\n\
         }}\n"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn k(s: &str) -> NatKind {
        NatKind::parse(s).expect("kind")
    }

    #[test]
    fn rulesets_differ_by_kind() {
        let r = |s: &str| home(k(s), "10.0.1.2").expect("ruleset");
        assert!(r("random-port").contains("fully-random"));
        assert!(!r("port-preserving").contains("random"));
        assert!(!r("port-preserving").contains("@opened"));
        assert!(r("eim-eif").contains("meta l4proto . th dport @opened"));
        assert!(r("eim-adf").contains("ip saddr . meta l4proto . th dport @opened"));
        assert!(r("udp-blocked").contains("meta l4proto udp drop"));
        assert!(home(k("adm-apdf"), "10.0.1.2").is_err());
    }

    #[test]
    fn the_carrier_hairpins_only_when_asked() {
        let on = carrier(&[1, 2], "203.0.113.200", true);
        assert!(on.contains("dnat to 100.64.2.2:4001"));
        assert!(on.contains("snat to 203.0.113.200:11001"));
        let off = carrier(&[1, 2], "203.0.113.200", false);
        assert!(!off.contains("dnat"));
        assert!(off.contains("snat to 203.0.113.200:12001"));
    }
}
