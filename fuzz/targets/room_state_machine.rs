//! `cargo afl fuzz` target: `confab_protocol::fuzzing::room_state_machine`, the input split into frames.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        confab_protocol::fuzzing::room_state_machine(&confab_protocol::fuzzing::split_frames(data));
    });
}
