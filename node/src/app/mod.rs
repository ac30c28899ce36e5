//! `confab app`: the node with a local web app.
//!
//! The node ([`state::App`]) runs for as long as the app does, with one call at a time on
//! it. The page is served from assets compiled into the binary, on 127.0.0.1 unless the user
//! asks otherwise, behind the checks of [`guard`]. The page captures the microphone and
//! plays what the call plays; the node does Opus, the end-to-end encryption, the mesh and
//! the jitter buffer exactly as for `confab call` ([`bridge`]).
//!
//! * [`guard`] — token, `Host` and `Origin` checks.
//! * [`api`] — the JSON API of the home screen.
//! * [`ws`] — the page's WebSocket: commands, state, microphone and played audio.
//! * [`bridge`] — the browser as the call's source and sink.
//! * [`view`] — the call as the page shows it.
//! * [`state`] — the store, the node and the running call.

pub mod api;
pub mod bridge;
pub mod guard;
pub mod state;
pub mod video;
pub mod view;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use tracing::warn;

use guard::Guard;
use state::App;

/// Largest request body the API takes.
const MAX_BODY: usize = 16 * 1024;

/// The page's files, compiled in.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("web/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("web/style.css"),
    ),
    (
        "/video.js",
        "text/javascript; charset=utf-8",
        include_str!("web/video.js"),
    ),
    (
        "/video-worker.js",
        "text/javascript; charset=utf-8",
        include_str!("web/video-worker.js"),
    ),
    (
        "/capture-worklet.js",
        "text/javascript; charset=utf-8",
        include_str!("web/capture-worklet.js"),
    ),
    (
        "/player-worklet.js",
        "text/javascript; charset=utf-8",
        include_str!("web/player-worklet.js"),
    ),
];

/// Headers every answer carries: nothing is cached, framed, sniffed or sent elsewhere.
fn harden(resp: &mut Response) {
    let h = resp.headers_mut();
    let csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
               connect-src 'self'; media-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; \
               form-action 'none'";
    for (k, v) in [
        (header::CONTENT_SECURITY_POLICY, csp),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
}

fn query_token(req: &Request) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_owned())
    })
}

async fn guard_layer(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let token = query_token(&req);
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let path = req.uri().path().to_owned();
    if let Err(refused) = g.check(req.method(), req.headers(), token.as_deref(), websocket) {
        warn!(%path, reason = %refused, "refused a request to the local API");
        let mut resp = (refused.status(), format!("{refused}\n")).into_response();
        harden(&mut resp);
        return resp;
    }
    let mut resp = next.run(req).await;
    if token.is_some() {
        if let Ok(v) = HeaderValue::from_str(&g.set_cookie()) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    harden(&mut resp);
    resp
}

async fn ws_upgrade(State(app): State<Arc<App>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(ws::MAX_MESSAGE)
        .max_frame_size(ws::MAX_MESSAGE)
        .on_upgrade(move |socket| ws::session(app, socket))
}

fn asset(path: &'static str, kind: &'static str, body: &'static str) -> Router<Arc<App>> {
    Router::new().route(
        path,
        get(move || async move { ([(header::CONTENT_TYPE, kind)], body).into_response() }),
    )
}

/// The app's routes, behind the guard.
pub fn router(app: Arc<App>, guard: Arc<Guard>) -> Router {
    let mut r = Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/api/state", get(api::state))
        .route("/api/account", post(api::create_account))
        .route("/api/account/name", put(api::set_name))
        .route("/api/account/export", get(api::export))
        .route("/api/account/delete", post(api::delete_account))
        .route("/api/rooms", post(api::create_room))
        .route(
            "/api/relays",
            post(api::add_relay).delete(api::remove_relay),
        )
        .route("/api/settings/retention", put(api::set_retention))
        .route("/api/history", delete(api::clear_history));
    for (path, kind, body) in ASSETS {
        r = r.merge(asset(path, kind, body));
    }
    r.fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(guard, guard_layer))
        .with_state(app)
}

/// Where the app is served.
#[derive(Debug, Clone)]
pub struct Served {
    pub addr: SocketAddr,
    /// The address to open, with this launch's token.
    pub url: String,
}

/// Binds `bind` (port 0: any free port) and returns the server to run and where it is.
/// `extra_host` names a non-loopback address the user explicitly bound to.
pub async fn bind(
    app: Arc<App>,
    bind: SocketAddr,
) -> std::io::Result<(
    Served,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let extra = (!addr.ip().is_loopback()).then(|| match addr.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    });
    let guard = Arc::new(Guard::new(guard::new_token(), addr.port(), extra));
    let host = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let url = format!("http://{host}/?token={}", guard.token());
    let router = router(app, guard);
    let server = async move { axum::serve(listener, router).await };
    Ok((Served { addr, url }, server))
}
