//! The simulator stays embeddable: its normal dependency tree has the protocol crate and
//! plain crates only — no tokio, libp2p, sled, mio or the node crate.

// Tests may panic on what they did not expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn dependency_tree_has_no_io_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "confab-simulator",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("confab-simulator"), "{tree}");
    assert!(tree.contains("confab-protocol"), "{tree}");
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        for banned in ["tokio", "libp2p", "sled", "mio", "async-std", "confab-node"] {
            assert!(
                name != banned && !name.starts_with(&format!("{banned}-")),
                "confab-simulator depends on {name}"
            );
        }
    }
}
