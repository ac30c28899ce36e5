//! Where the audio a call sends comes from.

use std::path::Path;

use super::audio::{self, AudioError, FrameSource};

/// A source of frames of 48 kHz mono PCM. The call pulls one frame per frame duration (20 ms
/// unless the call chose 10) on its capture clock, asking for exactly `out.len()` samples; a
/// source that has nothing yet fills silence, one that has ended returns false.
pub trait AudioSource: Send + 'static {
    fn next_frame(&mut self, out: &mut [i16]) -> bool;
}

impl AudioSource for FrameSource {
    fn next_frame(&mut self, out: &mut [i16]) -> bool {
        FrameSource::next_frame(self, out)
    }
}

/// Digital silence, forever.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silence;

impl AudioSource for Silence {
    fn next_frame(&mut self, out: &mut [i16]) -> bool {
        out.fill(0);
        true
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

/// The speech-like test signal number `index`, looped.
pub fn test_signal(index: usize) -> FrameSource {
    FrameSource::new(audio::test_signal(index, audio::TEST_SIGNAL_SECS), true)
}

/// The test signal number `index` with the chirp train of [`super::onsets`] mixed in,
/// looped: what `confab call --signal` sends and `confab demo` scores against.
pub fn test_signal_with_chirps(index: usize) -> FrameSource {
    FrameSource::new(
        super::onsets::signal_with_chirps(index, audio::TEST_SIGNAL_SECS),
        true,
    )
}
