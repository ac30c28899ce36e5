//! `confab call`: a thin client of one call session on a node of its own. `--duration` and
//! Ctrl-C are "leave after"; the report is folded from the call's events.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use confab_protocol::ticket::Ticket;
use libp2p::Multiaddr;

use super::account::open_store;
use super::view::{self, Key, Terminal, ViewState};
use super::{relays_or_settings, CallArgs, Failure};
use crate::account::Store;
use crate::call::{CallConfig, CallEvent, CallEvents, CallHandle, CallReport, ReportBuilder};
use crate::media::device::{DeviceError, DeviceMonitor, DeviceSink, DeviceSource};
use crate::media::sink::{Discard, Tee, WavMix, WavPerSender, WavTimeline};
use crate::media::{source, AudioSink, AudioSource};
use crate::node::{Node, NodeConfig};

/// After our own sending ends (`--duration`), how long we keep listening for the others.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// After Ctrl-C, how long what is in flight gets.
const INTERRUPT_DRAIN: Duration = Duration::from_millis(500);
/// After the call, how long the room streams' writers get to deliver our goodbye.
const GOODBYE: Duration = Duration::from_millis(100);

/// Where the audio we send comes from.
#[derive(Debug, Clone)]
enum Input {
    Wav(PathBuf),
    Tone(f64),
    Signal(usize),
    /// A microphone ("" for the default).
    Mic(String),
}

fn check_args(args: &CallArgs) -> Result<(Ticket, Input), Failure> {
    let text = super::ticket_text(args.ticket.as_deref(), args.ticket_file.as_deref())?;
    let ticket = Ticket::parse(&text).map_err(|e| Failure::input(format!("{e}")))?;
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0 && d <= 24.0 * 3600.0) {
            return Err(Failure::input(
                "--duration must be between 0 and 86400 seconds",
            ));
        }
    }
    if let Some(hz) = args.tone {
        if !(hz.is_finite() && hz > 0.0 && hz < 24_000.0) {
            return Err(Failure::input("--tone must be between 0 and 24000 Hz"));
        }
    }
    if let Some(name) = &args.mic {
        return Ok((ticket, Input::Mic(name.clone())));
    }
    let input = match (&args.input, args.tone, args.signal) {
        (Some(p), _, _) => {
            if !p.exists() {
                return Err(Failure::input(format!(
                    "input file {} does not exist",
                    p.display()
                )));
            }
            Input::Wav(p.clone())
        }
        (None, Some(hz), _) => Input::Tone(hz),
        (None, None, Some(i)) => Input::Signal(i),
        (None, None, None) => Input::Tone(440.0),
    };
    Ok((ticket, input))
}

/// A device name that matches nothing (or several) is bad input (exit 2); a device that
/// does not open is not.
fn device_failure(e: DeviceError) -> Failure {
    match e {
        DeviceError::NotFound { .. } | DeviceError::Ambiguous { .. } => {
            Failure::input(e.to_string())
        }
        _ => Failure::other(e),
    }
}

