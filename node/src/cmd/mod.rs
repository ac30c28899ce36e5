//! The `confab` command line: parses, opens the account, and drives the library. Nothing
//! else in the crate imports this module.

mod account;
mod app;
mod bench;
mod call;
mod demo;
mod devices;
mod view;

pub use view::LogWriter;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;
use rand::RngCore;
use serde_json::json;

use crate::account::Store;
use account::open_store;

#[derive(Parser, Debug)]
#[command(
    name = "confab",
    version,
    about = "Peer-to-peer, end-to-end encrypted audio calls"
)]
pub struct Cli {
    /// Where the account lives (default: the platform data directory).
    #[arg(long, global = true, env = "CONFAB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant (a call's arguments) is no cost.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the account: a new identity key in the local store.
    Init {
        /// Display name shown to the other members.
        #[arg(long)]
        name: Option<String>,
        /// Seal the key, profile, rooms and history with a passphrase (prompted, or
        /// `CONFAB_PASSPHRASE`).
        #[arg(long)]
        passphrase: bool,
    },
    /// Export, import or delete the account, or set its passphrase.
    Account {
        #[command(subcommand)]
        command: account::AccountCommand,
    },
    /// The call history (room, peers, start, duration; never content).
    History(account::HistoryArgs),
    /// Account settings.
    Settings {
        #[command(subcommand)]
        command: account::SettingsCommand,
    },
    /// Show this account's peer id and name.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// Rooms.
    Room {
        #[command(subcommand)]
        command: RoomCommand,
    },
    /// Join a room from its ticket and talk.
    Call(CallArgs),
    /// Start the node with its local web app: create rooms, invite, talk from the browser.
    App(app::AppArgs),
    /// The community relays this account uses (reserved in every call, and put into the
    /// tickets of rooms it creates).
    Relay {
        #[command(subcommand)]
        command: RelayCommand,
    },
    /// Start several nodes on this machine, hold a call, and report how it went.
    Demo {
        /// Number of participants (2 to 16).
        #[arg(long, default_value_t = 3)]
        participants: usize,
        /// Seconds of audio each participant sends.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
        /// Keep the working directory (data dirs, WAVs, logs) and print where it is.
        #[arg(long)]
        keep: bool,
        /// Audio per frame, ms (20 or 10), for every participant.
        #[arg(long, default_value_t = 20, value_parser = parse_frame_ms)]
        frame_ms: u8,
        /// Opus application for every participant.
        #[arg(long, value_enum, default_value_t = OpusMode::Audio)]
        opus_mode: OpusMode,
    },
    /// List the audio inputs and outputs (`--mic NAME` / `--speaker NAME` take the first
    /// column, or any unique part of it or of the description).
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Measure the media path per frame and a node's CPU and memory in a real call.
    Bench {
        #[arg(long, default_value_t = 8)]
        participants: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RelayCommand {
    /// Add a relay (`/ip4/…/tcp/PORT/p2p/<relay peer id>`).
    Add { addr: Multiaddr },
    /// Remove a relay.
    Remove { addr: Multiaddr },
    /// List the relays.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoomCommand {
    /// Create a room and print its ticket.
    Create {
        /// Address to listen on for this room's calls (repeatable; default: a free TCP port on 127.0.0.1).
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// Address to put in the ticket instead of the listen addresses (repeatable).
        #[arg(long)]
        announce: Vec<Multiaddr>,
        /// Community relay (`…/p2p/<relay peer id>`, repeatable; default: the account's
        /// relays): the ticket gets a circuit address through each, besides the direct ones.
        #[arg(long)]
        relay: Vec<Multiaddr>,
        #[arg(long)]
        json: bool,
    },
    /// List the rooms this account created.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct CallArgs {
    /// The room ticket (`confab1…`), or `-` to read it from stdin. A ticket given here is
    /// visible to every local user (`ps`, `/proc/PID/cmdline`) and stays in the shell's
    /// history: prefer `--ticket-file FILE` or `-`.
    #[arg(
        required_unless_present = "ticket_file",
        conflicts_with = "ticket_file"
    )]
    pub ticket: Option<String>,
    /// Read the room ticket from FILE (`-` for stdin), keeping it off the command line.
    #[arg(long, value_name = "FILE")]
    pub ticket_file: Option<PathBuf>,
    /// Send this WAV file (looped).
    #[arg(long, conflicts_with_all = ["tone", "signal"])]
    pub input: Option<PathBuf>,
    /// Capture from the microphone NAME (without NAME: the default input; see `confab
    /// devices`). Put it after the ticket, or write `--mic=NAME`.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "",
          conflicts_with_all = ["input", "tone", "signal"])]
    pub mic: Option<String>,
    /// Play what you hear on the speaker NAME (without NAME: the default output).
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    pub speaker: Option<String>,
    /// Send a pure tone of this frequency in Hz.
    #[arg(long, conflicts_with = "signal")]
    pub tone: Option<f64>,
    /// Send the speech-like test signal number N.
    #[arg(long, hide = true)]
    pub signal: Option<usize>,
    /// Record what you hear into this WAV file (the room is told that you record).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Record each sender into its own WAV file in this directory (the room is told).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Seconds to talk; without it, until Ctrl-C.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Address to listen on (repeatable).
    #[arg(long)]
    pub listen: Vec<Multiaddr>,
    /// Constant bitrate: every frame the same size, sent even in silence.
    #[arg(long)]
    pub cbr: bool,
    /// Audio per frame, ms: 20 (the default) or 10 (10 ms less mouth-to-ear, a few more
    /// bytes of overhead per second). Receivers follow whatever each sender chose.
    #[arg(long, default_value_t = 20, value_parser = parse_frame_ms)]
    pub frame_ms: u8,
    /// Opus application: `audio` (the default), `voip`, or `low-delay` (CELT only, 2.5 ms
    /// look-ahead instead of 6.5 ms).
    #[arg(long, value_enum, default_value_t = OpusMode::Audio)]
    pub opus_mode: OpusMode,
    /// Also lay each sender's audio on the playout timeline, one WAV per sender in DIR (for
    /// measuring mouth-to-ear on the signal; the room is told that you record).
    #[arg(long, hide = true, value_name = "DIR")]
    pub timeline_dir: Option<PathBuf>,
    /// Community relay to reserve a slot on (`/ip4/…/tcp/PORT/p2p/<relay peer id>`,
    /// repeatable; default: the account's relays, see `confab relay`).
    #[arg(long)]
    pub relay: Vec<Multiaddr>,
    /// Dial and announce only relay circuit addresses (for tests).
    #[arg(long, hide = true)]
    pub relay_only: bool,
    /// Never try a DCUtR hole punch: relayed calls stay relayed (for tests).
    #[arg(long, hide = true)]
    pub no_hole_punch: bool,
    /// Append every Opus packet this node encodes to FILE (each a 2-byte big-endian length
    /// and the packet): your own audio as it leaves the codec, for checking what the wire
    /// carries.
    #[arg(long, value_name = "FILE")]
    pub dump_opus: Option<PathBuf>,
    /// Print the call report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Plain lines even when stdout is a terminal (no live view).
    #[arg(long)]
    pub no_view: bool,
}

