//! Privacy properties of the `confab` binary, one test per row of `docs/privacy.md`: the
//! account lifecycle on the local store (export/import, delete, history, passphrase), damaged
//! stores, recording notices, constant-bitrate media on the wire, and whom a node talks to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

fn run(mut c: Command) -> Output {
    c.output().expect("run confab")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn create_room(dir: &Path, port: u16) -> String {
    let mut c = confab(dir);
    c.args(["room", "create", "--json", "--listen"])
        .arg(format!("/ip4/127.0.0.1/tcp/{port}"));
    let v: Value = serde_json::from_str(&run_ok(c)).expect("room json");
    v["ticket"].as_str().expect("ticket").to_string()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// [`snapshot`] without `db/confab-clean`, the fingerprint confab rewrites whenever a store
/// it opened closes (sled's files' times change on every open, their bytes do not).
fn data_snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut s = snapshot(dir);
    s.remove(Path::new("db/confab-clean"));
    s
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir).into_keys().collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether any file under `dir` contains `needle`.
fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    snapshot(dir).values().any(|b| contains(b, needle))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn export(dir: &Path, with_key: bool, passphrase: Option<&str>) -> Value {
    let mut c = confab(dir);
    c.args(["account", "export"]);
    if with_key {
        c.arg("--include-secret-key");
    }
    if let Some(p) = passphrase {
        c.env("CONFAB_PASSPHRASE", p);
    }
    serde_json::from_str(&run_ok(c)).expect("export json")
}

fn without_time(mut v: Value) -> Value {
    v.as_object_mut().expect("object").remove("exported_ms");
    v
}

fn put_history(dir: &Path, room: &str, started_ms: u64) {
    let s = confab_node::account::Store::open(dir).expect("open");
    s.record_call(&confab_node::account::HistoryEntry {
        room_id: room.into(),
        peers: vec!["12D3KooWexamplepeer".into()],
        started_ms,
        duration_ms: 42_000,
    })
    .expect("record");
}

fn now_ms() -> u64 {
    confab_node::clock::now_ms()
}

#[test]
fn export_import_round_trip_keeps_the_identity_and_the_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let pid = init(&a, "ada");
    create_room(&a, free_port());
    let mut set = confab(&a);
    set.args(["settings", "set", "history-retention-days", "12"]);
    run_ok(set);
    put_history(&a, "00112233445566778899aabbccddeeff", now_ms() - 1000);

    let doc = export(&a, true, None);
    assert_eq!(doc["format"], "confab-account");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["peer_id"], pid.as_str());
    assert_eq!(doc["name"], "ada");
    assert_eq!(doc["rooms"].as_array().expect("rooms").len(), 1);
    assert_eq!(doc["history"].as_array().expect("history").len(), 1);
    assert_eq!(doc["history_retention_days"], 12);
    let file = tmp.path().join("a.json");
    std::fs::write(&file, doc.to_string()).expect("write");

    // Into an empty data dir: the same identity and the same data.
    let mut imp = confab(&b);
    imp.args(["account", "import"]).arg(&file);
    run_ok(imp);
    assert_eq!(whoami(&b, None), pid);
    assert_eq!(
        without_time(export(&b, true, None)),
        without_time(doc.clone())
    );

    // Without the secret key: the same data under a new identity, and it says so.
    let mut nokey = export(&a, false, None);
    assert!(nokey.get("secret_key").is_none());
    let file2 = tmp.path().join("a-nokey.json");
    std::fs::write(&file2, nokey.to_string()).expect("write");
    let mut imp = confab(&c);
    imp.args(["account", "import"]).arg(&file2);
    assert!(run_ok(imp).contains("new identity"));
    let pid_c = whoami(&c, None);
    assert_ne!(pid_c, pid);
    let mut again = export(&c, false, None);
    for v in [&mut nokey, &mut again] {
        let o = v.as_object_mut().expect("obj");
        o.remove("exported_ms");
        o.remove("peer_id");
    }
    assert_eq!(again, nokey);
}

