//! Everything the testbed takes from the node crate, in one place: the test signals, the
//! call report it parses, and the demo's scoring (so a testbed call is judged exactly as
//! `confab demo` judges one). When the node's modules move, only these lines change.

pub(crate) use confab_node::call::CallReport;
pub(crate) use confab_node::clock::now_ms;
pub(crate) use confab_node::media::audio::test_signal;
pub(crate) use confab_node::media::FRAME_SAMPLES;
pub(crate) use confab_node::score::{fmt_ms, score, verdict, NodeUsage, Pair, SIGNAL_SECS};
