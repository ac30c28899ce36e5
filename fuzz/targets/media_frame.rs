//! `cargo afl fuzz` target: `confab_protocol::fuzzing::media_frame`.
fn main() {
    afl::fuzz!(|data: &[u8]| confab_protocol::fuzzing::media_frame(data));
}
