//! The relay-cannot-read check: reassemble what the relay's interface carried (a pcap file
//! from tcpdump) and search it for the call's plaintext — windows of the sender's PCM, the
//! Opus packets the sender produced, and the room id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Bytes of PCM (16 samples) that make one searched window.
pub const PCM_WINDOW: usize = 32;
/// Shortest Opus packet searched for (shorter ones are too likely to occur by chance).
pub const MIN_OPUS: usize = 12;
/// Prefix length used to index the needles.
const KEY: usize = 12;

/// What to look for.
#[derive(Default)]
pub struct Needles {
    pcm: HashSet<[u8; PCM_WINDOW]>,
    /// (label, bytes) of whole byte strings: Opus packets, the room id.
    strings: Vec<(String, Vec<u8>)>,
    pub opus_packets: usize,
}

/// A window is worth searching if it is not (near) silence or a constant pattern, which
/// could match padding by chance.
fn informative(w: &[u8]) -> bool {
    let mut seen = [false; 256];
    let mut distinct = 0;
    for &b in w {
        if !seen[b as usize] {
            seen[b as usize] = true;
            distinct += 1;
        }
    }
    distinct >= 12
}

impl Needles {
    /// Every 32-byte window (at each sample) of these samples as 16-bit little-endian PCM.
    pub fn add_pcm(&mut self, samples: &[i16]) {
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut i = 0;
        while i + PCM_WINDOW <= bytes.len() {
            let w = &bytes[i..i + PCM_WINDOW];
            if informative(w) {
                let mut a = [0u8; PCM_WINDOW];
                a.copy_from_slice(w);
                self.pcm.insert(a);
            }
            i += 2;
        }
    }

    /// A byte string to look for.
    pub fn add_bytes(&mut self, label: &str, b: &[u8]) {
        if b.len() >= KEY {
            self.strings.push((label.to_string(), b.to_vec()));
        }
    }

    /// Opus packets dumped by `confab call --dump-opus`: each a 2-byte big-endian length and
    /// the packet.
    pub fn add_opus_dump(&mut self, path: &Path) -> Result<()> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut i = 0;
        while i < data.len() {
            let Some(len) = data.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
                bail!("{}: truncated length at byte {i}", path.display());
            };
            let len = len as usize;
            let Some(p) = data.get(i + 2..i + 2 + len) else {
                bail!("{}: truncated packet at byte {i}", path.display());
            };
            if len >= MIN_OPUS {
                self.strings.push(("opus".into(), p.to_vec()));
                self.opus_packets += 1;
            }
            i += 2 + len;
        }
        Ok(())
    }
}

/// What the search found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    pub capture_bytes: usize,
    pub packets: usize,
    /// Bytes of reassembled TCP streams and UDP payloads searched.
    pub payload_bytes: usize,
    pub flows: usize,
    pub pcm_windows_searched: usize,
    pub pcm_windows_found: usize,
    pub opus_packets_searched: usize,
    pub opus_packets_found: usize,
    pub room_id_found: bool,
}

impl Findings {
    /// Nothing of the call was seen.
    pub fn clean(&self) -> bool {
        self.pcm_windows_found == 0 && self.opus_packets_found == 0 && !self.room_id_found
    }

    pub fn summary(&self) -> String {
        format!(
            "relay capture: {} packets, {} payload bytes in {} flows; PCM windows found {}/{}, \
             Opus packets found {}/{}, room id found: {} -> {}",
            self.packets,
            self.payload_bytes,
            self.flows,
            self.pcm_windows_found,
            self.pcm_windows_searched,
            self.opus_packets_found,
            self.opus_packets_searched,
            self.room_id_found,
            if self.clean() {
                "the relay saw none of the call"
            } else {
                "PLAINTEXT VISIBLE TO THE RELAY"
            }
        )
    }
}

