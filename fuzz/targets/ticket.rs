//! `cargo afl fuzz` target: `confab_protocol::fuzzing::ticket`.
fn main() {
    afl::fuzz!(|data: &[u8]| confab_protocol::fuzzing::ticket(data));
}
