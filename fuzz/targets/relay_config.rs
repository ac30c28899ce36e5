//! `cargo afl fuzz` target: the relay's TOML config decoder returns a config or an error.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = confab_relay::Config::from_toml_str(text);
        }
    });
}