/// Opus application, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OpusMode {
    Audio,
    Voip,
    LowDelay,
}

impl From<OpusMode> for crate::media::codec::Mode {
    fn from(m: OpusMode) -> Self {
        match m {
            OpusMode::Audio => Self::Audio,
            OpusMode::Voip => Self::Voip,
            OpusMode::LowDelay => Self::LowDelay,
        }
    }
}

impl OpusMode {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Voip => "voip",
            Self::LowDelay => "low-delay",
        }
    }
}

fn parse_frame_ms(s: &str) -> Result<u8, String> {
    let v: u8 = s
        .parse()
        .map_err(|_| format!("{s} is not a number of ms"))?;
    if crate::media::codec::ENCODER_FRAME_MS.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} ms frames are not supported (choose from {:?})",
            crate::media::codec::ENCODER_FRAME_MS
        ))
    }
}

/// An error with the exit code it deserves: 2 for bad input, 1 for everything else.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub(crate) fn input(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
    pub(crate) fn other(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// The data directory: `--data-dir`, else `CONFAB_DATA_DIR`, else the platform's.
pub fn data_dir(arg: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(d) = arg {
        return Ok(d);
    }
    directories::ProjectDirs::from("org", "confab", "confab")
        .map(|p| p.data_dir().to_path_buf())
        .ok_or_else(|| Failure::other("cannot find a home directory; pass --data-dir"))
}

/// The longest ticket file or stdin line read (a ticket with many addresses is a few KiB).
const MAX_TICKET_TEXT: u64 = 64 * 1024;

/// The ticket text: the argument itself, or read from `--ticket-file FILE` / `-` (stdin,
/// its first line). The room secret never has to be on the command line.
pub(crate) fn ticket_text(arg: Option<&str>, file: Option<&Path>) -> Result<String, Failure> {
    use std::io::{BufRead, Read};
    let from_stdin = || -> Result<String, Failure> {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(MAX_TICKET_TEXT)
            .read_line(&mut line)
            .map_err(|e| Failure::input(format!("cannot read the ticket from stdin: {e}")))?;
        Ok(line)
    };
    let text = match (arg, file) {
        (Some("-"), _) => from_stdin()?,
        (Some(t), _) => t.to_owned(),
        (None, Some(p)) if p.as_os_str() == "-" => from_stdin()?,
        (None, Some(p)) => {
            let mut text = String::new();
            std::fs::File::open(p)
                .and_then(|f| f.take(MAX_TICKET_TEXT).read_to_string(&mut text))
                .map_err(|e| {
                    Failure::input(format!("cannot read the ticket from {}: {e}", p.display()))
                })?;
            text
        }
        (None, None) => return Err(Failure::input("no ticket: give it, `-` or --ticket-file")),
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(Failure::input("the ticket is empty"));
    }
    Ok(text.to_owned())
}

fn peer_id_of(secret: &[u8; 32]) -> Result<libp2p::PeerId, Failure> {
    Ok(crate::net::keypair(secret)
        .map_err(Failure::other)?
        .public()
        .to_peer_id())
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> Result<u16, Failure> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Failure::other(format!("cannot find a free port: {e}")))
}

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Demo {
        participants,
        seconds,
        json,
        keep,
        frame_ms,
        opus_mode,
    } = cli.command
    {
        let opts = demo::DemoOptions {
            participants,
            seconds,
            frame_ms,
            opus_mode,
            keep,
        };
        return demo::run(opts, json);
    }
    if let Command::Bench {
        participants,
        seconds,
        json,
    } = cli.command
    {
        return bench::run(participants, seconds, json);
    }
    if let Command::Devices { json } = cli.command {
        return devices::run(json);
    }
    let dir = data_dir(cli.data_dir)?;
    match cli.command {
        Command::Init { name, passphrase } => init(&dir, name, passphrase),
        Command::Account { command } => account::run_account(&dir, command),
        Command::History(args) => account::run_history(&dir, args),
        Command::Settings { command } => account::run_settings(&dir, command),
        Command::Whoami { json } => whoami(&dir, json),
        Command::Room { command } => match command {
            RoomCommand::Create {
                listen,
                announce,
                relay,
                json,
            } => room_create(&dir, listen, announce, relay, json),
            RoomCommand::List { json } => room_list(&dir, json),
        },
        Command::Call(args) => call::run(&dir, args),
        Command::App(args) => app::run(&dir, args),
        Command::Relay { command } => relay_cmd(&dir, command),
        Command::Demo { .. } | Command::Bench { .. } | Command::Devices { .. } => Ok(()),
    }
}

