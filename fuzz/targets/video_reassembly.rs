//! `cargo afl fuzz` target: `confab_protocol::fuzzing::video_reassembly`, the input split into frames.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        confab_protocol::fuzzing::video_reassembly(&confab_protocol::fuzzing::split_frames(data));
    });
}
