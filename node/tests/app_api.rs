//! The local API of `confab app` against bad and hostile input: requests without the token,
//! with a wrong `Host` or a foreign `Origin`, malformed and oversized WebSocket messages.
//! Each is refused with a clear status and logged; the node and its call carry on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::time::Duration;

use browser::{http, AppProc};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn get(app: &AppProc, path: &str, headers: &str) -> (u16, String) {
    http(
        app.port,
        &format!("GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"),
    )
}

fn host(app: &AppProc) -> String {
    format!("Host: 127.0.0.1:{}\r\n", app.port)
}

fn origin(app: &AppProc) -> String {
    format!("Origin: http://127.0.0.1:{}\r\n", app.port)
}

/// The headers the page's own requests carry: this app's Host and Origin, the token cookie.
fn page_headers(app: &AppProc) -> String {
    format!(
        "{}{}Cookie: confab-{}={}\r\n",
        host(app),
        origin(app),
        app.port,
        app.token
    )
}

fn post(app: &AppProc, path: &str, headers: &str, body: &Value) -> (u16, String) {
    let body = body.to_string();
    http(
        app.port,
        &format!(
            "POST {path} HTTP/1.1\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn requests_without_the_token_or_from_elsewhere_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = AppProc::start(dir.path(), &[]);
    let tok = format!("?token={}", app.token);
    let h = host(&app);
    assert_eq!(get(&app, "/", &h).0, 401, "no token");
    assert_eq!(get(&app, "/?token=wrong", &h).0, 401, "wrong token");
    assert_eq!(get(&app, "/api/state", &h).0, 401, "API without token");
    let (status, page) = get(&app, &format!("/{tok}"), &h);
    assert_eq!(status, 200);
    assert!(page.contains("confab"));
    let cookie = format!("Cookie: confab-{}={}\r\n", app.port, app.token);
    assert_eq!(
        get(&app, "/api/state", &format!("{h}{cookie}")).0,
        200,
        "the cookie"
    );
    // DNS rebinding: the right token under a foreign name.
    let evil = format!("Host: evil.example:{}\r\n", app.port);
    assert_eq!(get(&app, &format!("/api/state{tok}"), &evil).0, 403);
    // Cross-site: a foreign Origin, and a state-changing request without one.
    let body = json!({"name": "Mallory"});
    let foreign = "Origin: http://evil.example\r\n";
    assert_eq!(
        post(
            &app,
            &format!("/api/account{tok}"),
            &format!("{h}{foreign}"),
            &body
        )
        .0,
        403
    );
    assert_eq!(post(&app, &format!("/api/account{tok}"), &h, &body).0, 403);
    let (_, state) = get(&app, &format!("/api/state{tok}"), &h);
    assert!(
        state.contains("\"account\":null"),
        "no account was made: {state}"
    );
    // Too large a body.
    let big = json!({"name": "x".repeat(100_000)});
    let (status, _) = post(
        &app,
        &format!("/api/account{tok}"),
        &format!("{h}{}", origin(&app)),
        &big,
    );
    assert_eq!(status, 413);
    let log = app.log();
    assert!(log.contains("refused a request to the local API"), "{log}");
    assert!(log.contains("missing or wrong token"), "{log}");
}

async fn socket(
    app: &AppProc,
    token: &str,
    origin: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let mut req = format!("ws://127.0.0.1:{}/ws?token={token}", app.port)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("origin", origin.parse().expect("origin"));
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text message of type `kind`.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("message");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["type"] == kind {
                return v;
            }
        }
    }
}

/// Joins the room `room` (an answer of `/api/rooms`) over `ws` and waits until in the call.
async fn join(ws: &mut Ws, room: &Value) {
    let msg = json!({"type": "join", "ticket": room["ticket"]}).to_string();
    ws.send(Message::Text(msg.into())).await.expect("join");
    loop {
        let v = next_of(ws, "call").await;
        if v["call"]["status"] == "in call" {
            return;
        }
    }
}

