//! The protocol crate stays sans-IO: its normal dependency tree has no tokio, libp2p or sled.

#[test]
fn dependency_tree_has_no_io_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "confab-protocol",
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
    assert!(tree.contains("confab-protocol"), "{tree}");
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        for banned in ["tokio", "libp2p", "sled", "mio", "async-std"] {
            assert!(
                name != banned && !name.starts_with(&format!("{banned}-")),
                "confab-protocol depends on {name}"
            );
        }
    }
}
