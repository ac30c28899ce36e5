//! Who may talk to the local API: the page this launch printed the address of, and nobody
//! else.
//!
//! Three checks, on every request and WebSocket (the same ones Jupyter and Syncthing make):
//! - a random per-launch **token**, given in the printed URL (`?token=`), then kept by the
//!   browser in an `HttpOnly`, `SameSite=Strict` cookie named after the port (or sent in the
//!   `X-Confab-Token` header by other clients); compared in constant time;
//! - the **`Host`** header must name the address the app serves on (`127.0.0.1:PORT`,
//!   `localhost:PORT`, `[::1]:PORT`), which defeats DNS rebinding;
//! - an **`Origin`**, when the browser sends one (always on WebSockets and on requests that
//!   change something), must be that same origin, which defeats cross-site requests.

use axum::http::{header, HeaderMap, Method};
use rand::RngCore;

/// Header other clients may carry the token in.
pub const TOKEN_HEADER: &str = "x-confab-token";

/// Why a request was refused, with the HTTP status it gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("missing or wrong token: open the address `confab app` printed")]
    Token,
    #[error("Host {0:?} is not this app's address")]
    Host(String),
    #[error("Origin {0:?} is not this app's origin")]
    Origin(String),
    #[error("this request needs an Origin header")]
    NoOrigin,
}

impl Refused {
    pub fn status(&self) -> axum::http::StatusCode {
        match self {
            Refused::Token => axum::http::StatusCode::UNAUTHORIZED,
            _ => axum::http::StatusCode::FORBIDDEN,
        }
    }
}

/// The checks of one launch.
#[derive(Debug, Clone)]
pub struct Guard {
    token: String,
    port: u16,
    /// Host names (without port) the app answers to.
    hosts: Vec<String>,
}

/// A fresh random token: 32 bytes, base32.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    data_encoding::BASE32_NOPAD.encode(&b).to_lowercase()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Guard {
    /// `extra_host`: the address the app was explicitly bound to beyond loopback, if any.
    pub fn new(token: String, port: u16, extra_host: Option<String>) -> Self {
        let mut hosts = vec!["127.0.0.1".into(), "localhost".into(), "[::1]".into()];
        hosts.extend(extra_host);
        Self { token, port, hosts }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The cookie the token lives in; named after the port, since cookies do not tell ports
    /// apart and two apps may run on one machine.
    pub fn cookie_name(&self) -> String {
        format!("confab-{}", self.port)
    }

    /// The `Set-Cookie` value that keeps the token for this page.
    pub fn set_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie_name(),
            self.token
        )
    }

    fn origin_ok(&self, origin: &str) -> bool {
        let Some(rest) = origin.strip_prefix("http://") else {
            return false;
        };
        self.host_ok(rest)
    }

    fn host_ok(&self, host: &str) -> bool {
        let port = format!(":{}", self.port);
        match host.strip_suffix(&port) {
            Some(name) => self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name)),
            None => false,
        }
    }

    fn token_from(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        let given = |t: &str| constant_time_eq(t.as_bytes(), self.token.as_bytes());
        if query.is_some_and(given) {
            return true;
        }
        if headers
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(given)
        {
            return true;
        }
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .any(|(k, v)| k == name && given(v))
    }

    /// Checks one request: `query_token` is the `token` query parameter, if any; a
    /// `websocket` upgrade and every method but GET and HEAD need an Origin.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query_token: Option<&str>,
        websocket: bool,
    ) -> Result<(), Refused> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self.host_ok(host) {
            return Err(Refused::Host(host.chars().take(100).collect()));
        }
        match headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("?"))
        {
            Some(o) if !self.origin_ok(o) => {
                return Err(Refused::Origin(o.chars().take(100).collect()));
            }
            None if websocket || !(method == Method::GET || method == Method::HEAD) => {
                return Err(Refused::NoOrigin);
            }
            _ => {}
        }
        if !self.token_from(headers, query_token) {
            return Err(Refused::Token);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn guard() -> Guard {
        Guard::new("secret".into(), 8080, None)
    }

    #[test]
    fn the_token_is_needed_by_query_header_or_cookie() {
        let g = guard();
        let host = ("host", "127.0.0.1:8080");
        let get = Method::GET;
        assert_eq!(
            g.check(&get, &headers(&[host]), None, false),
            Err(Refused::Token)
        );
        assert_eq!(
            g.check(&get, &headers(&[host]), Some("secreT"), false),
            Err(Refused::Token)
        );
        assert!(g
            .check(&get, &headers(&[host]), Some("secret"), false)
            .is_ok());
        let h = headers(&[host, (TOKEN_HEADER, "secret")]);
        assert!(g.check(&get, &h, None, false).is_ok());
        let h = headers(&[host, ("cookie", "a=b; confab-8080=secret")]);
        assert!(g.check(&get, &h, None, false).is_ok());
        let h = headers(&[host, ("cookie", "confab-9090=secret")]);
        assert_eq!(
            g.check(&get, &h, None, false),
            Err(Refused::Token),
            "another port's cookie"
        );
    }

    #[test]
    fn host_and_origin_must_be_this_app() {
        let g = guard();
        let ok = Some("secret");
        let get = Method::GET;
        for bad in ["evil.example:8080", "127.0.0.1:9999", "127.0.0.1", ""] {
            let h = headers(&[("host", bad)]);
            assert!(
                matches!(g.check(&get, &h, ok, false), Err(Refused::Host(_))),
                "{bad}"
            );
        }
        for good in ["localhost:8080", "[::1]:8080", "LOCALHOST:8080"] {
            assert!(
                g.check(&get, &headers(&[("host", good)]), ok, false)
                    .is_ok(),
                "{good}"
            );
        }
        let host = ("host", "127.0.0.1:8080");
        for bad in [
            "http://evil.example",
            "https://127.0.0.1:8080",
            "null",
            "http://127.0.0.1:1",
        ] {
            let h = headers(&[host, ("origin", bad)]);
            assert!(
                matches!(g.check(&get, &h, ok, false), Err(Refused::Origin(_))),
                "{bad}"
            );
        }
        let same = headers(&[host, ("origin", "http://127.0.0.1:8080")]);
        assert!(g.check(&Method::POST, &same, ok, true).is_ok());
        assert_eq!(
            g.check(&Method::POST, &headers(&[host]), ok, false),
            Err(Refused::NoOrigin)
        );
        assert_eq!(
            g.check(&get, &headers(&[host]), ok, true),
            Err(Refused::NoOrigin)
        );
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.len() >= 50);
    }
}
