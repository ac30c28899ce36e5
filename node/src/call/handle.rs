//! The outside of a running call: a cloneable handle for commands and a stream of events.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::error::CallError;
use super::events::{CallEnd, CallEvent, CallStats};
use crate::media::{AudioSink, AudioSource};

/// Commands queued toward one call.
pub const COMMAND_QUEUE: usize = 64;
/// Events queued toward the consumer of one call.
pub const EVENT_QUEUE: usize = 256;

/// What a handle asks of its call.
pub enum CallCommand {
    /// Stop sending now, keep playing what the others still send for at most `drain`, then
    /// say goodbye and end; the reply comes with the end.
    Leave {
        drain: Duration,
        reply: Option<oneshot::Sender<CallEnd>>,
    },
    /// Send silence instead of the source (the source keeps its pace).
    Mute(bool),
    /// Also play everything heard into `sink`, and tell the room that we record.
    StartRecording(Box<dyn AudioSink>),
    /// Close the recording and tell the room.
    StopRecording,
    SetSource(Box<dyn AudioSource>),
    SetSink(Box<dyn AudioSink>),
    Snapshot(oneshot::Sender<CallStats>),
    /// Connects the call's video to a page (the page's encoded frames in, members' out).
    Video(Box<super::video::VideoPorts>),
    /// Sends a chat message to every member; the reply says to how many.
    Chat {
        text: String,
        reply: oneshot::Sender<Result<usize, CallError>>,
    },
}

/// Steers one call. Clones steer the same call; once the call has ended, every command fails
/// with [`CallError::NodeStopped`].
#[derive(Clone)]
pub struct CallHandle {
    commands: mpsc::Sender<CallCommand>,
}

/// The events of one call; ends after [`CallEvent::Ended`].
pub struct CallEvents {
    rx: mpsc::Receiver<CallEvent>,
}

/// A new call's two ends: the handle and events for the caller, the receivers for the driver.
pub(crate) fn channels() -> (
    CallHandle,
    CallEvents,
    mpsc::Receiver<CallCommand>,
    mpsc::Sender<CallEvent>,
) {
    let (ctx, crx) = mpsc::channel(COMMAND_QUEUE);
    let (etx, erx) = mpsc::channel(EVENT_QUEUE);
    (
        CallHandle { commands: ctx },
        CallEvents { rx: erx },
        crx,
        etx,
    )
}

impl CallHandle {
    async fn send(&self, cmd: CallCommand) -> Result<(), CallError> {
        self.commands
            .send(cmd)
            .await
            .map_err(|_| CallError::NodeStopped)
    }

    /// Leaves at once (half a second for what is in flight); returns how the call ended.
    pub async fn leave(&self) -> Result<CallEnd, CallError> {
        self.leave_after_drain(Duration::from_millis(500)).await
    }

    /// Stops sending, keeps listening until the others' streams end or `drain` passes, then
    /// leaves; returns how the call ended.
    pub async fn leave_after_drain(&self, drain: Duration) -> Result<CallEnd, CallError> {
        let (tx, rx) = oneshot::channel();
        self.send(CallCommand::Leave {
            drain,
            reply: Some(tx),
        })
        .await?;
        rx.await.map_err(|_| CallError::NodeStopped)
    }

    /// Asks the call to stop sending and leave after at most `drain`, without waiting for
    /// the end (which arrives as [`CallEvent::Ended`]).
    pub async fn request_leave(&self, drain: Duration) -> Result<(), CallError> {
        self.send(CallCommand::Leave { drain, reply: None }).await
    }

    /// Connects the call's video to a page.
    pub async fn attach_video(&self, ports: super::video::VideoPorts) -> Result<(), CallError> {
        self.send(CallCommand::Video(Box::new(ports))).await
    }

    pub async fn mute(&self, muted: bool) -> Result<(), CallError> {
        self.send(CallCommand::Mute(muted)).await
    }

    pub async fn start_recording(&self, sink: Box<dyn AudioSink>) -> Result<(), CallError> {
        self.send(CallCommand::StartRecording(sink)).await
    }

    pub async fn stop_recording(&self) -> Result<(), CallError> {
        self.send(CallCommand::StopRecording).await
    }

    pub async fn set_source(&self, source: Box<dyn AudioSource>) -> Result<(), CallError> {
        self.send(CallCommand::SetSource(source)).await
    }

    pub async fn set_sink(&self, sink: Box<dyn AudioSink>) -> Result<(), CallError> {
        self.send(CallCommand::SetSink(sink)).await
    }

    /// Sends a chat message to the room, end-to-end encrypted over each member's pairwise
    /// session; returns how many members it went to.
    pub async fn chat(&self, text: String) -> Result<usize, CallError> {
        let (reply, rx) = oneshot::channel();
        self.send(CallCommand::Chat { text, reply }).await?;
        rx.await.map_err(|_| CallError::NodeStopped)?
    }

    /// The call's statistics now.
    pub async fn stats(&self) -> Result<CallStats, CallError> {
        let (tx, rx) = oneshot::channel();
        self.send(CallCommand::Snapshot(tx)).await?;
        rx.await.map_err(|_| CallError::NodeStopped)
    }

    /// Whether the call has ended (its driver dropped the command queue).
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}

impl CallEvents {
    /// The next event; `None` after the call ended.
    pub async fn next(&mut self) -> Option<CallEvent> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_next(&mut self) -> Option<CallEvent> {
        self.rx.try_recv().ok()
    }
}
