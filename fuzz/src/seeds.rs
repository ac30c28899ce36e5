//! Writes a starting corpus for every fuzz target: valid encodings of each message kind,
//! so that AFL++ starts past the first length check. `cargo run --release --bin seeds`
//! (a normal build) fills `seeds/<target>/`.

use std::path::Path;

use confab_protocol::crypto::{Identity, SenderKey};
use confab_protocol::ticket::Ticket;
use confab_protocol::video::wire::{Fragment, VideoMessage};
use confab_protocol::video::TrackKind;
use confab_protocol::wire::{Control, PeerInfo, RejectReason, RoomFrame};

fn controls() -> Vec<Vec<u8>> {
    let peer = PeerInfo {
        peer_id: Identity::from_secret_bytes(&[7; 32]).peer_id(),
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into(), "/dns/relay.example/udp/4001/quic-v1".into()],
    };
    [
        Control::Hello { name: "ada".into(), addrs: peer.addrs.clone(), recording: true },
        Control::Roster { members: vec![peer.clone(), peer] },
        Control::SenderKey { epoch: 3, key: [9; 32], fresh: true },
        Control::Recording { on: true },
        Control::Leave,
        Control::Heartbeat,
        Control::Chat { text: "hello, room".into() },
        Control::Muted { on: false },
    ]
    .iter()
    .map(Control::encode)
    .collect()
}

fn room_frames() -> Vec<Vec<u8>> {
    vec![
        RoomFrame::Handshake(vec![0x42; 32]).encode(),
        RoomFrame::Transport(vec![0x17; 80]).encode(),
        RoomFrame::Reject(RejectReason::RoomFull).encode(),
    ]
}

fn media_frames() -> Vec<Vec<u8>> {
    let mut key = SenderKey::new(&mut rand::rngs::OsRng);
    vec![
        key.encrypt(1_764_330_000_000, &[0xfc; 60], None).map(|f| f.encode()).unwrap_or_default(),
        key.encrypt(1_764_330_000_020, &[0xfc; 20], Some(120)).map(|f| f.encode()).unwrap_or_default(),
    ]
}

fn tickets() -> Vec<Vec<u8>> {
    let t = Ticket {
        room_id: [1; 16],
        room_secret: [2; 32],
        bootstrap: vec![PeerInfo {
            peer_id: Identity::from_secret_bytes(&[3; 32]).peer_id(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        }],
    };
    vec![t.to_bytes(), t.to_string().into_bytes()]
}

fn video_messages() -> Vec<Vec<u8>> {
    let frag = |index, count| {
        VideoMessage::Fragment(Fragment {
            kind: TrackKind::Camera,
            epoch: 0,
            seq: 7,
            index,
            count,
            chunk: vec![0x33; 100],
        })
        .encode()
    };
    vec![
        frag(0, 2),
        frag(1, 2),
        VideoMessage::KeyframeRequest { kind: TrackKind::Screen }.encode(),
    ]
}

/// Frames in the split format of the state-machine targets: a length byte, then the bytes.
fn framed(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames.iter().filter(|f| f.len() <= 255) {
        out.push(f.len() as u8);
        out.extend_from_slice(f);
    }
    out
}

const EXPORT: &str = r#"{"format":"confab-account","version":1,"exported_ms":1764330000000,
"peer_id":"12D3KooWA","name":"ada","rooms":[{"room_id":"00","secret":"00","listen":[],
"ticket":"confab1aa","created_ms":0}],"settings":{"listen":[],"relays":[]},
"history_retention_days":30,"history":[{"room_id":"00","peers":[],"started_ms":0,"duration_ms":0}]}"#;

fn write(root: &Path, target: &str, samples: &[Vec<u8>]) -> std::io::Result<()> {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir)?;
    for (i, s) in samples.iter().enumerate() {
        std::fs::write(dir.join(format!("{i}")), s)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    write(&root, "room_frame", &room_frames())?;
    write(&root, "control", &controls())?;
    write(&root, "media_frame", &media_frames())?;
    write(&root, "ticket", &tickets())?;
    write(&root, "video_message", &video_messages())?;
    write(&root, "video_reassembly", &[framed(&video_messages())])?;
    write(&root, "room_state_machine", &[framed(&room_frames()), framed(&media_frames())])?;
    let example = include_str!("../../relay/example.toml");
    write(&root, "relay_config", &[example.as_bytes().to_vec(), b"[limits]\nmax_circuits = 4\n".to_vec()])?;
    write(&root, "export", &[EXPORT.as_bytes().to_vec()])?;
    Ok(())
}
