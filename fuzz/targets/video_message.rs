//! `cargo afl fuzz` target: `confab_protocol::fuzzing::video_message`.
fn main() {
    afl::fuzz!(|data: &[u8]| confab_protocol::fuzzing::video_message(data));
}