/// Searches `haystacks` for the needles.
pub fn search(haystacks: &[Vec<u8>], n: &Needles) -> Findings {
    let mut index: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, (_, s)) in n.strings.iter().enumerate() {
        index.entry(&s[..KEY]).or_default().push(i);
    }
    let mut found_pcm: HashSet<&[u8; PCM_WINDOW]> = HashSet::new();
    let mut found_str: HashSet<usize> = HashSet::new();
    for h in haystacks {
        for i in 0..h.len() {
            if i + PCM_WINDOW <= h.len() {
                let mut a = [0u8; PCM_WINDOW];
                a.copy_from_slice(&h[i..i + PCM_WINDOW]);
                if let Some(w) = n.pcm.get(&a) {
                    found_pcm.insert(w);
                }
            }
            if i + KEY <= h.len() {
                if let Some(cands) = index.get(&h[i..i + KEY]) {
                    for &c in cands {
                        let s = &n.strings[c].1;
                        if h.get(i..i + s.len()) == Some(s.as_slice()) {
                            found_str.insert(c);
                        }
                    }
                }
            }
        }
    }
    let label_found = |l: &str| found_str.iter().filter(|&&c| n.strings[c].0 == l).count();
    Findings {
        payload_bytes: haystacks.iter().map(Vec::len).sum(),
        flows: haystacks.len(),
        pcm_windows_searched: n.pcm.len(),
        pcm_windows_found: found_pcm.len(),
        opus_packets_searched: n.opus_packets,
        opus_packets_found: label_found("opus"),
        room_id_found: found_str
            .iter()
            .any(|&c| n.strings[c].0.starts_with("room id")),
        ..Findings::default()
    }
}

/// Parses a pcap file, reassembles TCP streams, and searches them and the UDP payloads.
pub fn check(pcap: &[u8], n: &Needles) -> Result<Findings> {
    let (packets, hay) = payloads(pcap)?;
    let mut f = search(&hay, n);
    f.capture_bytes = pcap.len();
    f.packets = packets;
    Ok(f)
}

type FlowKey = ([u8; 4], u16, [u8; 4], u16);

/// One TCP direction being reassembled.
#[derive(Default)]
struct Flow {
    next: Option<u32>,
    data: Vec<u8>,
}

impl Flow {
    fn push(&mut self, seq: u32, payload: &[u8]) {
        let next = *self.next.get_or_insert(seq);
        // Offset of this segment relative to what we have (wrapping sequence space).
        let off = seq.wrapping_sub(next) as i32;
        if off >= 0 {
            // In order, or a gap (lost from the capture): append as is.
            self.data.extend_from_slice(payload);
            self.next = Some(seq.wrapping_add(payload.len() as u32));
        } else {
            // A retransmission overlapping what we have: keep only the new tail.
            let skip = off.unsigned_abs() as usize;
            if skip < payload.len() {
                self.data.extend_from_slice(&payload[skip..]);
                self.next = Some(seq.wrapping_add(payload.len() as u32));
            }
        }
    }
}