/// The devices a call uses, watched from outside it.
type Devices = Vec<(&'static str, DeviceMonitor)>;

fn open_source(input: &Input, devices: &mut Devices) -> Result<Box<dyn AudioSource>, Failure> {
    Ok(match input {
        Input::Wav(p) => Box::new(source::wav(p).map_err(|e| Failure::input(e.to_string()))?),
        Input::Tone(hz) => Box::new(source::tone(*hz)),
        Input::Signal(i) => Box::new(source::test_signal_with_chirps(*i)),
        Input::Mic(name) => {
            let mic = DeviceSource::open(name).map_err(device_failure)?;
            devices.push(("mic", mic.monitor()));
            Box::new(mic)
        }
    })
}

/// `--speaker`, `--output` (the mix), `--output-dir` (one file per sender) and
/// `--timeline-dir` (each sender on the playout timeline), or nothing; and whether the room
/// is told that we record.
fn open_sink(
    args: &CallArgs,
    started_ms: u64,
    devices: &mut Devices,
) -> Result<(Box<dyn AudioSink>, bool), Failure> {
    let mut sinks: Vec<Box<dyn AudioSink>> = Vec::new();
    if let Some(dir) = &args.output_dir {
        sinks.push(Box::new(WavPerSender::create(dir).map_err(Failure::other)?));
    }
    if let Some(path) = &args.output {
        sinks.push(Box::new(
            WavMix::create(path, started_ms).map_err(Failure::other)?,
        ));
    }
    if let Some(dir) = &args.timeline_dir {
        sinks.push(Box::new(
            WavTimeline::create(dir, started_ms).map_err(Failure::other)?,
        ));
    }
    let recording = !sinks.is_empty();
    if let Some(name) = &args.speaker {
        let speaker = DeviceSink::open(name).map_err(device_failure)?;
        devices.push(("speaker", speaker.monitor()));
        sinks.push(Box::new(speaker));
    }
    let sink: Box<dyn AudioSink> = if !sinks.is_empty() {
        Box::new(Tee::new(sinks))
    } else {
        Box::new(Discard)
    };
    Ok((sink, recording))
}

/// The addresses this call listens on: `--listen`, the room's, or the account's.
fn listen_addrs(
    store: &Store,
    args: &CallArgs,
    ticket: &Ticket,
) -> Result<Vec<Multiaddr>, Failure> {
    if !args.listen.is_empty() {
        return Ok(args.listen.clone());
    }
    if let Some(room) = store.room(&ticket.room_id_hex())? {
        return Ok(room.listen.iter().filter_map(|a| a.parse().ok()).collect());
    }
    let settings = store.settings()?;
    if !settings.listen.is_empty() {
        return Ok(settings
            .listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect());
    }
    Ok(vec![
        "/ip4/0.0.0.0/tcp/0".parse().map_err(Failure::other)?,
        "/ip4/0.0.0.0/udp/0/quic-v1"
            .parse()
            .map_err(Failure::other)?,
    ])
}

pub(super) fn run(dir: &Path, args: CallArgs) -> Result<(), Failure> {
    let (ticket, input) = check_args(&args)?;
    let mut devices = Devices::new();
    let source = open_source(&input, &mut devices)?;
    let store = open_store(dir)?;
    let identity = store.require_identity()?;
    let name = store.name()?.unwrap_or_default();
    let relays = relays_or_settings(&store, args.relay.clone())?;
    if args.relay_only && relays.is_empty() {
        return Err(Failure::input("--relay-only needs at least one --relay"));
    }
    let node_config = NodeConfig {
        identity,
        listen: listen_addrs(&store, &args, &ticket)?,
        relays,
        hole_punch: !args.no_hole_punch,
        relay_only: args.relay_only,
    };
    let (sink, recording) = open_sink(&args, crate::clock::now_ms(), &mut devices)?;
    let live = !args.json && !args.no_view && std::io::stdout().is_terminal();
    let mut config = CallConfig::new(ticket, name);
    config.recording = recording;
    config.cbr = args.cbr;
    config.frame_ms = args.frame_ms;
    config.mode = args.opus_mode.into();
    config.dump_opus = args.dump_opus.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Failure::other)?;
    // The store stays open (and locked) for the whole call; expired history also goes once
    // a day while a long call runs.
    let duration = args.duration.map(Duration::from_secs_f64);
    let report = crate::account::history::with_periodic_expiry(
        &store,
        crate::account::history::EXPIRY_PERIOD,
        crate::clock::now_ms,
        || {
            runtime.block_on(async {
                // The driver runs here, on the main thread, beside the client.
                let (node, driver) = Node::build(node_config).map_err(Failure::other)?;
                let node = node.attached();
                let client = async {
                    let report = match node.start_call(config, source, sink).await {
                        Ok((handle, events)) => {
                            let ui = if live { Ui::start(&devices) } else { None };
                            follow(&handle, events, duration, ui).await
                        }
                        Err(e) => Err(Failure::other(e)),
                    };
                    // Whatever happened, the driver ends with the node.
                    tokio::time::sleep(GOODBYE).await;
                    node.shutdown().await;
                    report
                };
                let ((), report) = tokio::join!(driver, client);
                report
            })
        },
    )?;
    // The call history: room, peers, start, duration; never content.
    if let Err(e) = store.record_call(&report.history_entry()) {
        tracing::warn!(error = %e, "cannot record the call in the history");
    }
    drop(store);
    let report = with_device_buffers(report, &devices);
    for (label, m) in &devices {
        eprintln!("{}", device_summary(label, m));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(Failure::other)?
        );
    } else {
        print_report(&report);
    }
    Ok(())
}

