//! The run's network: the internet segment, the relay host, and each member either on the
//! internet segment or behind its own NAT router — which may itself sit behind the shared
//! carrier-grade NAT (a double NAT).
//!
//! ```text
//!   relay 203.0.113.1 ─┐
//!                      ├─ br0 in "inet" (the internet segment, 203.0.113.0/24)
//!   a: 203.0.113.10 ───┤   public host, or NAT router "ra" ── LAN 10.0.1.0/24 ── host "a"
//!   b: 203.0.113.20 ───┤   public host, or NAT router "rb" ── LAN 10.0.2.0/24 ── host "b"
//!   ...                │
//!   cg: 203.0.113.200 ─┘   carrier NAT "cg" ── 100.64.<i>.0/24 ── router "r<x>" ── LAN ── host "<x>"
//! ```
//!
//! The NAT rulesets are in [`rules`].

use anyhow::Result;

use confab_simulator::nat::NatKind;
use confab_simulator::realnat::Home;

use super::netns::{self, Net};
use super::rules;

/// The relay's address on the internet segment.
pub const RELAY_IP: &str = "203.0.113.1";
/// The carrier-grade NAT's public address.
pub const CGNAT_IP: &str = "203.0.113.200";
/// The port everything listens on (TCP and QUIC).
pub const PORT: u16 = 4001;

/// One member's place in the topology.
pub struct Endpoint {
    pub label: String,
    pub home: Home,
    /// Namespace the node runs in.
    pub ns: String,
    /// Its address on the internet segment (its own, its router's, or the carrier NAT's).
    pub public_ip: String,
}

/// The label of member `i`: a, b, c, ...
pub fn label(i: usize) -> String {
    char::from(b'a' + (i % 26) as u8).to_string()
}

/// Builds the internet segment, the relay host, the carrier NAT if a home needs it, and one
/// endpoint per home; returns the relay's namespace and the endpoints.
pub fn build(net: &Net, homes: &[Home], hairpin: bool) -> Result<(String, Vec<Endpoint>)> {
    let inet = net.add_ns("inet")?;
    netns::ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"])?;
    netns::ip(&["-n", &inet, "link", "set", "br0", "up"])?;
    let relay = attach(net, &inet, "relay", RELAY_IP)?;
    let behind: Vec<usize> = (0..homes.len()).filter(|i| homes[*i].cgnat).collect();
    let cg = if behind.is_empty() {
        None
    } else {
        Some(carrier(net, &inet, &behind, hairpin)?)
    };
    let mut eps = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        let up = match (&cg, home.cgnat) {
            (Some(cg), true) => Uplink::Carrier { cg, index: i },
            _ => Uplink::Internet {
                inet: &inet,
                ip: format!("203.0.113.{}", 10 + 10 * i),
            },
        };
        eps.push(side(net, up, label(i), *home, i)?);
    }
    Ok((relay, eps))
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

/// The carrier NAT `cg` on the internet segment, with one link `h<i>` (100.64.<i>.1/24) per
/// home behind it, and its ruleset.
fn carrier(net: &Net, inet: &str, behind: &[usize], hairpin: bool) -> Result<String> {
    let cg = attach(net, inet, "cg", CGNAT_IP)?;
    net.sysctl(&cg, "net.ipv4.ip_forward=1")?;
    net.nft(&cg, &rules::carrier(behind, CGNAT_IP, hairpin))?;
    Ok(cg)
}

/// Where a home router's WAN side is plugged in.
enum Uplink<'a> {
    Internet { inet: &'a str, ip: String },
    Carrier { cg: &'a str, index: usize },
}

/// One endpoint: a public host, or a host on LAN `10.0.<i+1>.0/24` behind a router with the
/// home's NAT, whose WAN side is on the internet or behind the carrier NAT.
fn side(net: &Net, up: Uplink<'_>, label: String, home: Home, i: usize) -> Result<Endpoint> {
    if home.kind == NatKind::Public {
        let Uplink::Internet { inet, ip } = up else {
            anyhow::bail!("a public host cannot sit behind the carrier NAT");
        };
        let ns = attach(net, inet, &label, &ip)?;
        return Ok(Endpoint {
            label,
            home,
            ns,
            public_ip: ip,
        });
    }
    let role = format!("r{label}");
    let (router, public_ip) = match up {
        Uplink::Internet { inet, ip } => (attach(net, inet, &role, &ip)?, ip),
        Uplink::Carrier { cg, index } => {
            let r = net.add_ns(&role)?;
            net.veth(cg, &format!("h{index}"), &r, "wan")?;
            net.addr(cg, &format!("h{index}"), &format!("100.64.{index}.1/24"))?;
            net.addr(&r, "wan", &format!("100.64.{index}.2/24"))?;
            netns::ip(&[
                "-n",
                &r,
                "route",
                "add",
                "default",
                "via",
                &format!("100.64.{index}.1"),
            ])?;
            (r, CGNAT_IP.to_string())
        }
    };
    let lan = i + 1;
    let host = net.add_ns(&label)?;
    net.veth(&router, "lan", &host, "eth0")?;
    net.addr(&router, "lan", &format!("10.0.{lan}.1/24"))?;
    let host_ip = format!("10.0.{lan}.2");
    net.addr(&host, "eth0", &format!("{host_ip}/24"))?;
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
    net.nft(&router, &rules::home(home.kind, &host_ip)?)?;
    Ok(Endpoint {
        label,
        home,
        ns: host,
        public_ip,
    })
}
