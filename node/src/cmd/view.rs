//! The live terminal view of `confab call` (when stdout is a terminal): members, who is
//! speaking, path, quality and mute state, redrawn from the call's events; `m` mutes, `q`
//! leaves. [`ViewState`] folds events and renders lines (pure, tested); [`Terminal`] owns
//! raw mode, the alternate screen and the key thread.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, queue, terminal};
use tokio::sync::mpsc;

use crate::call::{CallEvent, CallStats, Path, StreamStats};
use crate::media::device::{DeviceMonitor, DeviceStats, Opened};

/// A sender louder than this over the last tick is shown as speaking.
pub const SPEAKING_DBFS: f64 = -50.0;
/// Log lines kept for the view while it owns the terminal.
const LOG_LINES: usize = 3;

/// One member as the view shows it.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    path: Path,
    present: bool,
    recording: bool,
}

/// A device in use, as the view shows it.
#[derive(Debug, Clone)]
pub struct DeviceLine {
    pub label: &'static str,
    pub opened: Opened,
    pub stats: DeviceStats,
}

/// Everything the view shows, folded from the call's events.
#[derive(Debug, Default)]
pub struct ViewState {
    me: String,
    room: String,
    started_ms: u64,
    now_ms: u64,
    members: BTreeMap<String, Member>,
    stats: Option<CallStats>,
    pub muted: bool,
    pub leaving: bool,
    notices: VecDeque<String>,
    pub devices: Vec<DeviceLine>,
}

fn short_peer(peer: &str) -> String {
    let n = peer.chars().count();
    if n <= 12 {
        return peer.to_owned();
    }
    let tail: String = peer.chars().skip(n - 6).collect();
    format!("…{tail}")
}

fn who(name: &str, peer: &str) -> String {
    if name.is_empty() {
        short_peer(peer)
    } else {
        format!("{name} ({})", short_peer(peer))
    }
}

fn level_bar(dbfs: f64) -> String {
    // -60 dBFS .. 0 dBFS over eight cells.
    let cells = (((dbfs + 60.0) / 60.0) * 8.0).round().clamp(0.0, 8.0) as usize;
    format!("{}{}", "█".repeat(cells), "·".repeat(8 - cells))
}

fn fit(line: &str, width: usize) -> String {
    line.chars().take(width).collect()
}

impl ViewState {
    pub fn on_event(&mut self, ev: &CallEvent) {
        match ev {
            CallEvent::Joined {
                peer_id,
                name,
                room,
                started_ms,
            } => {
                self.me = who(name, peer_id);
                self.room = room.clone();
                self.started_ms = *started_ms;
                self.now_ms = *started_ms;
            }
            CallEvent::MemberAdmitted {
                peer,
                name,
                recording,
                path,
                ..
            } => {
                self.members.insert(
                    peer.clone(),
                    Member {
                        name: name.clone(),
                        path: *path,
                        present: true,
                        recording: *recording,
                    },
                );
            }
            CallEvent::MemberLeft { peer, reason, .. } => {
                if let Some(m) = self.members.get_mut(peer) {
                    m.present = false;
                    let line = format!("{} left ({reason})", who(&m.name, peer));
                    self.notice(line);
                }
            }
            CallEvent::PathChanged { peer, path, .. } => {
                if let Some(m) = self.members.get_mut(peer) {
                    m.path = *path;
                }
            }
            CallEvent::RecordingChanged { peer, name, on, .. } => {
                if let Some(m) = self.members.get_mut(peer) {
                    m.recording = *on;
                }
                let what = if *on {
                    "is recording"
                } else {
                    "stopped recording"
                };
                self.notice(format!("{} {what}", who(name, peer)));
            }
            CallEvent::AdmissionFailed { peer, reason, .. } => {
                self.notice(format!("{} was refused: {reason}", short_peer(peer)));
            }
            CallEvent::MuteChanged { peer, on, .. } => {
                let name = self
                    .members
                    .get(peer)
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let what = if *on { "muted" } else { "unmuted" };
                self.notice(format!("{} {what}", who(&name, peer)));
            }
            CallEvent::Chat {
                peer, name, text, ..
            } => {
                let line: String = text.chars().filter(|c| !c.is_control()).collect();
                self.notice(format!("{}: {line}", who(name, peer)));
            }
            CallEvent::Stats(s) => {
                self.now_ms = s.at_ms;
                self.muted = s.muted;
                for st in &s.streams {
                    let m = self.members.entry(st.from.clone()).or_insert(Member {
                        name: st.name.clone(),
                        path: st.path,
                        present: true,
                        recording: st.recording,
                    });
                    m.path = st.path;
                    if !st.name.is_empty() {
                        m.name.clone_from(&st.name);
                    }
                }
                self.stats = Some(s.clone());
            }
            CallEvent::Ended(_) => self.leaving = true,
        }
    }

