//! Every decoder of untrusted bytes never panics: room frames, control messages, media
//! frames, tickets (binary and text), and the room state machine fed arbitrary frames. The
//! checks themselves are `confab_protocol::fuzzing`, which the fuzz targets in `fuzz/` run too.
//!
//! Each property runs twice: a short run in the normal suite and a long run of
//! [`LONG_CASES`] cases behind `#[ignore]`:
//!
//! ```text
//! cargo test --release -p confab-protocol --test decoders -- --ignored long_
//! ```
//!
//! Inputs are both raw random bytes and mutations (flips, cuts, insertions, splices) of
//! valid encodings, so that the long runs reach past the first length check.

#![allow(clippy::expect_used)] // test helpers outside #[test] functions

use blake2::{Blake2s256, Digest};
use confab_protocol::fuzzing;
use confab_protocol::ticket::Ticket;
use confab_protocol::wire::{
    Control, MediaFormat, MediaFrame, MediaHeader, PeerInfo, RejectReason, RoomFrame,
    FRAME_DURATIONS_MS, MAX_LOOKAHEAD_US,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per decoder in the long runs.
const LONG_CASES: u32 = 100_000;

fn config(cases: u32) -> Config {
    Config {
        cases,
        // A deep input space: let the long runs spend their cases on new inputs.
        max_global_rejects: 0,
        ..Config::default()
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Truncate(usize),
    SetLen(usize, u8),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
        any::<usize>().prop_map(Edit::Cut),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (
            any::<usize>(),
            prop_oneof![Just(0u8), Just(1), Just(255), any::<u8>()]
        )
            .prop_map(|(i, b)| Edit::SetLen(i, b)),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len();
        match e {
            Edit::Flip(i, x) if n > 0 => bytes[i % n] ^= x,
            Edit::SetLen(i, b) if n > 0 => bytes[i % n] = *b,
            Edit::Cut(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Edit::Insert(i, b) => {
                let at = i % (n + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Truncate(i) => bytes.truncate(i % (n + 1)),
            _ => {}
        }
    }
    bytes
}

fn addr() -> impl Strategy<Value = String> {
    prop_oneof![
        "/ip4/[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/tcp/[0-9]{1,5}",
        "/ip6/[0-9a-f:]{2,20}/udp/[0-9]{1,5}/quic-v1",
        "[ -~]{0,40}",
    ]
}

fn peer_info() -> impl Strategy<Value = PeerInfo> {
    (
        proptest::collection::vec(any::<u8>(), 1..=64),
        proptest::collection::vec(addr(), 0..=8),
    )
        .prop_map(|(peer_id, addrs)| PeerInfo { peer_id, addrs })
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        (
            "[ -~é]{0,70}",
            proptest::collection::vec(addr(), 0..=8),
            any::<bool>()
        )
            .prop_map(|(name, addrs, recording)| Control::Hello {
                name,
                addrs,
                recording
            }),
        proptest::collection::vec(peer_info(), 0..10)
            .prop_map(|members| Control::Roster { members }),
        (any::<u32>(), any::<[u8; 32]>(), any::<bool>())
            .prop_map(|(epoch, key, fresh)| Control::SenderKey { epoch, key, fresh }),
        any::<bool>().prop_map(|on| Control::Recording { on }),
        Just(Control::Leave),
        Just(Control::Heartbeat),
    ]
}

fn room_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600)
            .prop_map(|b| RoomFrame::Handshake(b).encode()),
        proptest::collection::vec(any::<u8>(), 0..600)
            .prop_map(|b| RoomFrame::Transport(b).encode()),
        prop_oneof![
            Just(RejectReason::BadSecret),
            Just(RejectReason::BadIdentity),
            Just(RejectReason::RoomFull),
            Just(RejectReason::Protocol)
        ]
        .prop_map(|r| RoomFrame::Reject(r).encode()),
    ]
}

fn media_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..2,
        (0usize..FRAME_DURATIONS_MS.len(), 0..=MAX_LOOKAHEAD_US),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..1500),
    )
        .prop_map(
            |(flags, (frame, lookahead_us), epoch, seq, capture_ts_ms, ciphertext)| {
                MediaFrame {
                    header: MediaHeader {
                        flags,
                        format: MediaFormat {
                            frame_ms: FRAME_DURATIONS_MS[frame],
                            lookahead_us,
                        },
                        epoch,
                        seq,
                        capture_ts_ms,
                    },
                    ciphertext,
                }
                .encode()
            },
        )
}

