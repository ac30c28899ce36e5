//! A call: one session on a running [`crate::node::Node`].
//!
//! Whoever starts a call gets a [`CallHandle`] (commands in: leave, mute, record, change the
//! source or sink, snapshot the statistics) and [`CallEvents`] (events out: joined, members
//! admitted and left, path changes, recording, admission failures, a statistics tick every
//! second, and the end). The node's driver owns the call's [`session::Session`] and hands it
//! every swarm event, stream message, command and tick; the decisions about whom to dial,
//! when to give up, and how a member's path moves are sans-IO policy in [`policy`].
//!
//! * [`session`] — the call's state and its `on_*` handlers; [`room_events`] — what the room
//!   state machine's events do; [`peers`] — per-peer state and the path handlers.
//! * [`capture`] — our audio: source, mute, Opus, what we sent; [`receive`] — one remote
//!   sender: jitter buffer, decoder, level, playout into the sinks.
//! * [`handle`], [`events`], [`out`] — the outside of a call, bounded both ways.
//! * [`report`] — the `confab call --json` report, folded from the events.
//! * [`video`] — our video out and the members' video in, apart from the audio.

pub mod capture;
pub mod error;
pub mod events;
pub mod handle;
pub mod out;
pub mod peers;
pub mod policy;
pub mod receive;
pub mod report;
pub mod room_events;
pub mod session;
pub mod video;

pub use error::{CallError, RelayFailure};
pub use events::{CallEnd, CallEvent, CallStats, StreamStats};
pub use handle::{CallCommand, CallEvents, CallHandle};
pub use policy::Path;
pub use report::{
    CallReport, ReceivedStream, ReportBuilder, RosterEvent, Sending, SentStream, TimelineFile,
};
pub use session::CallConfig;
