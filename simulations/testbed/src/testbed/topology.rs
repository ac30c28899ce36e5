//! The run's network: the internet segment, the relay host, and each endpoint either on
//! the internet segment or behind its own NAT router.
//!
//! ```text
//!   relay 203.0.113.1 ─┐
//!                      ├─ br0 in "inet" (the internet segment, 203.0.113.0/24)
//!   A: 203.0.113.10 ───┤   public host, or NAT router "ra" ── LAN 10.0.1.0/24 ── host "a"
//!   B: 203.0.113.20 ───┘   public host, or NAT router "rb" ── LAN 10.0.2.0/24 ── host "b"
//! ```

use anyhow::Result;

use confab_simulator::nat::TestbedNat;

use super::netns::{self, Net};

/// The relay's address on the internet segment.
pub const RELAY_IP: &str = "203.0.113.1";
/// The port everything listens on (TCP and QUIC).
pub const PORT: u16 = 4001;

/// One endpoint's place in the topology.
pub struct Endpoint {
    pub label: &'static str,
    pub kind: TestbedNat,
    /// Namespace the node runs in.
    pub ns: String,
    /// Its address on the internet segment (its own, or its router's).
    pub public_ip: &'static str,
}

/// Builds the internet segment, the relay host and one endpoint per side; returns the
/// relay's namespace and the two endpoints.
pub fn build(net: &Net, a: TestbedNat, b: TestbedNat) -> Result<(String, Endpoint, Endpoint)> {
    let inet = net.add_ns("inet")?;
    netns::ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"])?;
    netns::ip(&["-n", &inet, "link", "set", "br0", "up"])?;
    let relay = attach(net, &inet, "relay", RELAY_IP)?;
    let ea = side(net, &inet, "a", a, "203.0.113.10", 1)?;
    let eb = side(net, &inet, "b", b, "203.0.113.20", 2)?;
    Ok((relay, ea, eb))
}

/// A namespace `role` with a `wan` interface on the internet segment at `ip`.
fn attach(net: &Net, inet: &str, role: &str, ip: &str) -> Result<String> {
    let ns = net.add_ns(role)?;
    let port = format!("p-{role}");
    net.veth(inet, &port, &ns, "wan")?;
    netns::ip(&["-n", inet, "link", "set", &port, "master", "br0"])?;
    net.addr(&ns, "wan", &format!("{ip}/24"))?;
    Ok(ns)
}

/// One endpoint: a public host at `ip`, or a host on LAN `10.0.<lan>.0/24` behind a router
/// at `ip` with the NAT of `kind`.
fn side(
    net: &Net,
    inet: &str,
    label: &'static str,
    kind: TestbedNat,
    ip: &'static str,
    lan: u8,
) -> Result<Endpoint> {
    let ns = match kind {
        TestbedNat::Public => attach(net, inet, label, ip)?,
        TestbedNat::PortPreserving | TestbedNat::RandomPort => {
            let router = attach(net, inet, &format!("r{label}"), ip)?;
            let host = net.add_ns(label)?;
            net.veth(&router, "lan", &host, "eth0")?;
            net.addr(&router, "lan", &format!("10.0.{lan}.1/24"))?;
            net.addr(&host, "eth0", &format!("10.0.{lan}.2/24"))?;
            netns::ip(&[
                "-n",
                &host,
                "route",
                "add",
                "default",
                "via",
                &format!("10.0.{lan}.1"),
            ])?;
            net.sysctl(&router, "net.ipv4.ip_forward=1")?;
            net.nft(&router, &nat_rules(kind))?;
            host
        }
    };
    Ok(Endpoint {
        label,
        kind,
        ns,
        public_ip: ip,
    })
}

/// The router's ruleset: source NAT out of `wan` (port-preserving or random per 5-tuple), a
/// forward filter that lets in only replies (conntrack), and an input filter that silently
/// drops unsolicited packets to the router — like a home router, which neither answers a
/// stray SYN with a reset nor a stray UDP packet with an ICMP error (either would kill a hole
/// punch whose first packet arrives before the other side's has opened the mapping).
pub fn nat_rules(kind: TestbedNat) -> String {
    let masq = match kind {
        TestbedNat::RandomPort => "masquerade random,fully-random",
        _ => "masquerade",
    };
    format!(
        "table ip confab_nat {{\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; oifname \"wan\" {masq}; }}\n\
         \tchain forward {{ type filter hook forward priority filter; policy drop; ct state established,related accept; iifname \"lan\" oifname \"wan\" accept; }}\n\
         \tchain input {{ type filter hook input priority filter; policy drop; ct state established,related accept; iifname {{ \"lo\", \"lan\" }} accept; }}\n\
         }}\n"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_differ_by_kind() {
        assert!(nat_rules(TestbedNat::RandomPort).contains("fully-random"));
        assert!(!nat_rules(TestbedNat::PortPreserving).contains("random"));
    }
}