/// The live view while it owns the terminal.
struct Ui {
    state: ViewState,
    term: Terminal,
    keys: Option<tokio::sync::mpsc::Receiver<Key>>,
    devices: Devices,
}

impl Ui {
    /// Takes the terminal, or `None` (plain lines) if it cannot.
    fn start(devices: &Devices) -> Option<Self> {
        match Terminal::take() {
            Ok((term, keys)) => {
                let ui = Self {
                    state: ViewState::default(),
                    term,
                    keys: Some(keys),
                    devices: devices.clone(),
                };
                ui.draw();
                Some(ui)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no live view: cannot take the terminal");
                None
            }
        }
    }

    fn on_event(&mut self, ev: &CallEvent) {
        self.state.on_event(ev);
        self.draw_now();
    }

    fn draw_now(&mut self) {
        for line in view::take_logs() {
            self.state.notice(line);
        }
        self.state.devices = view::device_lines(&self.devices);
        self.draw();
    }

    fn draw(&self) {
        if let Err(e) = self.term.draw(&self.state.render(Terminal::width())) {
            tracing::debug!(error = %e, "cannot draw the live view");
        }
    }

    /// The next key, or never once the keys are gone.
    async fn key(keys: &mut Option<tokio::sync::mpsc::Receiver<Key>>) -> Option<Key> {
        match keys {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// Follows a call's events until it ends: leaves after `duration` (with a drain), on
/// Ctrl-C or `q` in the live view (at once), mutes on `m`, and folds the events into the
/// report.
async fn follow(
    handle: &CallHandle,
    mut events: CallEvents,
    duration: Option<Duration>,
    mut ui: Option<Ui>,
) -> Result<CallReport, Failure> {
    let mut report = ReportBuilder::new();
    let leave_at = duration.map(|d| tokio::time::Instant::now() + d);
    let mut leaving = false;
    let mut muted = false;
    let mut interrupted = false;
    let mut keys = ui.as_mut().and_then(|u| u.keys.take());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let timer = async {
            match leave_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let mut key = None;
        tokio::select! {
            ev = events.next() => {
                let Some(ev) = ev else { break };
                match ui.as_mut() {
                    Some(ui) => ui.on_event(&ev),
                    None => {
                        if let Some(line) = recording_notice(&ev) {
                            eprintln!("{line}");
                        }
                    }
                }
                report.on_event(&ev);
                if matches!(ev, CallEvent::Ended(_)) {
                    break;
                }
            }
            _ = timer, if !leaving => {
                leaving = true;
                let _ = handle.request_leave(DRAIN_GRACE).await;
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                key = Some(Key::Leave);
            }
            k = Ui::key(&mut keys) => match k {
                Some(k) => key = Some(k),
                None => keys = None,
            },
        }
        match key {
            Some(Key::Mute) => {
                muted = !muted;
                let _ = handle.mute(muted).await;
                if let Some(ui) = ui.as_mut() {
                    ui.state.muted = muted;
                    ui.draw_now();
                }
            }
            Some(Key::Leave) => {
                tracing::info!("interrupted; leaving the call");
                leaving = true;
                let _ = handle.request_leave(INTERRUPT_DRAIN).await;
                if let Some(ui) = ui.as_mut() {
                    ui.state.leaving = true;
                    ui.draw_now();
                }
            }
            None => {}
        }
    }
    // The terminal is given back before the report is printed.
    drop(ui);
    if let Some(e) = report.end().and_then(|end| end.error.clone()) {
        return Err(Failure {
            code: e.exit_code(),
            message: e.to_string(),
        });
    }
    Ok(report.finish())
}

/// What a device did during the call (on stderr after it).
/// The report with what our devices' rings held: the speaker's ring is added to every
/// stream's mouth-to-ear (a frame handed to the speaker waits there before it sounds), the
/// microphone's is reported with our sending side.
fn with_device_buffers(mut report: CallReport, devices: &Devices) -> CallReport {
    let ring = |label: &str| {
        devices
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, m)| m.stats().ring_ms_mean)
    };
    if let Some(ms) = ring("speaker") {
        for r in &mut report.received {
            r.mouth_to_ear_p50_ms = r.mouth_to_ear_p50_ms.map(|v| v + ms);
            r.mouth_to_ear_p95_ms = r.mouth_to_ear_p95_ms.map(|v| v + ms);
            r.device_playout_ms = Some(ms);
        }
    }
    report.sending.device_capture_ms = ring("mic");
    report
}

fn device_summary(label: &str, m: &DeviceMonitor) -> String {
    let s = m.stats();
    let o = &m.opened;
    format!(
        "{label} {} ({} Hz, {} ch, {}): {} frames, ring {:.1} ms on average, dropped {:.0} ms, {} underruns, {} device errors",
        o.id,
        o.rate,
        o.channels,
        o.format,
        s.frames,
        s.ring_ms_mean,
        s.dropped_ms,
        s.underruns,
        m.errors()
    )
}

/// The line printed on stderr the moment a member that records is admitted, or starts or
/// stops recording.
fn recording_notice(ev: &CallEvent) -> Option<String> {
    let who = |name: &str, peer: &str| {
        if name.is_empty() {
            peer.to_owned()
        } else {
            format!("{name} ({peer})")
        }
    };
    match ev {
        CallEvent::MemberAdmitted {
            peer,
            name,
            recording: true,
            ..
        }
        | CallEvent::RecordingChanged {
            peer,
            name,
            on: true,
            ..
        } => Some(format!("⚠ {} is recording this call", who(name, peer))),
        CallEvent::RecordingChanged {
            peer,
            name,
            on: false,
            ..
        } => Some(format!("{} stopped recording", who(name, peer))),
        _ => None,
    }
}

fn print_report(r: &CallReport) {
    println!("call in room {} as {} ({})", r.room, r.name, r.peer_id);
    for line in super::account::recording_notice(r) {
        println!("{line}");
    }
    println!(
        "sent {} frames of {} ms; mouth-to-ear (m2e) is playout time minus capture time from \
         the timestamps, with framing and look-ahead; t+b is frame complete to frame played",
        r.frames_captured, r.sending.frame_ms
    );
    println!(
        "{:<20} {:<9} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>5}",
        "from", "path", "received", "lost", "concealed", "m2e p50", "m2e p95", "t+b p50", "MOS"
    );
    for s in &r.received {
        let name = if s.name.is_empty() { &s.from } else { &s.name };
        println!(
            "{:<20} {:<9} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>5.2}{}",
            crate::score::short(name, 20),
            s.path,
            s.frames_received,
            s.frames_lost,
            s.frames_concealed,
            crate::score::fmt_ms(s.mouth_to_ear_p50_ms),
            crate::score::fmt_ms(s.mouth_to_ear_p95_ms),
            crate::score::fmt_ms(s.transit_buffer_p50_ms),
            s.mos,
            if s.recording { "  (was recording)" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Path;

    #[test]
    fn recording_is_announced_when_it_starts_stops_or_a_recording_member_arrives() {
        let admitted = |recording| CallEvent::MemberAdmitted {
            at_ms: 1,
            peer: "12D3KooWpeer".into(),
            name: "bob".into(),
            recording,
            path: Path::Direct,
        };
        let changed = |name: &str, on| CallEvent::RecordingChanged {
            at_ms: 2,
            peer: "12D3KooWpeer".into(),
            name: name.into(),
            on,
        };
        assert_eq!(
            recording_notice(&admitted(true)).as_deref(),
            Some("⚠ bob (12D3KooWpeer) is recording this call")
        );
        assert_eq!(recording_notice(&admitted(false)), None);
        assert_eq!(
            recording_notice(&changed("bob", true)).as_deref(),
            Some("⚠ bob (12D3KooWpeer) is recording this call")
        );
        assert_eq!(
            recording_notice(&changed("", false)).as_deref(),
            Some("12D3KooWpeer stopped recording")
        );
    }
}