    /// A line for the notices at the bottom (the newest few are kept).
    pub fn notice(&mut self, line: String) {
        if self.notices.len() == LOG_LINES {
            self.notices.pop_front();
        }
        self.notices.push_back(line);
    }

    fn stream(&self, peer: &str) -> Option<&StreamStats> {
        self.stats
            .as_ref()
            .and_then(|s| s.streams.iter().find(|st| st.from == peer))
    }

    fn header(&self) -> String {
        let secs = self.now_ms.saturating_sub(self.started_ms) / 1000;
        let room: String = self.room.chars().take(8).collect();
        let mic = if self.leaving {
            "leaving"
        } else if self.muted {
            "MUTED"
        } else {
            "live"
        };
        format!(
            "confab · room {room} · {} · {:02}:{:02} · mic {mic}",
            self.me,
            secs / 60,
            secs % 60
        )
    }

    /// What the speaker's ring holds on average, ms (0 without a speaker device).
    fn speaker_ring_ms(&self) -> f64 {
        self.devices
            .iter()
            .find(|d| d.label == "speaker")
            .map_or(0.0, |d| d.stats.ring_ms_mean)
    }

    fn member_line(&self, peer: &str, m: &Member) -> String {
        let name = fit(&who(&m.name, peer), 24);
        let (speaking, latency, loss, mos) = match self.stream(peer) {
            Some(s) if m.present => {
                let talk = if s.level_dbfs > SPEAKING_DBFS {
                    "speaking"
                } else {
                    "quiet"
                };
                let total = s.frames_received + s.frames_lost;
                let loss = if total == 0 {
                    "—".to_owned()
                } else {
                    format!("{:.1}%", 100.0 * s.frames_lost as f64 / total as f64)
                };
                // The speaker's ring, when there is one, is part of the way to the ear.
                let latency = s
                    .mouth_to_ear_p50_ms
                    .map(|v| v + self.speaker_ring_ms())
                    .map_or_else(|| "—".to_owned(), |v| format!("{v:.0} ms"));
                let mos = if s.frames_received == 0 {
                    "—".to_owned()
                } else {
                    format!("{:.2}", s.mos)
                };
                (
                    format!("{} {talk:<8}", level_bar(s.level_dbfs)),
                    latency,
                    loss,
                    mos,
                )
            }
            _ => (
                format!(
                    "{} {:<8}",
                    level_bar(-100.0),
                    if m.present { "—" } else { "left" }
                ),
                "—".into(),
                "—".into(),
                "—".into(),
            ),
        };
        let rec = if m.recording { "  ⚠ recording" } else { "" };
        format!(
            "  {name:<24} {:<8} {speaking}  {latency:>7} {loss:>6} {mos:>5}{rec}",
            m.path.as_str()
        )
    }

