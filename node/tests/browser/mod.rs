//! Real headless Chromium for the web app's tests, driven over the Chrome DevTools protocol,
//! and `confab app` processes for it to open.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub mod call;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The browser binary: `CONFAB_CHROMIUM`, else Debian's headless shell, else Chromium.
pub fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CONFAB_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/lib/chromium/chromium-headless-shell",
        "/usr/lib/chromium/chromium",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Whether to skip a browser test: no Chromium, and `CONFAB_REQUIRE_BROWSER` unset (set,
/// a missing browser fails the test).
pub fn skip() -> bool {
    if chromium().is_none() {
        assert!(
            std::env::var_os("CONFAB_REQUIRE_BROWSER").is_none(),
            "CONFAB_REQUIRE_BROWSER is set but no Chromium is installed"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium-headless-shell)");
        return true;
    }
    false
}

/// The runtime the browser tests drive their pages from.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A running `confab app` and the address it printed.
pub struct AppProc {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub token: String,
    pub dir: PathBuf,
}

impl AppProc {
    pub fn start(dir: &Path, extra: &[&str]) -> AppProc {
        let mut c = Command::new(env!("CARGO_BIN_EXE_confab"));
        c.arg("--data-dir")
            .arg(dir.join("data"))
            .args(["app", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .env_remove("CONFAB_DATA_DIR")
            .env_remove("CONFAB_PASSPHRASE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("app.log")).expect("log"));
        let mut child = c.spawn().expect("start confab app");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read the app's address");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        let port = url
            .trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let token = url.split("token=").nth(1).expect("token").to_string();
        // Keep reading stdout so the app never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        AppProc {
            child,
            url,
            port,
            token,
            dir: dir.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("app.log")).unwrap_or_default()
    }
}

impl Drop for AppProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request to 127.0.0.1:`port`; returns (status, body).
pub fn http(port: u16, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A headless Chromium with a page open, driven over the DevTools protocol.
pub struct Browser {
    child: Child,
    ws: Socket,
    next_id: u64,
    pub dir: PathBuf,
}

fn devtools_port(child: &mut Child) -> u16 {
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let _ = tx.send(port.parse::<u16>().unwrap_or(0));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the browser's DevTools address")
}

fn page_socket_url(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http(
            port,
            &format!(
                "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            ),
        );
        if let Ok(Value::Array(targets)) = serde_json::from_str::<Value>(&body) {
            if let Some(url) = targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                return url.to_string();
            }
        }
        assert!(Instant::now() < deadline, "no page target in the browser");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Browser {
    /// Starts a browser whose fake microphone plays `mic_wav` (looped) and opens `url`.
    pub async fn open(dir: &Path, url: &str, mic_wav: &Path) -> Browser {
        Self::open_with(dir, url, mic_wav, &[]).await
    }

    /// Like [`Browser::open`], with more command-line flags (a fake camera file, say).
    pub async fn open_with(dir: &Path, url: &str, mic_wav: &Path, extra: &[String]) -> Browser {
        let bin = chromium().expect("chromium");
        std::fs::create_dir_all(dir).expect("dir");
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--no-first-run",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--window-size=1280,800",
            ])
            .arg(format!(
                "--use-file-for-fake-audio-capture={}",
                mic_wav.display()
            ))
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let port = devtools_port(&mut child);
        let (ws, _) = tokio_tungstenite::connect_async(page_socket_url(port))
            .await
            .expect("DevTools socket");
        Browser {
            child,
            ws,
            next_id: 0,
            dir: dir.to_path_buf(),
        }
    }

    /// Calls a DevTools method and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::Text(msg.into())).await.expect("send");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("DevTools answer in time")
                .expect("DevTools socket open")
                .expect("DevTools message");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page error in {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page; panics with `what` after `timeout`.
    pub async fn wait_for(&mut self, expr: &str, timeout: Duration, what: &str) -> Duration {
        let start = Instant::now();
        loop {
            if self.eval(expr).await == Value::Bool(true) {
                return start.elapsed();
            }
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&mut self, id: &str) {
        self.eval(&format!("document.getElementById({id:?}).click(), true"))
            .await;
    }

    pub async fn set_value(&mut self, id: &str, value: &str) {
        let v = serde_json::to_string(value).expect("json");
        self.eval(&format!(
            "document.getElementById({id:?}).value = {v}, true"
        ))
        .await;
    }

    pub async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = r["data"].as_str().expect("png data");
        let bytes = data_encoding::BASE64
            .decode(data.as_bytes())
            .expect("base64");
        std::fs::write(path, bytes).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SIGTERM ends the browser's own children too; SIGKILL only if it will not go.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------- the app's page flows ----------

pub fn visible(id: &str) -> String {
    format!("!document.getElementById({id:?}).hidden")
}

/// First run in the page: creates the account `name`; returns its peer id.
pub async fn create_account(b: &mut Browser, name: &str) -> String {
    let t = Duration::from_secs(20);
    b.wait_for(&visible("screen-first-run"), t, "the first-run screen")
        .await;
    b.set_value("first-name", name).await;
    b.click("first-create").await;
    b.wait_for(&visible("screen-home"), t, "the home screen")
        .await;
    b.eval("ui.server.account.peer_id")
        .await
        .as_str()
        .expect("peer id")
        .to_string()
}

/// From the home screen through the pre-join screen (voice processing off, so signals can
/// be compared) into the call; `ticket` None starts the room just created.
pub async fn enter_call(b: &mut Browser, ticket: Option<&str>) {
    let t = Duration::from_secs(20);
    match ticket {
        Some(ticket) => {
            b.set_value("join-ticket", &format!("Join my call: {ticket}"))
                .await;
            b.click("join-go").await;
        }
        None => b.click("home-start").await,
    }
    b.wait_for("!!(ui.engine && ui.engine.source)", t, "the microphone")
        .await;
    b.eval(
        "for (const id of ['opt-echo', 'opt-noise', 'opt-gain']) { \
           const e = document.getElementById(id); e.checked = false; } \
         document.getElementById('opt-gain').dispatchEvent(new Event('change')); true",
    )
    .await;
    b.wait_for(
        "ui.engine.stream.getAudioTracks()[0].getSettings().echoCancellation === false",
        t,
        "the microphone without echo cancellation",
    )
    .await;
    b.click("prejoin-join").await;
    b.wait_for(
        "!!(ui.call && ui.call.status === 'in call')",
        Duration::from_secs(30),
        "being in the call",
    )
    .await;
}

/// What page `b` played from `peer`: the first sample's wall time and the samples.
pub async fn played(b: &mut Browser, peer: &str) -> (f64, Vec<i16>) {
    let (marks, pcm) = diag_pcm(b, &format!("confabDiag.playedPcm({peer:?})")).await;
    (marks.first().map_or(0.0, |m| m.1), pcm)
}

/// PCM a page recorded for tests (`expr` gives `{marks, pcm_b64}`): the wall time of the
/// first sample of each part (`(sample index, ms)`), and the samples.
pub async fn diag_pcm(b: &mut Browser, expr: &str) -> (Vec<(usize, f64)>, Vec<i16>) {
    let v = b.eval(expr).await;
    let marks = v["marks"]
        .as_array()
        .expect("marks")
        .iter()
        .map(|m| {
            (
                m[0].as_u64().unwrap_or(0) as usize,
                m[1].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let bytes = data_encoding::BASE64
        .decode(v["pcm_b64"].as_str().expect("pcm").as_bytes())
        .expect("base64");
    let pcm = bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    (marks, pcm)
}

/// On the home screen: creates a room and returns its ticket.
pub async fn create_room(b: &mut Browser) -> String {
    b.click("home-create").await;
    b.wait_for(
        "!!document.getElementById('home-invite').dataset.ticket",
        Duration::from_secs(10),
        "a ticket",
    )
    .await;
    let ticket = b
        .eval("document.getElementById('home-invite').dataset.ticket")
        .await;
    ticket.as_str().expect("ticket").to_string()
}
