//! Local data against other local users and a hostile data directory (`docs/privacy.md`,
//! "Local data"): the store's modes, the ticket kept off the command line, passphrase and
//! seal-record checks, and the live recording notice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `confab …` run under `umask 000`, so only confab's own modes protect what it creates.
fn confab_umask_000(dir: &Path) -> Command {
    let inner = confab(dir);
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_remove("CONFAB_DATA_DIR")
        .env_remove("CONFAB_PASSPHRASE")
        .env_remove("CONFAB_NEW_PASSPHRASE")
        .stdin(Stdio::null());
    c
}

/// Every path under `dir` (itself included) with its mode bits.
fn modes(dir: &Path) -> Vec<(PathBuf, bool, u32)> {
    fn walk(p: &Path, out: &mut Vec<(PathBuf, bool, u32)>) {
        let m = std::fs::symlink_metadata(p).expect("stat");
        out.push((p.to_path_buf(), m.is_dir(), m.permissions().mode() & 0o7777));
        if m.is_dir() {
            for e in std::fs::read_dir(p).expect("list").flatten() {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

fn assert_private(dir: &Path) {
    let all = modes(dir);
    assert!(all.len() > 3, "the store has files: {all:?}");
    for (p, is_dir, mode) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}: {all:?}", p.display());
    }
}

#[test]
fn the_data_directory_is_0700_and_every_store_file_0600_whatever_the_umask() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = tmp.path().join("nested/a");
    let mut c = confab_umask_000(&a);
    c.args(["init", "--name", "ada"]);
    run_ok(c);
    assert_private(&a);
    // Opens without a call also keep it so (and the clean-close mark is private too).
    let mut c = confab_umask_000(&a);
    c.args(["room", "create", "--json"]);
    run_ok(c);
    let mut c = confab_umask_000(&a);
    c.arg("whoami");
    run_ok(c);
    assert_private(&a);
    // Loosened modes (a copy, a restore from a backup) are fixed on the next open.
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (p, is_dir, _) in modes(&a.join("db")) {
        let loose = if is_dir { 0o777 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(loose)).expect("chmod");
    }
    let mut c = confab_umask_000(&a);
    c.arg("whoami");
    run_ok(c);
    assert_private(&a);
    // A sealed store, and one resealed (a fresh database swapped in), likewise.
    let b = tmp.path().join("b");
    let mut c = confab_umask_000(&b);
    c.args(["init", "--passphrase"])
        .env("CONFAB_PASSPHRASE", "correct horse");
    run_ok(c);
    assert_private(&b);
    let mut c = confab_umask_000(&b);
    c.args(["account", "passphrase"])
        .env("CONFAB_PASSPHRASE", "correct horse")
        .env("CONFAB_NEW_PASSPHRASE", "battery staple");
    run_ok(c);
    assert_private(&b);
}

#[test]
fn an_empty_passphrase_is_refused_wherever_one_is_set() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = tmp.path().join("a");
    for empty in ["", "  "] {
        let mut c = confab(&a);
        c.args(["init", "--passphrase"])
            .env("CONFAB_PASSPHRASE", empty);
        let out = c.output().expect("run");
        assert_eq!(out.status.code(), Some(2), "init {empty:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase is empty"));
        assert!(!a.join("db").exists(), "a refused init leaves no store");
    }
    init(&a, "ada");
    let mut c = confab(&a);
    c.args(["account", "passphrase"])
        .env("CONFAB_NEW_PASSPHRASE", "");
    let out = c.output().expect("run");
    assert_eq!(out.status.code(), Some(2), "account passphrase");
    let mut c = confab(&a);
    c.args(["settings", "show", "--json"]);
    let v: Value = serde_json::from_str(&run_ok(c)).expect("json");
    assert_eq!(v["sealed"], false, "still unsealed");

    let mut c = confab(&a);
    c.args(["account", "export", "--include-secret-key"]);
    let doc = run_ok(c);
    let file = tmp.path().join("export.json");
    std::fs::write(&file, doc).expect("write");
    let b = tmp.path().join("b");
    let mut c = confab(&b);
    c.args(["account", "import", "--passphrase"])
        .arg(&file)
        .env("CONFAB_NEW_PASSPHRASE", "");
    let out = c.output().expect("run");
    assert_eq!(out.status.code(), Some(2), "import --passphrase");
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase is empty"));
    assert!(!b.join("db").exists(), "nothing was imported");
}

#[test]
fn a_hostile_seal_record_is_refused_at_once_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let good = tmp.path().join("good");
    let mut c = confab(&good);
    c.args(["init", "--passphrase", "--name", "ada"])
        .env("CONFAB_PASSPHRASE", "correct horse");
    run_ok(c);
    let hostile: [(&str, Value); 4] = [
        ("m_kib", Value::from(u32::MAX)),
        ("m_kib", Value::from(4u32 * 1024 * 1024)),
        ("t", Value::from(u32::MAX)),
        ("p", Value::from(u32::MAX)),
    ];
    for (i, (field, value)) in hostile.into_iter().enumerate() {
        let dir = tmp.path().join(format!("hostile{i}"));
        copy_dir(&good, &dir);
        {
            let db = sled::open(dir.join("db")).expect("raw open");
            let meta = db.open_tree("meta").expect("meta");
            let mut record: Value =
                serde_json::from_slice(&meta.get("seal").expect("get").expect("sealed"))
                    .expect("record");
            record[field] = value.clone();
            meta.insert("seal", serde_json::to_vec(&record).expect("json"))
                .expect("insert");
            db.flush().expect("flush");
        }
        let started = Instant::now();
        let mut c = confab(&dir);
        c.arg("whoami").env("CONFAB_PASSPHRASE", "correct horse");
        let out = c.output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{field}={value}: {err}");
        assert!(
            err.contains("invalid key derivation parameters") && err.contains("left untouched"),
            "{field}={value}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{field}={value} took {:?}",
            started.elapsed()
        );
    }
}

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