    /// The frame, `width` columns wide.
    pub fn render(&self, width: usize) -> Vec<String> {
        let mut lines = vec![self.header(), String::new()];
        lines.push(format!(
            "  {:<24} {:<8} {:<17}  {:>7} {:>6} {:>5}",
            "member", "path", "speaking", "latency", "loss", "MOS"
        ));
        if self.members.is_empty() {
            lines.push("  (waiting for the others)".into());
        }
        for (peer, m) in &self.members {
            lines.push(self.member_line(peer, m));
        }
        if !self.devices.is_empty() {
            lines.push(String::new());
        }
        for d in &self.devices {
            lines.push(format!(
                "  {} {} ({} Hz, {} ch, {}): ring {:.0} ms, dropped {:.0} ms, underruns {}",
                d.label,
                d.opened.id,
                d.opened.rate,
                d.opened.channels,
                d.opened.format,
                d.stats.ring_ms_mean,
                d.stats.dropped_ms,
                d.stats.underruns
            ));
        }
        lines.push(String::new());
        lines.extend(self.notices.iter().map(|n| format!("  {n}")));
        lines.push("  [m] mute/unmute   [q] leave".into());
        lines.into_iter().map(|l| fit(&l, width)).collect()
    }
}

/// A key the call cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Mute,
    Leave,
}

/// Whether the view owns the terminal: log lines then go to it instead of the screen.
static CAPTURING: AtomicBool = AtomicBool::new(false);
static CAPTURED: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// Where the binary's log lines go: stderr, or the view's notices while it is on screen.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !CAPTURING.load(Ordering::Relaxed) {
            return std::io::stderr().write(buf);
        }
        let text = strip_ansi(&String::from_utf8_lossy(buf));
        let mut q = CAPTURED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if q.len() == LOG_LINES {
                q.pop_front();
            }
            q.push_back(line.trim_end().to_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Log lines captured since the last call.
pub fn take_logs() -> Vec<String> {
    let mut q = CAPTURED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    q.drain(..).collect()
}

/// The terminal while the view owns it: raw mode, the alternate screen, a thread reading
/// keys. Dropping it gives the terminal back as it was.
pub struct Terminal {
    stop: Arc<AtomicBool>,
    keys: Option<JoinHandle<()>>,
}

impl Terminal {
    /// Takes the terminal; keys arrive on the receiver.
    pub fn take() -> std::io::Result<(Self, mpsc::Receiver<Key>)> {
        terminal::enable_raw_mode()?;
        let mut out = std::io::stdout();
        if let Err(e) =
            queue!(out, terminal::EnterAlternateScreen, cursor::Hide).and_then(|()| out.flush())
        {
            let _ = terminal::disable_raw_mode();
            return Err(e);
        }
        CAPTURING.store(true, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(16);
        let flag = stop.clone();
        let keys = std::thread::Builder::new()
            .name("confab-keys".into())
            .spawn(move || read_keys(&flag, &tx))?;
        Ok((
            Self {
                stop,
                keys: Some(keys),
            },
            rx,
        ))
    }

    /// Draws a frame over the last one.
    pub fn draw(&self, lines: &[String]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        queue!(out, cursor::MoveTo(0, 0))?;
        for l in lines {
            write!(out, "{l}")?;
            queue!(out, terminal::Clear(terminal::ClearType::UntilNewLine))?;
            write!(out, "\r\n")?;
        }
        queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown))?;
        out.flush()
    }

    /// The terminal's width (80 when unknown).
    pub fn width() -> usize {
        terminal::size().map_or(80, |(w, _)| usize::from(w))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(k) = self.keys.take() {
            let _ = k.join();
        }
        let mut out = std::io::stdout();
        let _ = queue!(out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = out.flush();
        let _ = terminal::disable_raw_mode();
        CAPTURING.store(false, Ordering::Relaxed);
    }
}

fn read_keys(stop: &AtomicBool, tx: &mpsc::Sender<Key>) {
    while !stop.load(Ordering::Relaxed) {
        match crossterm::event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => return,
        }
        let Ok(Event::Key(k)) = crossterm::event::read() else {
            continue;
        };
        if k.kind == KeyEventKind::Release {
            continue;
        }
        let key = match k.code {
            KeyCode::Char('m' | 'M') => Key::Mute,
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => Key::Leave,
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Leave,
            _ => continue,
        };
        if tx.try_send(key).is_err() && tx.is_closed() {
            return;
        }
    }
}