#[test]
fn import_refuses_an_existing_account_and_a_newer_export_and_leaves_the_store_untouched() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let pid_a = init(&a, "ada");
    let pid_b = init(&b, "bob");
    let file = tmp.path().join("a.json");
    std::fs::write(&file, export(&a, true, None).to_string()).expect("write");

    let before = data_snapshot(&b);
    let mut imp = confab(&b);
    imp.args(["account", "import"]).arg(&file);
    let out = run(imp);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already holds an account"),
        "{}",
        stderr(&out)
    );
    assert_eq!(data_snapshot(&b), before, "nothing was overwritten");
    assert_eq!(whoami(&b, None), pid_b);

    // A document from a newer confab: a clear error, nothing touched.
    let mut newer = export(&a, true, None);
    newer["version"] = Value::from(2);
    newer["something_new"] = Value::from(true);
    let newer_file = tmp.path().join("newer.json");
    std::fs::write(&newer_file, newer.to_string()).expect("write");
    let before = data_snapshot(&b);
    for force in [false, true] {
        let mut imp = confab(&b);
        imp.args(["account", "import"]).arg(&newer_file);
        if force {
            imp.arg("--force");
        }
        let out = run(imp);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(
            err.contains("format version 2") && err.contains("newer confab"),
            "{err}"
        );
        assert_eq!(data_snapshot(&b), before, "nothing was overwritten");
    }

    // --force replaces the account (the old one is deleted, not merged).
    let mut imp = confab(&b);
    imp.args(["account", "import", "--force"]).arg(&file);
    run_ok(imp);
    assert_eq!(whoami(&b, None), pid_a);
}

#[test]
fn delete_leaves_no_file_of_the_account_and_is_refused_while_a_call_runs() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let a = tmp.path().join("a");
    init(&a, "ada");
    let ticket = create_room(&a, free_port());
    put_history(&a, "aa", now_ms());
    let before = listing(&a);
    assert!(before.iter().any(|p| p.ends_with("db/db")), "{before:?}");

    // Without --yes and without a terminal to ask on: refused.
    let mut del = confab(&a);
    del.args(["account", "delete"]);
    let out = run(del);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(listing(&a), before);

    // A running call holds the store: delete is refused and changes nothing.
    let mut call = confab(&a);
    call.args(["call", &ticket, "--duration", "3", "--tone", "440"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut call = call.spawn().expect("call");
    wait_for_line(&mut call, "joining room");
    let snap = snapshot(&a);
    let mut del = confab(&a);
    del.args(["account", "delete", "--yes"]);
    let out = run(del);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    assert_eq!(listing(&a), listing_of(&snap), "nothing was deleted");
    let status = call.wait().expect("call ends");
    assert!(status.success());

    let mut del = confab(&a);
    del.args(["account", "delete", "--yes"]);
    run_ok(del);
    assert!(!a.exists(), "data dir left: {:?}", listing(&a));
    // And the account is gone for confab too.
    let mut who = confab(&a);
    who.arg("whoami");
    let out = run(who);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("confab init"));
}

fn listing_of(snap: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<PathBuf> {
    snap.keys().cloned().collect()
}

/// Reads the child's stderr until a line contains `needle`; the rest is drained in the
/// background so the child never blocks on a full pipe.
fn wait_for_line(child: &mut Child, needle: &str) {
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains(&needle) {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the call started");
}

#[test]
fn a_passphrase_hides_the_key_and_the_names_in_the_raw_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = tmp.path().join("a");
    let name = "Ada Lovelace-Byron";
    let pass = "correct horse battery staple";
    let mut c = confab(&a);
    c.args(["init", "--passphrase", "--name", name])
        .env("CONFAB_PASSPHRASE", pass);
    run_ok(c);
    let mut c = confab(&a);
    c.args(["room", "create", "--json"])
        .env("CONFAB_PASSPHRASE", pass);
    let room: Value = serde_json::from_str(&run_ok(c)).expect("room");
    let doc = export(&a, true, Some(pass));
    let secret = unhex(doc["secret_key"].as_str().expect("key"));
    let room_secret = room["ticket"].as_str().expect("ticket").to_string();
    assert_eq!(secret.len(), 32);
    assert!(
        !files_contain(&a, &secret),
        "the secret key is in the files"
    );
    assert!(
        !files_contain(&a, name.as_bytes()),
        "the name is in the files"
    );
    assert!(
        !files_contain(&a, room_secret.as_bytes()),
        "the ticket is in the files"
    );

    // A wrong passphrase, or none: a clear error, exit code 2.
    let mut c = confab(&a);
    c.args(["whoami"]).env("CONFAB_PASSPHRASE", "wrong");
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
    let mut c = confab(&a);
    c.arg("whoami");
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("CONFAB_PASSPHRASE"),
        "{}",
        stderr(&out)
    );

    // Sealing an account that was in clear leaves no clear copy in sled's log.
    let b = tmp.path().join("b");
    let pid_b = init(&b, name);
    let secret_b = unhex(export(&b, true, None)["secret_key"].as_str().expect("key"));
    assert!(
        files_contain(&b, name.as_bytes()),
        "control: clear store shows the name"
    );
    let mut c = confab(&b);
    c.args(["account", "passphrase"])
        .env("CONFAB_PASSPHRASE", pass);
    run_ok(c);
    assert!(!files_contain(&b, &secret_b));
    assert!(!files_contain(&b, name.as_bytes()));
    assert_eq!(whoami(&b, Some(pass)), pid_b);
    // Change it, then remove it.
    let mut c = confab(&b);
    c.args(["account", "passphrase"])
        .env("CONFAB_PASSPHRASE", pass)
        .env("CONFAB_NEW_PASSPHRASE", "second");
    run_ok(c);
    let mut c = confab(&b);
    c.arg("whoami").env("CONFAB_PASSPHRASE", pass);
    assert_eq!(
        run(c).status.code(),
        Some(2),
        "the old passphrase no longer opens it"
    );
    assert_eq!(whoami(&b, Some("second")), pid_b);
    let mut c = confab(&b);
    c.args(["account", "passphrase", "--remove"])
        .env("CONFAB_PASSPHRASE", "second");
    run_ok(c);
    assert_eq!(whoami(&b, None), pid_b);
}