/// Returns (packet count, byte strings to search): one per TCP direction, one per UDP payload.
pub fn payloads(pcap: &[u8]) -> Result<(usize, Vec<Vec<u8>>)> {
    let Some(magic) = pcap.get(0..4) else {
        bail!("capture too short for a pcap header");
    };
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        let s = b.get(i..i + 4)?;
        let a = [s[0], s[1], s[2], s[3]];
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let Some(linktype) = u32_at(pcap, 20) else {
        bail!("capture too short for a pcap header");
    };
    // Ethernet (1) on a veth; Linux cooked captures (113, 276) for `-i any`.
    let l2 = match linktype {
        1 => 14,
        113 => 16,
        276 => 20,
        other => bail!("unsupported link type {other}"),
    };
    let mut flows: BTreeMap<FlowKey, Flow> = BTreeMap::new();
    let mut udp: Vec<Vec<u8>> = Vec::new();
    let mut i = 24;
    let mut packets = 0;
    while i + 16 <= pcap.len() {
        let Some(incl) = u32_at(pcap, i + 8) else {
            break;
        };
        let start = i + 16;
        let Some(frame) = pcap.get(start..start + incl as usize) else {
            break; // truncated last record (capture stopped mid-write)
        };
        i = start + incl as usize;
        packets += 1;
        let Some(ip) = frame.get(l2..) else { continue };
        // Ethertype: only IPv4 (the testbed uses IPv4 only).
        let ethertype = frame
            .get(l2 - 2..l2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        if ethertype != Some(0x0800) || ip.len() < 20 || ip[0] >> 4 != 4 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let proto = ip[9];
        let (Some(src), Some(dst)) = (ip.get(12..16), ip.get(16..20)) else {
            continue;
        };
        let (src, dst) = (
            [src[0], src[1], src[2], src[3]],
            [dst[0], dst[1], dst[2], dst[3]],
        );
        let Some(l4) = ip.get(ihl..total) else {
            continue;
        };
        match proto {
            6 if l4.len() >= 20 => {
                let sport = u16::from_be_bytes([l4[0], l4[1]]);
                let dport = u16::from_be_bytes([l4[2], l4[3]]);
                let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
                let doff = usize::from(l4[12] >> 4) * 4;
                if let Some(payload) = l4.get(doff..) {
                    if !payload.is_empty() {
                        flows
                            .entry((src, sport, dst, dport))
                            .or_default()
                            .push(seq, payload);
                    }
                }
            }
            17 if l4.len() >= 8 => udp.push(l4[8..].to_vec()),
            _ => {}
        }
    }
    let mut out: Vec<Vec<u8>> = flows.into_values().map(|f| f.data).collect();
    out.extend(udp);
    Ok((packets, out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn pcap_with_tcp(segments: &[(u32, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        v.extend_from_slice(&[2, 0, 4, 0]);
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&65535u32.to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        for (seq, payload) in segments {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00]);
            let total = 20 + 20 + payload.len();
            let mut ip = vec![
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0,
                0,
                64,
                6,
                0,
                0,
            ];
            ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            let mut tcp = vec![0x0f, 0xa1, 0x0f, 0xa2];
            tcp.extend_from_slice(&seq.to_be_bytes());
            tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0, 0, 0, 0, 0, 0]);
            frame.extend_from_slice(&ip);
            frame.extend_from_slice(&tcp);
            frame.extend_from_slice(payload);
            v.extend_from_slice(&[0; 8]);
            v.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            v.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            v.extend_from_slice(&frame);
        }
        v
    }

    #[test]
    fn finds_plaintext_split_across_segments_and_retransmitted() {
        let samples: Vec<i16> = (0..400)
            .map(|k| ((k * 7919) % 20000 - 10000) as i16)
            .collect();
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let room = [0x5a; 16];
        let mut stream = b"header".to_vec();
        stream.extend_from_slice(&pcm[100..200]);
        stream.extend_from_slice(&room);
        // Split mid-window, and retransmit the first part.
        let (p1, p2) = stream.split_at(40);
        let cap = pcap_with_tcp(&[(1000, p1), (1000, p1), (1040, p2)]);
        let mut n = Needles::default();
        n.add_pcm(&samples);
        n.add_bytes("room id", &room);
        let f = check(&cap, &n).expect("parses");
        assert_eq!(f.packets, 3);
        assert!(f.pcm_windows_found > 0, "{f:?}");
        assert!(f.room_id_found);
        assert!(!f.clean());
    }

    #[test]
    fn clean_stream_is_clean() {
        let samples: Vec<i16> = (0..400)
            .map(|k| ((k * 7919) % 20000 - 10000) as i16)
            .collect();
        let noise: Vec<u8> = (0..2000u32)
            .map(|k| (k.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let cap = pcap_with_tcp(&[(5, &noise)]);
        let mut n = Needles::default();
        n.add_pcm(&samples);
        n.add_bytes("room id", &[0x5a; 16]);
        let f = check(&cap, &n).expect("parses");
        assert!(f.clean(), "{f:?}");
        assert_eq!(f.payload_bytes, 2000);
    }

    #[test]
    fn opus_dump_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("d.opus");
        let pkt: Vec<u8> = (0..40u8).map(|x| x.wrapping_mul(37)).collect();
        let mut d = (pkt.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&pkt);
        d.extend_from_slice(&[0, 1, 0xfc]);
        std::fs::write(&p, &d).expect("write");
        let mut n = Needles::default();
        n.add_opus_dump(&p).expect("reads");
        assert_eq!(n.opus_packets, 1);
        let f = search(std::slice::from_ref(&pkt), &n);
        assert_eq!(f.opus_packets_found, 1);
        std::fs::write(&p, &d[..10]).expect("write");
        assert!(Needles::default().add_opus_dump(&p).is_err());
    }
}
