//! Native audio devices: a microphone as an [`AudioSource`], a speaker as an [`AudioSink`],
//! and the list `confab devices` prints.
//!
//! ```text
//!  mic callback ─ device format ─► downmix, resample ─► CaptureRing (48 kHz mono, ≤ 100 ms)
//!                                                   ─► DeviceSource::next_frame (20 ms, call's clock)
//!  DeviceSink::play (per sender, 48 kHz) ─► resample ─► PlayMix (a ring per sender, ≤ 100 ms)
//!                                                   ─► speaker callback: mix, upmix, device format
//! ```
//!
//! Both rings are bounded: the oldest audio goes when the other side does not take it, and
//! an empty ring plays (or hands out) silence; both are counted ([`DeviceStats`]). The cpal
//! code is in `host.rs`, behind the default-on cargo feature `devices` (ALSA on Linux,
//! which needs `libasound2-dev` to build); no cpal type leaves it. Without the feature,
//! opening or listing a device is [`DeviceError::NotBuilt`].

mod convert;
mod ring;

#[cfg(feature = "devices")]
mod host;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::audio::AudioError;
use super::sink::{AudioSink, Played};
use super::source::AudioSource;
pub use convert::{downmix, from_i16, to_i16, upmix, Pacer, Resampler, MAX_LEAD};
pub use ring::{CaptureRing, PlayMix, MAX_SENDERS, RING_MS};

/// Why a device could not be listed or opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("this confab was built without audio devices (cargo feature `devices`)")]
    NotBuilt,
    #[error("no default audio {kind} device (see `confab devices`)")]
    NoDefault { kind: &'static str },
    #[error("no audio {kind} device matches {name:?} (see `confab devices`)")]
    NotFound { kind: &'static str, name: String },
    #[error("{name:?} matches several audio {kind} devices: {candidates}")]
    Ambiguous {
        kind: &'static str,
        name: String,
        candidates: String,
    },
    #[error("audio {kind} device {name}: {reason}")]
    Device {
        kind: &'static str,
        name: String,
        reason: String,
    },
}

/// Capture or playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}

/// What a device offers in one direction (in the sample formats confab converts).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Caps {
    /// The common rates (8 to 96 kHz) it takes.
    pub rates: Vec<u32>,
    pub min_rate: u32,
    pub max_rate: u32,
    pub channels: Vec<u16>,
    pub formats: Vec<String>,
}

/// One device as `confab devices` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// What `--mic NAME` / `--speaker NAME` takes (ALSA: the PCM name).
    pub id: String,
    pub description: String,
    pub input: Option<Caps>,
    pub output: Option<Caps>,
    pub default_input: bool,
    pub default_output: bool,
}

/// The format a device was opened in.
#[derive(Debug, Clone, Serialize)]
pub struct Opened {
    pub id: String,
    pub rate: u32,
    pub channels: u16,
    pub format: String,
}

/// A device's ring, so far.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct DeviceStats {
    /// 20 ms frames handed to the call (microphone) or taken from it (speaker).
    pub frames: u64,
    /// Audio dropped because the ring was full (the other side did not take it), ms.
    pub dropped_ms: f64,
    /// Times the ring ran dry while audio was flowing (silence filled in).
    pub underruns: u64,
    /// Mean fill of the ring when the consumer took from it, ms: the latency it adds.
    pub ring_ms_mean: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(feature = "devices")]
type Thread = host::StreamThread;
#[cfg(not(feature = "devices"))]
type Thread = ();

#[derive(Clone)]
enum Ring {
    Capture(Arc<Mutex<CaptureRing>>),
    Play(Arc<Mutex<PlayMix>>),
}

/// Watches an open device from outside the call (the live view, the summary at the end).
#[derive(Clone)]
pub struct DeviceMonitor {
    pub direction: Direction,
    pub opened: Opened,
    ring: Ring,
    errors: Arc<AtomicU64>,
}

