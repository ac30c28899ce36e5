//! Creating a room: a fresh id and secret, and a ticket that names this account's node.

use confab_protocol::crypto::Identity;
use confab_protocol::ticket::Ticket;
use confab_protocol::wire::{PeerInfo, MAX_ADDRS};
use rand::RngCore;

use super::{AccountError, Store, StoredRoom};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a room and stores it: its ticket bootstraps from this account's node at `addrs`
/// (circuit addresses first, they work from behind any NAT); `listen` is what a call of
/// this room listens on, when the room has addresses of its own (empty: the node's).
pub fn new_room(
    store: &Store,
    addrs: Vec<String>,
    listen: Vec<String>,
) -> Result<StoredRoom, AccountError> {
    if addrs.len() > MAX_ADDRS {
        return Err(AccountError::Io(format!(
            "a ticket holds at most {MAX_ADDRS} addresses per member; this one would have {}",
            addrs.len()
        )));
    }
    let secret = zeroize::Zeroizing::new(store.require_identity()?);
    let identity = Identity::from_secret_bytes(&secret);
    let mut room_id = [0u8; 16];
    let mut room_secret = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut room_id);
    rand::rngs::OsRng.fill_bytes(room_secret.as_mut());
    let ticket = Ticket {
        room_id,
        room_secret: *room_secret,
        bootstrap: vec![PeerInfo {
            peer_id: identity.peer_id(),
            addrs,
        }],
    };
    let room = StoredRoom {
        room_id: hex(&room_id),
        secret: hex(room_secret.as_ref()),
        listen,
        ticket: ticket.to_string(),
        created_ms: crate::clock::now_ms(),
    };
    store.put_room(&room)?;
    Ok(room)
}
