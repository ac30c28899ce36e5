//! Room tickets: one copy-pasteable string that lets its holder join a room.
//!
//! Text form: `confab1` followed by the lowercase RFC 4648 base32 (no padding) of
//! `version(1) | room_id(16) | room_secret(32) | n(1) | n × PeerInfo | checksum(4)`, where
//! the checksum is the first four bytes of BLAKE2s-256 over `"confab-ticket" | everything
//! before it`. Whitespace inside the string is ignored, so a ticket survives being wrapped
//! by a mail client; case is ignored.

use blake2::{Blake2s256, Digest};
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::wire::{PeerInfo, Reader, Writer};
use crate::{RoomId, RoomSecret};

/// Prefix of every ticket; the digit is the ticket format's major version.
pub const PREFIX: &str = "confab1";
/// Binary format version inside the ticket.
pub const TICKET_VERSION: u8 = 1;
/// Most bootstrap peers in one ticket.
pub const MAX_BOOTSTRAP: usize = 8;
/// Longest ticket string accepted (characters).
pub const MAX_TICKET_LEN: usize = 8 * 1024;

const CHECKSUM_LEN: usize = 4;

/// What a ticket holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    pub room_id: RoomId,
    pub room_secret: RoomSecret,
    /// Members to contact first.
    pub bootstrap: Vec<PeerInfo>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Ticket")
            .field("room_id", &hex(&self.room_id))
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.room_secret.zeroize();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = Blake2s256::new();
    h.update(b"confab-ticket");
    h.update(body);
    let digest = h.finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

impl Ticket {
    /// The room id as lowercase hex (for display and storage keys).
    pub fn room_id_hex(&self) -> String {
        hex(&self.room_id)
    }

    /// Binary form, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(TICKET_VERSION)
            .bytes(&self.room_id)
            .bytes(&self.room_secret);
        let n = self.bootstrap.len().min(MAX_BOOTSTRAP);
        w.u8(n as u8);
        for p in &self.bootstrap[..n] {
            p.write(&mut w);
        }
        let sum = checksum(&w.buf);
        w.bytes(&sum);
        w.buf
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < CHECKSUM_LEN + 1 {
            return Err(Error::InvalidTicket("too short"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if checksum(body) != sum {
            return Err(Error::InvalidTicket(
                "checksum mismatch (the ticket was altered or not copied whole)",
            ));
        }
        let mut r = Reader::new(body);
        let version = r.u8()?;
        if version != TICKET_VERSION {
            return Err(Error::InvalidTicket("unsupported ticket version"));
        }
        let room_id = r.array()?;
        let room_secret = r.array()?;
        let n = r.count("bootstrap list", MAX_BOOTSTRAP)?;
        let mut bootstrap = Vec::with_capacity(n);
        for _ in 0..n {
            bootstrap.push(PeerInfo::read(&mut r)?);
        }
        r.finish()?;
        Ok(Self {
            room_id,
            room_secret,
            bootstrap,
        })
    }

    /// Parses the text form. Errors say what is wrong without echoing the secret.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_TICKET_LEN {
            return Err(Error::InvalidTicket("too long"));
        }
        let compact: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        let Some(rest) = compact.strip_prefix(PREFIX) else {
            return Err(Error::InvalidTicket("it does not start with \"confab1\""));
        };
        let bytes = data_encoding::BASE32_NOPAD
            .decode(rest.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::InvalidTicket("not valid base32"))?;
        Self::from_bytes(&bytes)
    }
}

impl std::fmt::Display for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = data_encoding::BASE32_NOPAD
            .encode(&self.to_bytes())
            .to_ascii_lowercase();
        write!(f, "{PREFIX}{body}")
    }
}

impl std::str::FromStr for Ticket {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ticket() -> impl Strategy<Value = Ticket> {
        (
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 1..40),
                    proptest::collection::vec("/ip4/[0-9.]{7,15}/tcp/[0-9]{1,5}", 0..4),
                )
                    .prop_map(|(peer_id, addrs)| PeerInfo { peer_id, addrs }),
                0..=MAX_BOOTSTRAP,
            ),
        )
            .prop_map(|(room_id, room_secret, bootstrap)| Ticket {
                room_id,
                room_secret,
                bootstrap,
            })
    }

    proptest! {
        #[test]
        fn roundtrip(t in ticket()) {
            let text = t.to_string();
            prop_assert!(text.starts_with(PREFIX));
            prop_assert_eq!(Ticket::parse(&text), Ok(t.clone()));
            // Case and wrapping do not matter.
            let wrapped: String = text.to_ascii_uppercase().chars().collect::<Vec<_>>()
                .chunks(60).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("\n");
            prop_assert_eq!(Ticket::parse(&wrapped), Ok(t));
        }

        #[test]
        fn any_single_change_is_detected(t in ticket(), pos in any::<usize>(), flip in 1u8..=255) {
            let mut bytes = t.to_bytes();
            let i = pos % bytes.len();
            bytes[i] ^= flip;
            prop_assert!(Ticket::from_bytes(&bytes).is_err());
        }

        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            let _ = Ticket::parse(&s);
        }

        #[test]
        fn from_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Ticket::from_bytes(&b);
        }
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(
            Ticket::parse("hello"),
            Err(Error::InvalidTicket("it does not start with \"confab1\""))
        );
        assert_eq!(
            Ticket::parse("confab1!!!"),
            Err(Error::InvalidTicket("not valid base32"))
        );
        let t = Ticket {
            room_id: [1; 16],
            room_secret: [2; 32],
            bootstrap: vec![],
        };
        let mut text = t.to_string();
        // Change one character in the middle (the secret).
        let mid = PREFIX.len() + 40;
        let c = text.as_bytes()[mid];
        let replacement = if c == b'a' { "b" } else { "a" };
        text.replace_range(mid..=mid, replacement);
        assert!(
            matches!(Ticket::parse(&text), Err(Error::InvalidTicket(m)) if m.contains("checksum"))
        );
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let t = Ticket {
            room_id: [1; 16],
            room_secret: [0xab; 32],
            bootstrap: vec![],
        };
        assert!(!format!("{t:?}").contains("abab"));
        assert!(!format!("{t:?}").contains("171, 171"));
    }
}