#[test]
fn hostile_websocket_messages_leave_the_node_and_its_call_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    common::init(&dir.path().join("data"), "Ann");
    let app = AppProc::start(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let good = format!("http://127.0.0.1:{}", app.port);
        let Err(err) = socket(&app, "wrong", &good).await else {
            panic!("a socket without the token was accepted")
        };
        assert!(err.contains("401"), "{err}");
        let Err(err) = socket(&app, &app.token, "http://evil.example").await else {
            panic!("a socket from a foreign origin was accepted")
        };
        assert!(err.contains("403"), "{err}");

        // A call runs: the room is ours, so it starts at once.
        let mut ctl = socket(&app, &app.token, &good).await.expect("socket");
        next_of(&mut ctl, "state").await;
        let h = page_headers(&app);
        let (status, room) = post(&app, "/api/rooms", &h, &json!({}));
        assert_eq!(status, 200, "{room}");
        let room: Value = serde_json::from_str(&room).expect("room");
        join(&mut ctl, &room).await;

        // Hostile messages on another socket.
        let mut bad = socket(&app, &app.token, &good).await.expect("socket");
        next_of(&mut bad, "state").await;
        for junk in [
            "{",
            "{\"type\":\"format_disk\"}",
            "[1,2,3]",
            "{\"type\":\"mute\",\"on\":\"yes\"}",
        ] {
            bad.send(Message::Text(junk.into())).await.expect("send");
            let e = next_of(&mut bad, "error").await;
            assert!(
                e["message"].as_str().unwrap_or("").contains("malformed"),
                "{e}"
            );
        }
        bad.send(Message::Binary(vec![9u8; 40].into()))
            .await
            .expect("send");
        let e = next_of(&mut bad, "error").await;
        assert!(e["message"].as_str().unwrap_or("").contains("kind"), "{e}");
        bad.send(Message::Text("{\"type\":\"state\"}".into()))
            .await
            .expect("send");
        next_of(&mut bad, "state").await;
        // Too large: the socket is closed with "message too big".
        let _ = bad.send(Message::Binary(vec![1u8; 200_000].into())).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match bad.next().await {
                    None | Some(Err(_)) => return None,
                    Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .expect("closed in time");
        assert_eq!(closed, Some(1009), "closed with \"message too big\"");

        // The call and the node carry on.
        ctl.send(Message::Text("{\"type\":\"state\"}".into()))
            .await
            .expect("send");
        let s = next_of(&mut ctl, "state").await;
        assert_eq!(s["call"]["status"], "in call", "{s}");
        let (status, _) = get(&app, "/api/state", &h);
        assert_eq!(status, 200);
        // Nothing that reaches the page can read the identity key.
        let (_, export) = get(&app, "/api/account/export", &h);
        let export: Value = serde_json::from_str(&export).expect("export");
        assert!(export["secret_key"].is_null(), "{export}");
        assert!(!s.to_string().contains("secret_key"));
    });
    let log = app.log();
    assert!(
        log.contains("refused a malformed command from the page"),
        "{log}"
    );
}

#[test]
fn the_account_is_deleted_only_when_confirmed_and_never_during_a_call() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = AppProc::start(dir.path(), &[]);
    let h = page_headers(&app);
    // First run, from the API the page uses.
    let (status, body) = post(&app, "/api/account", &h, &json!({"name": "Ann"}));
    assert_eq!(status, 200, "{body}");
    let (_, state) = get(&app, "/api/state", &h);
    let state: Value = serde_json::from_str(&state).expect("state");
    assert_eq!(state["account"]["name"], "Ann");
    let data = dir.path().join("data");
    assert!(data.join("db").exists());
    // Not without the word.
    let (status, body) = post(&app, "/api/account/delete", &h, &json!({"confirm": "yes"}));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("type the word delete"), "{body}");
    // Not during a call.
    let (_, room) = post(&app, "/api/rooms", &h, &json!({}));
    let room: Value = serde_json::from_str(&room).expect("room");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let good = format!("http://127.0.0.1:{}", app.port);
        let mut ws = socket(&app, &app.token, &good).await.expect("socket");
        next_of(&mut ws, "state").await;
        join(&mut ws, &room).await;
        let (status, body) = post(
            &app,
            "/api/account/delete",
            &h,
            &json!({"confirm": "delete"}),
        );
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("leave the call"), "{body}");
        ws.send(Message::Text("{\"type\":\"leave\"}".into()))
            .await
            .expect("leave");
        next_of(&mut ws, "ended").await;
    });
    let (status, body) = post(
        &app,
        "/api/account/delete",
        &h,
        &json!({"confirm": "delete"}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(!data.join("db").exists(), "the store is gone");
    let (_, state) = get(&app, "/api/state", &h);
    assert!(
        state.contains("\"account\":null"),
        "back to the first run: {state}"
    );
}
