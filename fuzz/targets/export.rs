//! `cargo afl fuzz` target: the account export decoder returns a document or an error.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = confab_node::account::export::parse_export(text);
        }
    });
}