fn create_room(dir: &Path, port: u16) -> String {
    let mut c = confab(dir);
    c.args(["room", "create", "--json", "--listen"])
        .arg(format!("/ip4/127.0.0.1/tcp/{port}"));
    let v: Value = serde_json::from_str(&run_ok(c)).expect("room json");
    v["ticket"].as_str().expect("ticket").to_string()
}

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// Starts a call that reads its ticket from stdin (`confab call -`).
fn spawn_with_ticket_on_stdin(mut c: Command, ticket: &str) -> Child {
    c.stdin(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{ticket}").expect("write the ticket");
    drop(stdin);
    child
}

/// Forwards the child's stderr lines to a channel (and drains it, so the child never blocks).
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns every line seen up to it.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {within:?}: {seen:#?}");
}

#[test]
fn a_ticket_from_a_file_or_stdin_never_appears_on_the_command_line() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let pid_a = init(&a, "alice");
    init(&b, "bob");
    let ticket = create_room(&a, free_port());
    let ticket_file = tmp.path().join("ticket");
    std::fs::write(&ticket_file, format!("{ticket}\n")).expect("ticket file");

    let mut host = confab(&a);
    host.args(["call", "--duration", "4", "--tone", "440", "--ticket-file"])
        .arg(&ticket_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut host = host.spawn().expect("host");
    let host_err = stderr_lines(&mut host);
    wait_for(&host_err, "listening", Duration::from_secs(20));

    let mut guest = confab(&b);
    guest
        .args(["call", "-", "--json", "--duration", "2", "--tone", "660"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guest = spawn_with_ticket_on_stdin(guest, &ticket);
    let guest_err = stderr_lines(&mut guest);
    wait_for(&guest_err, "member admitted", Duration::from_secs(20));
    // While both run: neither command line holds the ticket (nor its secret part).
    let secret_part = &ticket[ticket.len() - 16..];
    for (who, pid) in [("host", host.id()), ("guest", guest.id())] {
        let line = cmdline(pid);
        assert!(line.contains(" call "), "{who}: {line}");
        assert!(
            !line.contains(&ticket) && !line.contains(secret_part),
            "{who}'s command line shows the ticket: {line}"
        );
    }

    let guest = guest.wait_with_output().expect("guest");
    assert!(guest.status.success(), "the guest exits cleanly");
    let report: Value = serde_json::from_slice(&guest.stdout).expect("guest report");
    let heard = report["received"]
        .as_array()
        .expect("received")
        .iter()
        .find(|r| r["from"] == pid_a.as_str())
        .expect("the guest heard the host");
    assert!(heard["frames_received"].as_u64().expect("frames") > 20);
    assert!(
        host.wait().expect("host").success(),
        "the host exits cleanly"
    );

    // `--ticket-file -` reads stdin too; a bad ticket there is bad input (exit code 2).
    let mut c = confab(&b);
    c.args(["call", "--ticket-file", "-", "--duration", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = spawn_with_ticket_on_stdin(c, "confab1nonsense")
        .wait_with_output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    // Neither a ticket nor a ticket file: a usage error.
    let mut c = confab(&b);
    c.arg("call");
    assert_eq!(c.output().expect("run").status.code(), Some(2));
}

#[test]
fn a_member_that_records_is_announced_on_stderr_while_the_call_runs() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a, "alice");
    let pid_b = init(&b, "bob");
    let ticket = create_room(&a, free_port());
    let ticket_file = tmp.path().join("ticket");
    std::fs::write(&ticket_file, &ticket).expect("ticket file");

    let mut host = confab(&a);
    host.args(["call", "--duration", "6", "--tone", "440", "--ticket-file"])
        .arg(&ticket_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut host = host.spawn().expect("host");
    let host_err = stderr_lines(&mut host);
    wait_for(&host_err, "listening", Duration::from_secs(20));

    let mut guest = confab(&b);
    guest
        .args(["call", "--duration", "2", "--tone", "660", "--ticket-file"])
        .arg(&ticket_file)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--output-dir"])
        .arg(tmp.path().join("bob-recordings"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let guest = guest.spawn().expect("guest");
    let notice = format!("⚠ bob ({pid_b}) is recording this call");
    let seen = wait_for(&host_err, &notice, Duration::from_secs(20));
    assert!(
        host.try_wait().expect("host").is_none(),
        "the notice came while the call runs, not with the report"
    );
    assert_eq!(
        seen.iter().filter(|l| l.contains(&notice)).count(),
        1,
        "one line: {seen:#?}"
    );
    let guest = guest.wait_with_output().expect("guest");
    assert!(guest.status.success());
    let host = host.wait_with_output().expect("host");
    assert!(host.status.success());
    // The report still says it too.
    assert!(String::from_utf8_lossy(&host.stdout).contains(&notice));
}