/// The device lines of the view, read now.
pub fn device_lines(devices: &[(&'static str, DeviceMonitor)]) -> Vec<DeviceLine> {
    devices
        .iter()
        .map(|(label, m)| DeviceLine {
            label,
            opened: m.opened.clone(),
            stats: m.stats(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(from: &str, name: &str, path: Path, level: f64, lost: u64) -> StreamStats {
        StreamStats {
            from: from.into(),
            name: name.into(),
            path,
            frames_received: 99,
            frames_lost: lost,
            frames_late: 0,
            frames_concealed: lost,
            frames_played: 100,
            jitter_ms: 2.0,
            mouth_to_ear_p50_ms: Some(61.4),
            mouth_to_ear_p95_ms: Some(80.0),
            transit_buffer_p50_ms: Some(35.0),
            transit_buffer_p95_ms: Some(53.6),
            mos: 4.31,
            level_dbfs: level,
            recording: false,
        }
    }

    #[test]
    fn a_frame_shows_members_speaking_path_quality_and_mute() {
        let mut v = ViewState::default();
        v.on_event(&CallEvent::Joined {
            peer_id: "12D3KooWAliceAliceAlice".into(),
            name: "alice".into(),
            room: "0123456789abcdef".into(),
            started_ms: 1_000,
        });
        v.on_event(&CallEvent::MemberAdmitted {
            at_ms: 1_100,
            peer: "12D3KooWBobBobBob111".into(),
            name: "bob".into(),
            recording: false,
            path: Path::Relayed,
        });
        v.on_event(&CallEvent::MemberAdmitted {
            at_ms: 1_200,
            peer: "12D3KooWCarolCarol22".into(),
            name: "carol".into(),
            recording: true,
            path: Path::Direct,
        });
        v.on_event(&CallEvent::Stats(CallStats {
            at_ms: 63_000,
            muted: true,
            streams: vec![
                stream("12D3KooWBobBobBob111", "bob", Path::Punched, -20.0, 1),
                stream("12D3KooWCarolCarol22", "carol", Path::Direct, -100.0, 0),
            ],
            ..CallStats::default()
        }));
        v.on_event(&CallEvent::MemberLeft {
            at_ms: 63_500,
            peer: "12D3KooWCarolCarol22".into(),
            reason: "Left".into(),
        });
        let frame = v.render(100);
        let expected = [
            "confab · room 01234567 · alice (…eAlice) · 01:02 · mic MUTED",
            "",
            "  member                   path     speaking           latency   loss   MOS",
            "  bob (…Bob111)            punched  █████··· speaking    61 ms   1.0%  4.31",
            "  carol (…arol22)          direct   ········ left            —      —     —  ⚠ recording",
            "",
            "  carol (…arol22) left (Left)",
            "  [m] mute/unmute   [q] leave",
        ];
        assert_eq!(frame, expected, "\n{}", frame.join("\n"));
        // Narrow terminals get cut lines, never wrapped ones.
        assert!(v.render(20).iter().all(|l| l.chars().count() <= 20));
        // With a speaker device, its ring is part of the latency shown.
        v.devices.push(DeviceLine {
            label: "speaker",
            opened: Opened {
                id: "default".into(),
                rate: 48_000,
                channels: 2,
                format: "f32".into(),
            },
            stats: DeviceStats {
                ring_ms_mean: 24.0,
                ..DeviceStats::default()
            },
        });
        let frame = v.render(100);
        assert!(frame[3].contains(" 85 ms "), "{}", frame[3]);
        assert!(frame
            .iter()
            .any(|l| l.contains("speaker default (48000 Hz, 2 ch, f32): ring 24 ms")));
    }

    #[test]
    fn log_lines_lose_their_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
    }
}