fn init(dir: &Path, name: Option<String>, passphrase: bool) -> Result<(), Failure> {
    let fresh = !crate::account::has_store(dir);
    let store = if passphrase && fresh {
        let (key, record) = account::key_for_new_store()?;
        let store = Store::open(dir)?;
        store.seal_empty(key, &record)?;
        store
    } else if passphrase {
        return Err(Failure::input(
            "an account store exists here already; seal it with `confab account passphrase`",
        ));
    } else {
        open_store(dir)?
    };
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let created = store.set_identity_if_absent(&secret)?;
    if let Some(name) = &name {
        if name.len() > confab_protocol::wire::MAX_NAME {
            return Err(Failure::input(format!(
                "the name is {} bytes; the limit is {}",
                name.len(),
                confab_protocol::wire::MAX_NAME
            )));
        }
        store.set_name(name)?;
    }
    let secret = store.require_identity()?;
    let pid = peer_id_of(&secret)?;
    if created {
        println!("created account {pid} in {}", dir.display());
    } else {
        println!("account {pid} already exists in {}; kept it", dir.display());
    }
    Ok(())
}

fn whoami(dir: &Path, json: bool) -> Result<(), Failure> {
    let store = open_store(dir)?;
    let secret = store.require_identity()?;
    let pid = peer_id_of(&secret)?;
    let name = store.name()?.unwrap_or_default();
    if json {
        println!(
            "{}",
            json!({"peer_id": pid.to_string(), "name": name, "data_dir": dir.display().to_string()})
        );
    } else {
        println!(
            "peer id:  {pid}\nname:     {name}\ndata dir: {}",
            dir.display()
        );
    }
    Ok(())
}