#[test]
fn a_damaged_store_gets_a_clear_error_and_is_left_byte_identical() {
    let tmp = tempfile::tempdir().expect("tmp");
    let good = tmp.path().join("good");
    init(&good, "ada");
    create_room(&good, free_port());
    let damages: Vec<(&str, Damage)> = vec![
        (
            "truncated db",
            Box::new(|d: &Path| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("db/db"))
                    .expect("open");
                f.set_len(100).expect("truncate");
            }),
        ),
        (
            "empty db",
            Box::new(|d: &Path| std::fs::write(d.join("db/db"), b"").expect("write")),
        ),
        (
            "garbage db",
            Box::new(|d: &Path| {
                let mut bytes = std::fs::read(d.join("db/db")).expect("read");
                for (i, b) in bytes.iter_mut().enumerate().take(4096) {
                    *b = (i as u8).wrapping_mul(151).wrapping_add(7);
                }
                std::fs::write(d.join("db/db"), bytes).expect("write");
            }),
        ),
        (
            "truncated conf",
            Box::new(|d: &Path| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("db/conf"))
                    .expect("open");
                f.set_len(5).expect("truncate");
            }),
        ),
    ];
    for (what, damage) in damages {
        let dir = tmp.path().join(what.replace(' ', "-"));
        copy_dir(&good, &dir);
        damage(&dir);
        let before = snapshot(&dir);
        for args in [
            &["whoami"][..],
            &["init", "--name", "x"],
            &["account", "export"],
        ] {
            let mut c = confab(&dir);
            c.args(args);
            let out = run(c);
            assert_eq!(out.status.code(), Some(1), "{what} {args:?}");
            let err = stderr(&out);
            assert!(
                err.contains("corrupt") && err.contains("left untouched"),
                "{what} {args:?}: {err}"
            );
            assert_eq!(snapshot(&dir), before, "{what} {args:?}: files changed");
        }
        // Delete still works on a damaged store.
        let mut c = confab(&dir);
        c.args(["account", "delete", "--yes"]);
        run_ok(c);
        assert!(!dir.exists());
    }
}

/// A way to damage a store in a data directory.
type Damage = Box<dyn Fn(&Path)>;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

#[test]
fn history_expires_on_start_and_settings_change_the_retention() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = tmp.path().join("a");
    init(&a, "ada");
    let day = 24 * 3600 * 1000;
    put_history(&a, "recent", now_ms() - 2 * day);
    put_history(&a, "old", now_ms() - 31 * day);
    let list = |dir: &Path| -> Vec<String> {
        let mut c = confab(dir);
        c.args(["history", "--json"]);
        let v: Value = serde_json::from_str(&run_ok(c)).expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|e| e["room_id"].as_str().expect("room").to_string())
            .collect()
    };
    // The 31-day-old call went when the store was opened.
    assert_eq!(list(&a), vec!["recent".to_string()]);
    let mut c = confab(&a);
    c.args(["settings", "set", "history-retention-days", "1"]);
    run_ok(c);
    assert!(list(&a).is_empty());
    let mut c = confab(&a);
    c.args(["settings", "set", "history-retention-days", "many"]);
    assert_eq!(run(c).status.code(), Some(2));
}

