//! The cpal side of the devices: listing, choosing a format, and the streams. cpal types do
//! not leave this file. A cpal stream may not move between threads, so each one lives on a
//! thread of its own, which builds it, plays it and drops it when its owner is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{
    BufferSize, Device, FromSample, SampleFormat, SizedSample, StreamConfig, SupportedBufferSize,
    SupportedStreamConfigRange,
};

use super::convert::{downmix, to_i16, upmix, Pacer, Resampler};
use super::ring::{CaptureRing, PlayMix};
use super::{lock, Caps, DeviceError, DeviceInfo, Direction, Opened};
use crate::media::codec::SAMPLE_RATE;

/// The period asked of a device: 10 ms (its buffer holds two).
const PERIOD_MS: u32 = 10;
/// Sample rates `confab devices` checks a device for.
const COMMON_RATES: [u32; 7] = [8_000, 16_000, 22_050, 32_000, 44_100, 48_000, 96_000];
/// The sample formats confab converts, best first.
const FORMATS: [SampleFormat; 4] = [
    SampleFormat::I16,
    SampleFormat::F32,
    SampleFormat::I32,
    SampleFormat::U16,
];
/// Stream errors logged per stream (more are only counted).
const LOGGED_ERRORS: u64 = 5;

fn device_error(dir: Direction, name: &str, e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Device {
        kind: dir.as_str(),
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

fn id_of(d: &Device) -> String {
    d.id()
        .map_or_else(|_| d.to_string(), |id| id.id().to_owned())
}

fn ranges(d: &Device, dir: Direction) -> Vec<SupportedStreamConfigRange> {
    let got = match dir {
        Direction::Input => d.supported_input_configs().map(Iterator::collect),
        Direction::Output => d.supported_output_configs().map(Iterator::collect),
    };
    got.unwrap_or_default()
}

fn caps(ranges: &[SupportedStreamConfigRange]) -> Option<Caps> {
    let ours: Vec<_> = ranges
        .iter()
        .filter(|r| FORMATS.contains(&r.sample_format()))
        .collect();
    if ours.is_empty() {
        return None;
    }
    let mut channels: Vec<u16> = ours.iter().map(|r| r.channels()).collect();
    channels.sort_unstable();
    channels.dedup();
    let mut formats: Vec<String> = FORMATS
        .iter()
        .filter(|f| ours.iter().any(|r| r.sample_format() == **f))
        .map(|f| f.to_string())
        .collect();
    formats.dedup();
    Some(Caps {
        rates: COMMON_RATES
            .iter()
            .copied()
            .filter(|&rate| ours.iter().any(|r| r.contains_rate(rate)))
            .collect(),
        min_rate: ours.iter().map(|r| r.min_sample_rate()).min().unwrap_or(0),
        max_rate: ours.iter().map(|r| r.max_sample_rate()).max().unwrap_or(0),
        channels,
        formats,
    })
}

/// Every device of the default host (ALSA on Linux).
pub(super) fn list() -> Result<Vec<DeviceInfo>, DeviceError> {
    let host = cpal::default_host();
    let default_in = host.default_input_device().map(|d| id_of(&d));
    let default_out = host.default_output_device().map(|d| id_of(&d));
    let devices = host
        .devices()
        .map_err(|e| device_error(Direction::Input, "(all)", e))?;
    let mut out = Vec::new();
    for d in devices {
        let id = id_of(&d);
        let input = caps(&ranges(&d, Direction::Input));
        let output = caps(&ranges(&d, Direction::Output));
        if input.is_none() && output.is_none() {
            continue;
        }
        out.push(DeviceInfo {
            description: d
                .description()
                .map_or_else(|_| id.clone(), |x| x.to_string()),
            default_input: input.is_some() && default_in.as_deref() == Some(id.as_str()),
            default_output: output.is_some() && default_out.as_deref() == Some(id.as_str()),
            id,
            input,
            output,
        });
    }
    Ok(out)
}

/// The device `name` picks: the default for an empty name, else the device of that id, else
/// the one device whose id or description contains it (case-insensitive).
fn find(dir: Direction, name: &str) -> Result<Device, DeviceError> {
    let host = cpal::default_host();
    if name.is_empty() || name == "default" {
        let d = match dir {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
        return d.ok_or(DeviceError::NoDefault { kind: dir.as_str() });
    }
    let mut devices: Vec<Device> = host
        .devices()
        .map_err(|e| device_error(dir, name, e))?
        .filter(|d| !ranges(d, dir).is_empty())
        .collect();
    if let Some(i) = devices.iter().position(|d| id_of(d) == name) {
        return Ok(devices.swap_remove(i));
    }
    let wanted = name.to_lowercase();
    let mut hits: Vec<Device> = devices
        .into_iter()
        .filter(|d| {
            id_of(d).to_lowercase().contains(&wanted)
                || d.description()
                    .is_ok_and(|x| x.to_string().to_lowercase().contains(&wanted))
        })
        .collect();
    match hits.len() {
        0 => Err(DeviceError::NotFound {
            kind: dir.as_str(),
            name: name.to_owned(),
        }),
        1 => Ok(hits.swap_remove(0)),
        _ => Err(DeviceError::Ambiguous {
            kind: dir.as_str(),
            name: name.to_owned(),
            candidates: hits.iter().map(id_of).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// The format to open: 48 kHz if the device has it, else the rate nearest to it; the fewest
/// channels; 16-bit integers before floats; a 10 ms period if the device allows one.
fn choose(ranges: &[SupportedStreamConfigRange]) -> Option<(StreamConfig, SampleFormat)> {
    let best = ranges
        .iter()
        .filter(|r| FORMATS.contains(&r.sample_format()))
        .min_by_key(|r| {
            let rate = SAMPLE_RATE.clamp(r.min_sample_rate(), r.max_sample_rate());
            let format_rank = FORMATS.iter().position(|f| *f == r.sample_format());
            (rate.abs_diff(SAMPLE_RATE), r.channels(), format_rank)
        })?;
    let rate = SAMPLE_RATE.clamp(best.min_sample_rate(), best.max_sample_rate());
    let period = rate * PERIOD_MS / 1000;
    let buffer_size = match best.buffer_size() {
        SupportedBufferSize::Range { min, max } if (*min..=*max).contains(&period) => {
            BufferSize::Fixed(period)
        }
        _ => BufferSize::Default,
    };
    let config = StreamConfig {
        channels: best.channels(),
        sample_rate: rate,
        buffer_size,
    };
    Some((config, best.sample_format()))
}

/// The thread that owns one cpal stream; dropping this stops and closes it.
pub(super) struct StreamThread {
    stop: Option<mpsc::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl Drop for StreamThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

type Build =
    Box<dyn FnOnce(&Device, StreamConfig, SampleFormat) -> Result<cpal::Stream, String> + Send>;

/// Opens `name` for `dir` on a thread of its own and starts it, with the stream that `build`
/// makes.
fn spawn(dir: Direction, name: &str, build: Build) -> Result<(StreamThread, Opened), DeviceError> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Opened, DeviceError>>(1);
    let wanted = name.to_owned();
    let join = std::thread::Builder::new()
        .name(format!("confab-{}", dir.as_str()))
        .spawn(move || {
            let opened = (|| {
                let device = find(dir, &wanted)?;
                let id = id_of(&device);
                let offered = ranges(&device, dir);
                if offered.is_empty() {
                    return Err(device_error(
                        dir,
                        &id,
                        "cannot be opened (no sound card? `confab devices` lists what there is)",
                    ));
                }
                let (config, format) = choose(&offered).ok_or_else(|| {
                    device_error(dir, &id, "offers no sample format that confab converts")
                })?;
                let stream =
                    build(&device, config, format).map_err(|e| device_error(dir, &id, e))?;
                stream.play().map_err(|e| device_error(dir, &id, e))?;
                let opened = Opened {
                    id,
                    rate: config.sample_rate,
                    channels: config.channels,
                    format: format.to_string(),
                };
                Ok((stream, opened))
            })();
            match opened {
                Ok((stream, opened)) => {
                    let _ = ready_tx.send(Ok(opened));
                    // Until the owner is dropped.
                    let _ = stop_rx.recv();
                    drop(stream);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| device_error(dir, name, e))?;
    let thread = StreamThread {
        stop: Some(stop_tx),
        join: Some(join),
    };
    let opened = ready_rx
        .recv()
        .map_err(|_| device_error(dir, name, "the device thread ended"))??;
    Ok((thread, opened))
}

/// Counts a stream's errors into `errors` and logs the first few.
fn on_error(dir: Direction, errors: Arc<AtomicU64>) -> impl FnMut(cpal::Error) + Send + 'static {
    move |e| {
        let n = errors.fetch_add(1, Ordering::Relaxed);
        if n < LOGGED_ERRORS {
            tracing::warn!(device = dir.as_str(), error = %e, "audio device error");
        }
    }
}

fn input_stream<T>(
    device: &Device,
    config: StreamConfig,
    ring: Arc<Mutex<CaptureRing>>,
    errors: Arc<AtomicU64>,
) -> Result<cpal::Stream, String>
where
    T: SizedSample + Send + 'static,
    f32: FromSample<T>,
{
    let channels = usize::from(config.channels.max(1));
    let mut resampler = Resampler::new(config.sample_rate, SAMPLE_RATE);
    let mut pacer = Pacer::new(config.sample_rate);
    let (mut wide, mut mono, mut at48, mut pcm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let callback = move |data: &[T], _: &cpal::InputCallbackInfo| {
        wide.clear();
        wide.extend(data.iter().map(|s| s.to_sample::<f32>()));
        mono.clear();
        downmix(&wide, channels, &mut mono);
        at48.clear();
        resampler.process(&mono, &mut at48);
        pcm.clear();
        pcm.extend(at48.iter().map(|&s| to_i16(s)));
        lock(&ring).push(&pcm);
        if let Some(wait) = pacer.on_callback(Instant::now(), data.len() / channels) {
            std::thread::sleep(wait.min(Duration::from_millis(100)));
        }
    };
    device
        .build_input_stream::<T, _, _>(config, callback, on_error(Direction::Input, errors), None)
        .map_err(|e| e.to_string())
}

fn output_stream<T>(
    device: &Device,
    config: StreamConfig,
    mix: Arc<Mutex<PlayMix>>,
    errors: Arc<AtomicU64>,
) -> Result<cpal::Stream, String>
where
    T: SizedSample + FromSample<f32> + Send + 'static,
{
    let channels = usize::from(config.channels.max(1));
    let mut pacer = Pacer::new(config.sample_rate);
    let (mut mono, mut samples) = (Vec::new(), Vec::new());
    let callback = move |data: &mut [T], _: &cpal::OutputCallbackInfo| {
        let frames = data.len() / channels;
        mono.clear();
        mono.resize(frames, 0.0f32);
        lock(&mix).fill(&mut mono);
        samples.clear();
        samples.extend(mono.iter().map(|&s| T::from_sample(s.clamp(-1.0, 1.0))));
        upmix(&samples, channels, data);
        if let Some(wait) = pacer.on_callback(Instant::now(), frames) {
            std::thread::sleep(wait.min(Duration::from_millis(100)));
        }
    };
    device
        .build_output_stream::<T, _, _>(config, callback, on_error(Direction::Output, errors), None)
        .map_err(|e| e.to_string())
}

/// Opens the input `name` ("" for the default): its captured audio goes into `ring`.
pub(super) fn open_input(
    name: &str,
    ring: Arc<Mutex<CaptureRing>>,
    errors: Arc<AtomicU64>,
) -> Result<(StreamThread, Opened), DeviceError> {
    let build: Build = Box::new(move |device, config, format| match format {
        SampleFormat::I16 => input_stream::<i16>(device, config, ring, errors),
        SampleFormat::F32 => input_stream::<f32>(device, config, ring, errors),
        SampleFormat::I32 => input_stream::<i32>(device, config, ring, errors),
        SampleFormat::U16 => input_stream::<u16>(device, config, ring, errors),
        other => Err(format!("sample format {other} is not converted")),
    });
    spawn(Direction::Input, name, build)
}

/// Opens the output `name` ("" for the default), playing what `mix` mixes (remade for the
/// device's rate).
pub(super) fn open_output(
    name: &str,
    mix: Arc<Mutex<PlayMix>>,
    errors: Arc<AtomicU64>,
) -> Result<(StreamThread, Opened), DeviceError> {
    let build: Build = Box::new(move |device, config, format| {
        *lock(&mix) = PlayMix::new(config.sample_rate);
        match format {
            SampleFormat::I16 => output_stream::<i16>(device, config, mix, errors),
            SampleFormat::F32 => output_stream::<f32>(device, config, mix, errors),
            SampleFormat::I32 => output_stream::<i32>(device, config, mix, errors),
            SampleFormat::U16 => output_stream::<u16>(device, config, mix, errors),
            other => Err(format!("sample format {other} is not converted")),
        }
    });
    spawn(Direction::Output, name, build)
}
