//! The page's WebSocket: commands in (JSON text), the microphone in (binary PCM), the state
//! and events out (JSON text), what the call plays out (binary PCM per member), and encoded
//! video both ways (binary, kinds 3 and 4, see [`super::video`]).
//!
//! Limits: a message is at most [`MAX_MESSAGE`] bytes (larger ones close the socket with
//! 1009, "message too big"); a malformed command gets an error reply and is logged; a
//! malformed microphone or video message is dropped and counted. Nothing a page sends can stop the
//! node or the call.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, warn};

use super::bridge::{parse_mic, ToPage};
use super::state::App;
use super::video::{PageAssembly, VideoToPage, KIND_VIDEO_FROM_PAGE};

/// Largest message a page may send (a microphone message of 100 ms is 9.6 kB).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A command from the page.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PageCommand {
    /// This page plays the call and is its microphone (the last page to ask wins).
    Media,
    Join {
        ticket: String,
    },
    Leave,
    Mute {
        on: bool,
    },
    Chat {
        text: String,
    },
    Record {
        on: bool,
    },
    /// The page wants the whole state again.
    State,
}

/// Per-socket counters, reported to the page on request and logged at the end.
#[derive(Debug, Default)]
struct Counters {
    bad_commands: u64,
    bad_pcm: u64,
    bad_video: u64,
}

/// What a socket holding the call's media receives from the call, and its video parts.
#[derive(Default)]
struct Held {
    audio: Option<(u64, tokio::sync::mpsc::Receiver<ToPage>)>,
    video: Option<(u64, tokio::sync::mpsc::Receiver<VideoToPage>)>,
    parts: PageAssembly,
}

pub async fn session(app: Arc<App>, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let mut events = app.subscribe();
    let state = app.state().await.to_string();
    if tx.send(Message::Text(state.into())).await.is_err() {
        return;
    }
    let mut held = Held::default();
    let mut counters = Counters::default();
    loop {
        let out = tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(msg)) => on_message(&app, msg, &mut held, &mut counters).await,
                Some(Err(e)) => {
                    warn!(error = %e, "page WebSocket error; closing it");
                    Some(close_for(&e.to_string()))
                }
                None => break,
            },
            ev = events.recv() => match ev {
                Ok(text) => Some(Message::Text(text.into())),
                Err(RecvError::Lagged(n)) => {
                    debug!(n, "a page fell behind; sending the whole state");
                    Some(Message::Text(app.state().await.to_string().into()))
                }
                Err(RecvError::Closed) => break,
            },
            Some(tp) = next_audio(&mut held.audio) => Some(to_message(tp)),
            Some(v) = next_video(&mut held.video) => Some(video_message(v)),
        };
        if let Some(m) = out {
            let close = matches!(m, Message::Close(_));
            if tx.send(m).await.is_err() || close {
                break;
            }
        }
    }
    if let Some((generation, _)) = held.audio {
        app.media.detach(generation);
    }
    if let Some((generation, _)) = held.video {
        app.video.detach(generation);
    }
    if counters.bad_commands + counters.bad_pcm + counters.bad_video > 0 {
        warn!(
            bad_commands = counters.bad_commands,
            bad_pcm = counters.bad_pcm,
            bad_video = counters.bad_video,
            "page WebSocket closed after refused messages"
        );
    }
}

async fn next_audio(
    audio: &mut Option<(u64, tokio::sync::mpsc::Receiver<ToPage>)>,
) -> Option<ToPage> {
    match audio {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_video(
    video: &mut Option<(u64, tokio::sync::mpsc::Receiver<VideoToPage>)>,
) -> Option<VideoToPage> {
    match video {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn video_message(v: VideoToPage) -> Message {
    match v {
        VideoToPage::Frame(bytes) => Message::Binary(bytes.into()),
        VideoToPage::Keyframe(kind) => Message::Text(
            json!({"type": "keyframe", "track": kind.name()})
                .to_string()
                .into(),
        ),
    }
}

fn to_message(tp: ToPage) -> Message {
    match tp {
        ToPage::Slot { slot, peer } => Message::Text(
            json!({"type": "slot", "slot": slot, "peer": peer})
                .to_string()
                .into(),
        ),
        ToPage::Audio(bytes) => Message::Binary(bytes.into()),
    }
}

/// The close frame for a socket error: 1009 for a message over [`MAX_MESSAGE`], 1002 for the
/// rest (a broken frame).
fn close_for(error: &str) -> Message {
    let too_big =
        error.contains("too long") || error.contains("too big") || error.contains("limit");
    let (code, reason) = if too_big {
        (1009, "message too big")
    } else {
        (1002, "protocol error")
    };
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

fn error_reply(message: impl Into<String>) -> Message {
    Message::Text(
        json!({"type": "error", "message": message.into()})
            .to_string()
            .into(),
    )
}

async fn on_message(
    app: &Arc<App>,
    msg: Message,
    held: &mut Held,
    counters: &mut Counters,
) -> Option<Message> {
    match msg {
        Message::Text(text) => on_command(app, &text, held, counters).await,
        Message::Binary(bytes) if bytes.first() == Some(&KIND_VIDEO_FROM_PAGE) => {
            on_video(app, &bytes, held, counters)
        }
        Message::Binary(bytes) => {
            match parse_mic(&bytes) {
                Ok(chunk) if held.audio.is_some() => app.media.push_mic(&chunk),
                Ok(_) => counters.bad_pcm += 1,
                Err(e) => {
                    counters.bad_pcm += 1;
                    if counters.bad_pcm == 1 {
                        warn!(error = %e, "refused a microphone message from the page");
                        return Some(error_reply(e.to_string()));
                    }
                }
            }
            None
        }
        Message::Close(_) => Some(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: Utf8Bytes::from_static("bye"),
        }))),
        Message::Ping(_) | Message::Pong(_) => None,
    }
}

/// One video message of the page; only the page holding the call's media may send them.
fn on_video(
    app: &Arc<App>,
    bytes: &[u8],
    held: &mut Held,
    counters: &mut Counters,
) -> Option<Message> {
    let result = if held.video.is_some() {
        app.video
            .from_page(&mut held.parts, bytes)
            .map_err(|e| e.to_string())
    } else {
        Err("video from a page that does not hold the call's media".into())
    };
    let Err(e) = result else { return None };
    counters.bad_video += 1;
    if counters.bad_video == 1 {
        warn!(error = %e, "refused a video message from the page");
        return Some(error_reply(e));
    }
    None
}

async fn on_command(
    app: &Arc<App>,
    text: &str,
    held: &mut Held,
    counters: &mut Counters,
) -> Option<Message> {
    let cmd: PageCommand = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            counters.bad_commands += 1;
            warn!(error = %e, "refused a malformed command from the page");
            return Some(error_reply(format!("malformed command: {e}")));
        }
    };
    let result = match cmd {
        PageCommand::Media => {
            held.audio = Some(app.media.attach());
            held.video = Some(app.video.attach());
            held.parts = PageAssembly::default();
            Ok(())
        }
        PageCommand::Join { ticket } => app.join(&ticket).await,
        PageCommand::Leave => app.leave().await,
        PageCommand::Mute { on } => app.mute(on).await,
        PageCommand::Chat { text } => app.chat(&text).await,
        PageCommand::Record { on } => app.record(on).await,
        PageCommand::State => return Some(Message::Text(app.state().await.to_string().into())),
    };
    result.err().map(error_reply)
}