impl DeviceMonitor {
    pub fn stats(&self) -> DeviceStats {
        match &self.ring {
            Ring::Capture(r) => lock(r).stats(),
            Ring::Play(m) => lock(m).stats(),
        }
    }

    /// Errors the device reported (xruns and the like).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// A microphone. The device's stream runs on a thread of its own until this is dropped.
pub struct DeviceSource {
    ring: Arc<Mutex<CaptureRing>>,
    monitor: DeviceMonitor,
    _thread: Thread,
}

impl DeviceSource {
    /// Opens the input `name` ("" or "default": the default input).
    pub fn open(name: &str) -> Result<Self, DeviceError> {
        let ring = Arc::new(Mutex::new(CaptureRing::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let (thread, opened) = open_input(name, ring.clone(), errors.clone())?;
        Ok(Self {
            monitor: DeviceMonitor {
                direction: Direction::Input,
                opened,
                ring: Ring::Capture(ring.clone()),
                errors,
            },
            ring,
            _thread: thread,
        })
    }

    pub fn monitor(&self) -> DeviceMonitor {
        self.monitor.clone()
    }
}

impl AudioSource for DeviceSource {
    fn next_frame(&mut self, out: &mut [i16]) -> bool {
        lock(&self.ring).pop_into(out);
        true
    }
}

/// A speaker: every sender's frames, mixed. The stream runs on a thread of its own until
/// this is dropped.
pub struct DeviceSink {
    mix: Arc<Mutex<PlayMix>>,
    monitor: DeviceMonitor,
    _thread: Thread,
}

impl DeviceSink {
    /// Opens the output `name` ("" or "default": the default output).
    pub fn open(name: &str) -> Result<Self, DeviceError> {
        let mix = Arc::new(Mutex::new(PlayMix::new(super::codec::SAMPLE_RATE)));
        let errors = Arc::new(AtomicU64::new(0));
        let (thread, opened) = open_output(name, mix.clone(), errors.clone())?;
        Ok(Self {
            monitor: DeviceMonitor {
                direction: Direction::Output,
                opened,
                ring: Ring::Play(mix.clone()),
                errors,
            },
            mix,
            _thread: thread,
        })
    }

    pub fn monitor(&self) -> DeviceMonitor {
        self.monitor.clone()
    }
}

impl AudioSink for DeviceSink {
    fn play(&mut self, frame: Played<'_>) -> Result<(), AudioError> {
        lock(&self.mix).play(frame.from, frame.at_ms, frame.pcm);
        Ok(())
    }
}

/// The devices of the platform's audio host.
pub fn list() -> Result<Vec<DeviceInfo>, DeviceError> {
    #[cfg(feature = "devices")]
    {
        host::list()
    }
    #[cfg(not(feature = "devices"))]
    {
        Err(DeviceError::NotBuilt)
    }
}

#[cfg(feature = "devices")]
fn open_input(
    name: &str,
    ring: Arc<Mutex<CaptureRing>>,
    errors: Arc<AtomicU64>,
) -> Result<(Thread, Opened), DeviceError> {
    host::open_input(name, ring, errors)
}

#[cfg(feature = "devices")]
fn open_output(
    name: &str,
    mix: Arc<Mutex<PlayMix>>,
    errors: Arc<AtomicU64>,
) -> Result<(Thread, Opened), DeviceError> {
    host::open_output(name, mix, errors)
}

#[cfg(not(feature = "devices"))]
fn open_input(
    _name: &str,
    _ring: Arc<Mutex<CaptureRing>>,
    _errors: Arc<AtomicU64>,
) -> Result<(Thread, Opened), DeviceError> {
    Err(DeviceError::NotBuilt)
}

#[cfg(not(feature = "devices"))]
fn open_output(
    _name: &str,
    _mix: Arc<Mutex<PlayMix>>,
    _errors: Arc<AtomicU64>,
) -> Result<(Thread, Opened), DeviceError> {
    Err(DeviceError::NotBuilt)
}