/// A ticket body with a valid checksum, so that decoding gets past the checksum.
fn with_checksum(mut body: Vec<u8>) -> Vec<u8> {
    let mut h = Blake2s256::new();
    h.update(b"confab-ticket");
    h.update(&body);
    body.extend_from_slice(&h.finalize()[..4]);
    body
}

fn ticket_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
        proptest::collection::vec(peer_info(), 0..=8),
    )
        .prop_map(|(room_id, room_secret, bootstrap)| {
            Ticket {
                room_id,
                room_secret,
                bootstrap,
            }
            .to_bytes()
        })
}

/// Mutates a valid ticket body (checksum removed), then puts a valid checksum back on.
fn mutated_ticket() -> impl Strategy<Value = Vec<u8>> {
    (ticket_bytes(), edits()).prop_map(|(t, e)| {
        let body = t[..t.len() - 4].to_vec();
        with_checksum(apply(body, &e))
    })
}

fn text_of(bytes: &[u8]) -> String {
    format!(
        "confab1{}",
        data_encoding::BASE32_NOPAD
            .encode(bytes)
            .to_ascii_lowercase()
    )
}

fn check_ticket(bytes: &[u8]) {
    fuzzing::ticket(bytes);
    fuzzing::ticket(text_of(bytes).as_bytes());
}

fn raw(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

macro_rules! decoder_properties {
    ($short:ident, $long:ident, $cases:expr, $input:expr, $check:expr) => {
        proptest! {
            #![proptest_config(config(256))]
            #[test]
            fn $short(input in $input) {
                $check(&input);
            }
        }
        proptest! {
            #![proptest_config(config($cases))]
            #[test]
            #[ignore = "long run: cargo test --release -p confab-protocol --test decoders -- --ignored long_"]
            fn $long(input in $input) {
                $check(&input);
            }
        }
    };
}

decoder_properties!(
    room_frame_raw,
    long_room_frame_raw,
    LONG_CASES,
    raw(17 * 1024),
    fuzzing::room_frame
);
decoder_properties!(
    room_frame_mutated,
    long_room_frame_mutated,
    LONG_CASES,
    (room_frame(), edits()).prop_map(|(b, e)| apply(b, &e)),
    fuzzing::room_frame
);
decoder_properties!(
    control_raw,
    long_control_raw,
    LONG_CASES,
    raw(800),
    fuzzing::control
);
decoder_properties!(
    control_mutated,
    long_control_mutated,
    LONG_CASES,
    (control(), edits()).prop_map(|(m, e)| apply(m.encode(), &e)),
    fuzzing::control
);
decoder_properties!(
    media_raw,
    long_media_raw,
    LONG_CASES,
    raw(1700),
    fuzzing::media_frame
);
decoder_properties!(
    media_mutated,
    long_media_mutated,
    LONG_CASES,
    (media_frame(), edits()).prop_map(|(b, e)| apply(b, &e)),
    fuzzing::media_frame
);
decoder_properties!(
    ticket_raw,
    long_ticket_raw,
    LONG_CASES,
    raw(1200).prop_map(with_checksum),
    check_ticket
);
decoder_properties!(
    ticket_mutated,
    long_ticket_mutated,
    LONG_CASES,
    mutated_ticket(),
    check_ticket
);
decoder_properties!(
    ticket_text,
    long_ticket_text,
    LONG_CASES,
    "[ -~\\t\\n]{0,300}",
    |s: &String| {
        let _ = Ticket::parse(s);
        let _ = Ticket::parse(&format!("confab1{s}"));
    }
);
decoder_properties!(
    room_state_machine,
    long_room_state_machine,
    LONG_CASES / 10,
    proptest::collection::vec(
        prop_oneof![
            raw(200),
            room_frame(),
            (room_frame(), edits()).prop_map(|(b, e)| apply(b, &e))
        ],
        1..8
    ),
    |frames: &Vec<Vec<u8>>| fuzzing::room_state_machine(frames)
);
decoder_properties!(
    video_message_raw,
    long_video_message_raw,
    LONG_CASES,
    raw(1400),
    fuzzing::video_message
);