/// Remote endpoints (ip, port) of the TCP sockets of `pid`, with the local port.
fn tcp_endpoints(pid: u32) -> Vec<(u16, String, u16, String)> {
    let mut inodes = BTreeSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let l = link.to_string_lossy().into_owned();
                if let Some(i) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(i.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !inodes.contains(f[9]) {
                continue;
            }
            let (_, lport) = parse_addr(f[1]);
            let (rip, rport) = parse_addr(f[2]);
            out.push((lport, rip, rport, format!("{table} state {}", f[3])));
        }
    }
    out
}

/// `0100007F:1F90` → ("127.0.0.1", 8080); IPv6 addresses are returned as hex.
fn parse_addr(s: &str) -> (String, u16) {
    let (ip, port) = s.split_once(':').expect("addr");
    let port = u16::from_str_radix(port, 16).expect("port");
    if ip.len() == 8 {
        let v = u32::from_str_radix(ip, 16).expect("ip");
        let b = v.to_le_bytes();
        (format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]), port)
    } else {
        (ip.to_string(), port)
    }
}

#[test]
fn a_recording_member_is_announced_nobody_else_records_and_only_members_are_contacted() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let pid_a = init(&a, "alice");
    let pid_b = init(&b, "bob");
    let (port_a, port_b) = (free_port(), free_port());
    let ticket = create_room(&a, port_a);
    let cwd_a = tmp.path().join("cwd-a");
    std::fs::create_dir_all(&cwd_a).expect("mkdir");
    let recording = tmp.path().join("bob-recording.wav");

    let mut host = confab(&a);
    host.args(["call", &ticket, "--duration", "4", "--tone", "440"])
        .current_dir(&cwd_a)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let host = host.spawn().expect("host");
    let mut guest = confab(&b);
    guest
        .args([
            "call",
            &ticket,
            "--json",
            "--duration",
            "4",
            "--tone",
            "660",
        ])
        .arg("--listen")
        .arg(format!("/ip4/127.0.0.1/tcp/{port_b}"))
        .arg("--output")
        .arg(&recording)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let guest = guest.spawn().expect("guest");

    // Mid-call: every socket of the host is a listener or talks to the other member.
    std::thread::sleep(Duration::from_secs(2));
    let endpoints = tcp_endpoints(host.id());
    assert!(!endpoints.is_empty());
    for (lport, rip, rport, what) in &endpoints {
        let listener = rport == &0;
        let to_member = rip == "127.0.0.1" && (*rport == port_b || *lport == port_a);
        assert!(
            listener || to_member,
            "host talks to {rip}:{rport} from port {lport} ({what}): {endpoints:?}"
        );
    }
    assert!(
        endpoints.iter().any(|(_, rip, _, _)| rip == "127.0.0.1"),
        "the host is connected to the guest: {endpoints:?}"
    );

    let host = host.wait_with_output().expect("host");
    let guest = guest.wait_with_output().expect("guest");
    assert!(host.status.success() && guest.status.success());
    let human = String::from_utf8_lossy(&host.stdout);
    assert!(
        human.contains(&format!("⚠ bob ({pid_b}) is recording this call")),
        "{human}"
    );
    let report: Value = serde_json::from_slice(&guest.stdout).expect("guest report");
    let from_a = report["received"]
        .as_array()
        .expect("received")
        .iter()
        .find(|r| r["from"] == pid_a.as_str())
        .expect("heard alice");
    assert_eq!(from_a["recording"], false, "alice did not record");
    assert!(recording.exists(), "bob's recording was written");
    // Alice gave no --output: nothing was written where she ran, nor in her data dir.
    assert!(listing(&cwd_a).is_empty(), "{:?}", listing(&cwd_a));
    assert!(
        listing(&a).iter().all(|p| p.starts_with("db")),
        "{:?}",
        listing(&a)
    );

    // Both remember the call: the room, the other member, a duration; no content.
    for (dir, other) in [(&a, &pid_b), (&b, &pid_a)] {
        let mut c = confab(dir);
        c.args(["history", "--json"]);
        let h: Value = serde_json::from_str(&run_ok(c)).expect("history");
        let h = h.as_array().expect("array");
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0]["peers"], serde_json::json!([other]));
        assert!(h[0]["duration_ms"].as_u64().expect("dur") >= 3_000);
        assert_eq!(
            h[0].as_object().expect("obj").len(),
            4,
            "room, peers, start, duration only: {h:?}"
        );
        let mut c = confab(dir);
        c.args(["history", "--clear"]);
        run_ok(c);
        let mut c = confab(dir);
        c.args(["history", "--json"]);
        assert_eq!(run_ok(c).trim(), "[]");
    }
}

