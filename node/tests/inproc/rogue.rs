//! A member with the ticket that breaks the rules. It speaks the room protocol by hand, with
//! the protocol crate's own Noise handshake, sessions and sender key, so that a test can
//! leave out its `Hello`, send rosters naming peers it made up, or jump its media sequence
//! numbers, on real libp2p connections to real nodes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_node::media::codec::{Encoder, EncoderConfig};
use confab_node::net::{MEDIA_PROTOCOL, ROOM_PROTOCOL};
use confab_protocol::crypto::{
    room_psk, Handshake, HandshakeStep, Identity, LocalStatic, SenderKey, Session,
};
use confab_protocol::ticket::Ticket;
use confab_protocol::wire::{length_prefixed, Control, PeerInfo, RoomFrame};
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{Multiaddr, PeerId, Stream};

use super::{connected_peer, secret};

/// The rogue's libp2p node: connected to its targets, its swarm driven by a task.
pub struct Rogue {
    pub identity: Identity,
    pub peer: PeerId,
    control: libp2p_stream::Control,
}

/// What a target sent on one room session, as the rogue read it.
#[derive(Default)]
pub struct Heard {
    pub controls: Vec<Control>,
    /// When the target closed the stream (or it broke).
    pub closed_at: Option<Instant>,
}

/// One room session with one target, past the handshake.
pub struct RogueSession {
    pub target: PeerId,
    pub started: Instant,
    session: Arc<Mutex<Session>>,
    writer: WriteHalf<Stream>,
    pub heard: Arc<Mutex<Heard>>,
}

impl Rogue {
    /// A new identity, connected to every address of `targets` (each with its `/p2p/`).
    pub async fn connect(targets: &[Multiaddr]) -> Rogue {
        let identity = Identity::from_secret_bytes(&secret());
        let (control, peer) = connected_peer(&identity.secret_bytes(), targets).await;
        Rogue {
            identity,
            peer,
            control,
        }
    }

    /// Opens a room stream to `target` and completes the room handshake with the ticket's
    /// secret. Nothing is sent after it: no `Hello` until [`RogueSession::hello`].
    pub async fn handshake(&self, target: PeerId, t: &Ticket) -> RogueSession {
        let started = Instant::now();
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            self.control.clone().open_stream(target, ROOM_PROTOCOL),
        )
        .await
        .expect("room stream in time")
        .expect("room stream");
        let (mut reader, mut writer) = stream.split();
        let local = LocalStatic::new(&self.identity, &t.room_id, secret()).unwrap();
        let psk = room_psk(&t.room_id, &t.room_secret);
        let mut hs = Handshake::new(true, &local, &t.room_id, &psk, secret()).unwrap();
        while !hs.is_finished() {
            match hs.write().unwrap() {
                HandshakeStep::Send(msg) => send(&mut writer, &RoomFrame::Handshake(msg)).await,
                HandshakeStep::Wait => match read_room_frame(&mut reader).await {
                    Some(RoomFrame::Handshake(msg)) => hs.read(&msg).expect("handshake"),
                    other => panic!("expected a handshake message, got {other:?}"),
                },
            }
        }
        let session = Arc::new(Mutex::new(hs.into_session().unwrap()));
        let heard = Arc::new(Mutex::new(Heard::default()));
        tokio::spawn(listen(reader, session.clone(), heard.clone()));
        RogueSession {
            target,
            started,
            session,
            writer,
            heard,
        }
    }

    /// Handshakes with every target, says `Hello` and hands over `key`: a member of the
    /// room at each of them.
    pub async fn join(
        &self,
        targets: &[PeerId],
        t: &Ticket,
        name: &str,
        key: &SenderKey,
    ) -> Vec<RogueSession> {
        let mut sessions = Vec::new();
        for id in targets {
            let mut s = self.handshake(*id, t).await;
            s.hello(name, key).await;
            sessions.push(s);
        }
        sessions
    }

    /// Opens a media stream to `target`.
    pub async fn media_stream(&self, target: PeerId) -> Stream {
        tokio::time::timeout(
            Duration::from_secs(5),
            self.control.clone().open_stream(target, MEDIA_PROTOCOL),
        )
        .await
        .expect("media stream in time")
        .expect("media stream")
    }
}

impl RogueSession {
    /// Sends one control message on the session.
    pub async fn send(&mut self, c: &Control) {
        let ct = self.session.lock().unwrap().encrypt(&c.encode()).unwrap();
        send(&mut self.writer, &RoomFrame::Transport(ct)).await;
    }

    /// Says `Hello` and hands over `key`: the target admits us.
    pub async fn hello(&mut self, name: &str, key: &SenderKey) {
        self.send(&Control::Hello {
            name: name.into(),
            addrs: vec![],
            recording: false,
        })
        .await;
        self.send(&Control::SenderKey {
            epoch: key.epoch(),
            key: key.key().0,
            fresh: true,
        })
        .await;
    }

    /// Whether the target has sent us its media key.
    pub fn got_key(&self) -> bool {
        self.heard
            .lock()
            .unwrap()
            .controls
            .iter()
            .any(|c| matches!(c, Control::SenderKey { .. }))
    }

    /// How long after the handshake began the target closed the session, if it did.
    pub fn closed_after(&self) -> Option<Duration> {
        let closed = self.heard.lock().unwrap().closed_at;
        closed.map(|t| t.duration_since(self.started))
    }
}

/// A roster naming `n` peers that do not exist, each at `addrs`.
pub fn made_up_roster(n: usize, addrs: &[String]) -> Control {
    let members = (0..n)
        .map(|_| PeerInfo {
            peer_id: Identity::from_secret_bytes(&secret()).peer_id(),
            addrs: addrs.to_vec(),
        })
        .collect();
    Control::Roster { members }
}

/// One Opus packet of a 440 Hz tone, to send over and over.
pub fn opus_packet() -> Vec<u8> {
    let mut enc = Encoder::new(&EncoderConfig::default()).unwrap();
    let pcm: Vec<i16> = (0..enc.frame_samples())
        .map(|i| ((i as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 8_000.0) as i16)
        .collect();
    enc.encode(&pcm).unwrap()
}

/// Writes one media frame (length-prefixed) on a media stream.
pub async fn send_media(stream: &mut Stream, frame: &[u8]) -> bool {
    let bytes = length_prefixed(frame).unwrap();
    stream.write_all(&bytes).await.is_ok() && stream.flush().await.is_ok()
}

async fn send(writer: &mut WriteHalf<Stream>, f: &RoomFrame) {
    let bytes = length_prefixed(&f.encode()).unwrap();
    // The target may have closed the stream; the test reads that from `Heard`.
    let _ = writer.write_all(&bytes).await;
    let _ = writer.flush().await;
}

async fn read_room_frame(reader: &mut ReadHalf<Stream>) -> Option<RoomFrame> {
    let mut len = [0u8; 2];
    reader.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    reader.read_exact(&mut buf).await.ok()?;
    RoomFrame::decode(&buf).ok()
}

/// Reads the target's messages until the stream ends.
async fn listen(
    mut reader: ReadHalf<Stream>,
    session: Arc<Mutex<Session>>,
    heard: Arc<Mutex<Heard>>,
) {
    while let Some(frame) = read_room_frame(&mut reader).await {
        let RoomFrame::Transport(ct) = frame else {
            continue;
        };
        let plain = session.lock().unwrap().decrypt(&ct);
        if let Ok(c) = plain.and_then(|p| Control::decode(&p)) {
            heard.lock().unwrap().controls.push(c);
        }
    }
    heard.lock().unwrap().closed_at = Some(Instant::now());
}
