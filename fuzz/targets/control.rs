//! `cargo afl fuzz` target: `confab_protocol::fuzzing::control`.
fn main() {
    afl::fuzz!(|data: &[u8]| confab_protocol::fuzzing::control(data));
}