/// Writes `seconds` of digital silence as a 48 kHz mono 16-bit WAV.
fn silence_wav(path: &Path, seconds: usize) {
    let samples = 48_000 * seconds;
    let data_len = (samples * 2) as u32;
    let mut b = Vec::with_capacity(44 + samples * 2);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&48_000u32.to_le_bytes());
    b.extend_from_slice(&96_000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    b.resize(44 + samples * 2, 0);
    std::fs::write(path, b).expect("write wav");
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// (len, at_ms) of every media frame line with `message` in a node's log.
fn wire_frames(log: &str, message: &str) -> Vec<(u64, u64)> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| Some((field(l, "len")?, field(l, "at_ms")?)))
        .collect()
}

#[test]
fn cbr_frames_on_the_wire_all_have_one_size_and_keep_flowing_in_silence() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a, "alice");
    init(&b, "bob");
    let ticket = create_room(&a, free_port());
    let silence = tmp.path().join("silence.wav");
    silence_wav(&silence, 4);
    let tone_then_silence = tmp.path().join("tone.wav");
    // Half speech-like tone, half silence, so that a VBR stream would change size.
    {
        let mut w = hound::WavWriter::create(
            &tone_then_silence,
            hound::WavSpec {
                channels: 1,
                sample_rate: 48_000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            },
        )
        .expect("wav");
        for i in 0..48_000 * 4 {
            let t = i as f64 / 48_000.0;
            let v = if i < 48_000 * 2 {
                (8000.0
                    * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                    * (1.0 + (2.0 * std::f64::consts::PI * 3.0 * t).sin())) as i16
            } else {
                0
            };
            w.write_sample(v).expect("sample");
        }
        w.finalize().expect("finalize");
    }
    let spawn = |dir: &Path, input: &Path, listen: bool| {
        let mut c = confab(dir);
        c.args([
            "call",
            &ticket,
            "--cbr",
            "--json",
            "--duration",
            "4",
            "--input",
        ])
        .arg(input)
        .env("RUST_LOG", "info,confab::wire=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if listen {
            c.args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
        }
        c.spawn().expect("spawn")
    };
    let host = spawn(&a, &silence, false);
    let guest = spawn(&b, &tone_then_silence, true);
    // Drain both logs at once: a full pipe would stall the node that is not being read.
    let guest = std::thread::spawn(move || guest.wait_with_output().expect("guest"));
    let host = host.wait_with_output().expect("host");
    let guest = guest.join().expect("guest thread");
    assert!(host.status.success() && guest.status.success());
    let (host_log, guest_log) = (stderr(&host), stderr(&guest));
    if let Ok(d) = std::env::var("CONFAB_TEST_LOGS") {
        let _ = std::fs::write(Path::new(&d).join("cbr-host.log"), &host_log);
        let _ = std::fs::write(Path::new(&d).join("cbr-guest.log"), &guest_log);
    }

    for (what, frames) in [
        (
            "host sent (silence)",
            wire_frames(&host_log, "media frame sent"),
        ),
        (
            "guest received (silence)",
            wire_frames(&guest_log, "media frame received"),
        ),
        (
            "guest sent (tone, then silence)",
            wire_frames(&guest_log, "media frame sent"),
        ),
        (
            "host received (tone, then silence)",
            wire_frames(&host_log, "media frame received"),
        ),
    ] {
        assert!(frames.len() >= 100, "{what}: only {} frames", frames.len());
        let sizes: BTreeSet<u64> = frames.iter().map(|f| f.0).collect();
        assert_eq!(sizes.len(), 1, "{what}: sizes {sizes:?}");
        // 21-byte header + padded plaintext (160) + 16-byte tag.
        assert_eq!(
            sizes.into_iter().next(),
            Some(confab_protocol::wire::MEDIA_HEADER_LEN as u64 + 160 + 16),
            "{what}"
        );
        // A steady 50 frames/s: no gap of silence on the wire.
        let gaps: Vec<u64> = frames
            .windows(2)
            .map(|w| w[1].1.saturating_sub(w[0].1))
            .collect();
        let max_gap = gaps.iter().copied().max().unwrap_or(0);
        let at = gaps.iter().position(|g| *g == max_gap).unwrap_or(0);
        assert!(
            max_gap <= 200,
            "{what}: a {max_gap} ms gap after frame {at} of {}",
            frames.len()
        );
        let span = frames.last().expect("last").1 - frames[0].1;
        let rate = frames.len() as f64 * 1000.0 / span.max(1) as f64;
        assert!((40.0..=60.0).contains(&rate), "{what}: {rate} frames/s");
    }
}
