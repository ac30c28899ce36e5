//! Tests of the real `confab-relay` binary: ready lines, SIGTERM, log privacy.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use confab_relay::client;
use libp2p::{Multiaddr, PeerId};

const T: Duration = Duration::from_secs(10);

struct Relay {
    child: Child,
    peer_id: PeerId,
    listen: Vec<Multiaddr>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary and read its ready lines from stdout.
fn spawn_relay(data_dir: &std::path::Path, extra: &[&str]) -> Result<Relay> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab-relay"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    // Read the ready lines on a thread so a stuck relay cannot hang the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line == "ready";
            lines.push(line);
            if done {
                break;
            }
        }
        let _ = tx.send(lines);
    });
    let lines = rx.recv_timeout(T).context("relay printed no ready line")?;
    let mut peer_id = None;
    let mut listen = Vec::new();
    for line in &lines {
        if let Some(p) = line.strip_prefix("peer-id ") {
            peer_id = Some(p.parse::<PeerId>()?);
        } else if let Some(a) = line.strip_prefix("listen ") {
            listen.push(a.parse::<Multiaddr>()?);
        }
    }
    if lines.last().map(String::as_str) != Some("ready") {
        let _ = child.kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("relay did not become ready: {lines:?} {err}");
    }
    Ok(Relay {
        child,
        peer_id: peer_id.context("no peer-id line")?,
        listen,
    })
}

/// SIGTERM the relay, wait for exit (bounded) and return (exit ok, stderr).
fn terminate(mut relay: Relay) -> Result<(bool, String)> {
    let pid = relay.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status()?;
    ensure!(status.success(), "kill failed");
    let deadline = std::time::Instant::now() + T;
    let exit = loop {
        if let Some(s) = relay.child.try_wait()? {
            break s;
        }
        if std::time::Instant::now() > deadline {
            bail!("relay did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    relay
        .child
        .stderr
        .take()
        .context("no stderr")?
        .read_to_string(&mut err)?;
    Ok((exit.success(), err))
}

/// Reserve, open a circuit and ping through it, so the relay logs real traffic.
async fn exercise(relay_addr: &Multiaddr) -> Result<()> {
    let mut a = client::new_client()?;
    let circuit = client::reserve(&mut a, relay_addr, T)
        .await
        .map_err(|e| anyhow!("reservation: {e}"))?;
    let _a = client::spawn_driver(a);
    let mut b = client::new_client()?;
    let dst = match circuit.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => bail!("bad circuit address"),
    };
    client::dial(&mut b, &circuit, dst, T)
        .await
        .map_err(|e| anyhow!("circuit: {e}"))?;
    Ok(())
}

fn tcp(relay: &Relay) -> Result<Multiaddr> {
    relay
        .listen
        .iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .cloned()
        .context("no tcp listen line")
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_logs_no_ips() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = spawn_relay(dir.path(), &[])?;
    assert_eq!(relay.listen.len(), 2, "{:?}", relay.listen);
    assert!(relay
        .listen
        .iter()
        .all(|a| a.to_string().ends_with(&relay.peer_id.to_string())));
    exercise(&tcp(&relay)?).await?;
    let (ok, stderr) = terminate(relay)?;
    assert!(ok, "exit status not 0; stderr:\n{stderr}");
    assert!(stderr.contains("relay stopped"), "{stderr}");
    assert!(stderr.contains("reservation accepted"), "{stderr}");
    // Who opened a circuit to whom is logged at debug level only.
    assert!(!stderr.contains("circuit opened"), "{stderr}");
    assert!(
        !stderr.contains("127.0.0.1"),
        "an IP address was logged:\n{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn log_ips_flag_shows_addresses() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = spawn_relay(dir.path(), &["--log-ips"])?;
    exercise(&tcp(&relay)?).await?;
    let (ok, stderr) = terminate(relay)?;
    assert!(ok);
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
    Ok(())
}

#[test]
fn peer_id_subcommand_matches_running_relay() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_confab-relay"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("peer-id")
        .output()?;
    ensure!(out.status.success());
    let printed: PeerId = String::from_utf8(out.stdout)?.trim().parse()?;
    let relay = spawn_relay(dir.path(), &[])?;
    assert_eq!(relay.peer_id, printed);
    Ok(())
}

#[test]
fn corrupt_key_fails_with_clear_message() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("identity.key");
    std::fs::write(&key, b"\x08\x01\x12")?;
    let out = Command::new(env!("CARGO_BIN_EXE_confab-relay"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupt") && err.contains("identity.key"),
        "{err}"
    );
    assert_eq!(std::fs::read(&key)?, b"\x08\x01\x12");
    Ok(())
}

#[test]
fn unknown_config_field_fails_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("relay.toml");
    std::fs::write(&cfg, "[limits]\nmax_circuit_secs = 5\n")?;
    let out = Command::new(env!("CARGO_BIN_EXE_confab-relay"))
        .arg("--config")
        .arg(&cfg)
        .arg("print-config")
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_circuit_secs"), "{err}");
    Ok(())
}
