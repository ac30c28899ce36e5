//! Where the audio a call sends comes from.

use std::path::Path;

use super::audio::{self, AudioError, FrameSource};
use super::codec::FRAME_SAMPLES;

/// A source of 20 ms frames of 48 kHz mono PCM. The call pulls one frame every 20 ms on its
/// capture clock; a source that has nothing yet returns silence, one that has ended `None`.
pub trait AudioSource: Send + 'static {
    fn next_frame(&mut self) -> Option<[i16; FRAME_SAMPLES]>;
}

impl AudioSource for FrameSource {
    fn next_frame(&mut self) -> Option<[i16; FRAME_SAMPLES]> {
        FrameSource::next_frame(self)
    }
}

/// Digital silence, forever.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silence;

impl AudioSource for Silence {
    fn next_frame(&mut self) -> Option<[i16; FRAME_SAMPLES]> {
        Some([0; FRAME_SAMPLES])
    }
}

/// A WAV file, looped.
pub fn wav(path: &Path) -> Result<FrameSource, AudioError> {
    Ok(FrameSource::new(audio::read_wav(path)?, true))
}

/// A pure tone of `hz`, forever.
pub fn tone(hz: f64) -> FrameSource {
    FrameSource::new(audio::tone(hz, 10.0), true)
}

/// The speech-like test signal number `index`, looped (what `confab demo` scores against).
pub fn test_signal(index: usize) -> FrameSource {
    FrameSource::new(audio::test_signal(index, audio::TEST_SIGNAL_SECS), true)
}