/// `--relay` addresses, or else the account's: checked, deduplicated.
pub(super) fn relays_or_settings(
    store: &Store,
    given: Vec<Multiaddr>,
) -> Result<Vec<Multiaddr>, Failure> {
    let relays = if given.is_empty() {
        store
            .settings()?
            .relays
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    } else {
        given
    };
    let mut out: Vec<Multiaddr> = Vec::new();
    for r in relays {
        crate::net::relays::check_relay_addr(&r).map_err(Failure::input)?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

fn relay_cmd(dir: &Path, command: RelayCommand) -> Result<(), Failure> {
    let store = open_store(dir)?;
    let mut settings = store.settings()?;
    match command {
        RelayCommand::Add { addr } => {
            crate::net::relays::check_relay_addr(&addr).map_err(Failure::input)?;
            let text = addr.to_string();
            if settings.relays.contains(&text) {
                eprintln!("relay {text} is already in the list");
            } else {
                settings.relays.push(text.clone());
                store.set_settings(&settings)?;
                eprintln!("added relay {text}");
            }
        }
        RelayCommand::Remove { addr } => {
            let text = addr.to_string();
            let before = settings.relays.len();
            settings.relays.retain(|r| *r != text);
            if settings.relays.len() == before {
                return Err(Failure::input(format!("relay {text} is not in the list")));
            }
            store.set_settings(&settings)?;
            eprintln!("removed relay {text}");
        }
        RelayCommand::List { json } => {
            if json {
                println!("{}", json!(settings.relays));
            } else {
                for r in &settings.relays {
                    println!("{r}");
                }
            }
        }
    }
    Ok(())
}

fn room_create(
    dir: &Path,
    listen: Vec<Multiaddr>,
    announce: Vec<Multiaddr>,
    relay: Vec<Multiaddr>,
    json: bool,
) -> Result<(), Failure> {
    let store = open_store(dir)?;
    let secret = store.require_identity()?;
    let relays = relays_or_settings(&store, relay)?;
    let listen = if listen.is_empty() {
        let port = free_port()?;
        vec![format!("/ip4/127.0.0.1/tcp/{port}")
            .parse()
            .map_err(Failure::other)?]
    } else {
        listen
    };
    let announce = if announce.is_empty() {
        listen.clone()
    } else {
        announce
    };
    // Circuit addresses first: they work from behind any NAT.
    let me = peer_id_of(&secret)?;
    let mut addrs: Vec<String> = relays
        .iter()
        .map(|r| crate::net::relays::circuit_addr(r, me).to_string())
        .collect();
    addrs.extend(announce.iter().map(|a| a.to_string()));
    let room = crate::account::rooms::new_room(
        &store,
        addrs,
        listen.iter().map(|a| a.to_string()).collect(),
    )
    .map_err(|e| match e {
        crate::account::AccountError::Io(m) => Failure::input(m),
        other => Failure::other(other),
    })?;
    let (room_id, text) = (room.room_id, room.ticket);
    if json {
        println!(
            "{}",
            json!({"room_id": room_id, "ticket": text, "listen": listen.iter().map(|a| a.to_string()).collect::<Vec<_>>()})
        );
    } else {
        println!("{text}");
        eprintln!(
            "room {room_id} created; start it with `confab call --ticket-file FILE` or `confab call -` (it will listen on {})",
            listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn room_list(dir: &Path, json: bool) -> Result<(), Failure> {
    let store = open_store(dir)?;
    let rooms = store.rooms()?;
    if json {
        let list: Vec<_> = rooms
            .iter()
            .map(|r| json!({"room_id": r.room_id, "ticket": r.ticket, "listen": r.listen, "created_ms": r.created_ms}))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for r in rooms {
            println!("{}  {}", r.room_id, r.ticket);
        }
    }
    Ok(())
}
