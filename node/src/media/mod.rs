//! Audio: the Opus codec, WAV files, test signals and their comparison, and the sources and
//! sinks a call captures from and plays into (files, test signals, and native devices).

pub mod audio;
pub mod codec;
pub mod device;
pub mod onsets;
pub mod sink;
pub mod source;

pub use codec::{FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
pub use sink::AudioSink;
pub use source::AudioSource;
