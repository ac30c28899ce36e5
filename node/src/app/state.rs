//! The app's state: the account store, the node (once an account exists) and the call that
//! runs on it, with every change told to the pages.

use std::path::PathBuf;
use std::sync::Arc;

use confab_protocol::ticket::Ticket;
use libp2p::Multiaddr;
use serde_json::{json, Value};
use tokio::sync::{broadcast, Mutex};
use tracing::{info, warn};

use super::bridge::{BrowserSink, BrowserSource, MediaLink};
use super::view::{CallView, ChatLine};
use crate::account::{Store, StoredRoom};
use crate::call::{CallConfig, CallEvent, CallEvents, CallHandle, ReportBuilder};
use crate::node::{Node, NodeConfig};

/// Events queued toward each page; a page that falls behind gets the whole state again.
const PAGE_EVENTS: usize = 256;

/// How the app's node is set up.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub data_dir: PathBuf,
    /// Listen addresses of the node (empty: the account's settings, else all interfaces on
    /// a port kept in the settings).
    pub listen: Vec<Multiaddr>,
    /// Relays to use instead of the account's.
    pub relays: Vec<Multiaddr>,
    pub hole_punch: bool,
}

/// The running call.
struct LiveCall {
    handle: CallHandle,
    view: CallView,
}

struct Inner {
    store: Option<Arc<Store>>,
    node: Option<Node>,
    call: Option<LiveCall>,
    /// Counts calls, so that a finished call's events never touch the next one.
    call_no: u64,
}

/// The app: shared by every request and WebSocket.
pub struct App {
    pub opts: AppOptions,
    inner: Mutex<Inner>,
    events: broadcast::Sender<String>,
    pub media: Arc<MediaLink>,
    pub video: Arc<super::video::VideoLink>,
}

/// An error for the page, in words.
pub type AppResult<T> = Result<T, String>;

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl App {
    pub fn new(opts: AppOptions, store: Store) -> Arc<Self> {
        let (events, _) = broadcast::channel(PAGE_EVENTS);
        Arc::new(Self {
            opts,
            inner: Mutex::new(Inner {
                store: Some(Arc::new(store)),
                node: None,
                call: None,
                call_no: 0,
            }),
            events,
            media: MediaLink::new(),
            video: super::video::VideoLink::new(),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.events.subscribe()
    }

    fn tell(&self, msg: Value) {
        let _ = self.events.send(msg.to_string());
    }

    /// Starts the node if the account exists and the node does not run.
    pub async fn ensure_node(&self) -> AppResult<()> {
        let mut inner = self.inner.lock().await;
        self.ensure_node_locked(&mut inner)
    }

    fn ensure_node_locked(&self, inner: &mut Inner) -> AppResult<()> {
        if inner.node.is_some() {
            return Ok(());
        }
        let Some(store) = inner.store.clone() else {
            return Ok(());
        };
        let Some(identity) = store.identity_secret().map_err(text)? else {
            return Ok(());
        };
        let config = NodeConfig {
            identity,
            listen: self.listen_addrs(&store)?,
            relays: self.relays(&store)?,
            hole_punch: self.opts.hole_punch,
            relay_only: false,
        };
        let node = Node::start(config).map_err(text)?;
        info!(peer = %node.peer_id(), "node started");
        inner.node = Some(node);
        Ok(())
    }

    fn listen_addrs(&self, store: &Store) -> AppResult<Vec<Multiaddr>> {
        if !self.opts.listen.is_empty() {
            return Ok(self.opts.listen.clone());
        }
        let mut settings = store.settings().map_err(text)?;
        if settings.listen.is_empty() {
            // A port of its own, kept, so that the tickets of rooms made here stay valid.
            let port = std::net::TcpListener::bind("0.0.0.0:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("cannot find a free port: {e}"))?
                .port();
            settings.listen = vec![format!("/ip4/0.0.0.0/tcp/{port}")];
            store.set_settings(&settings).map_err(text)?;
            info!(
                port,
                "the node listens on a port of its own, kept in the settings"
            );
        }
        Ok(settings
            .listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect())
    }

    fn relays(&self, store: &Store) -> AppResult<Vec<Multiaddr>> {
        if !self.opts.relays.is_empty() {
            return Ok(self.opts.relays.clone());
        }
        Ok(store
            .settings()
            .map_err(text)?
            .relays
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect())
    }

    /// The whole state, for a page that just connected (no secret in it but the tickets of
    /// the rooms, which the user needs to invite people).
    pub async fn state(&self) -> Value {
        let inner = self.inner.lock().await;
        let call = inner.call.as_ref().map(|c| &c.view);
        let Some(store) = inner.store.as_ref() else {
            return json!({"type": "state", "account": null, "call": call});
        };
        let account = match (store.identity_secret(), inner.node.as_ref()) {
            (Ok(Some(_)), Some(node)) => json!({
                "peer_id": node.peer_id().to_string(),
                "name": store.name().ok().flatten().unwrap_or_default(),
            }),
            _ => Value::Null,
        };
        let settings = store.settings().unwrap_or_default();
        json!({
            "type": "state",
            "account": account,
            "rooms": store.rooms().unwrap_or_default(),
            "history": store.history().unwrap_or_default(),
            "relays": settings.relays,
            "retention_days": store.history_retention_days().unwrap_or_default(),
            "sealed": store.is_sealed().unwrap_or(false),
            "call": call,
        })
    }

    async fn tell_state(&self) {
        let state = self.state().await;
        self.tell(state);
    }

    fn store_of(inner: &Inner) -> AppResult<Arc<Store>> {
        inner
            .store
            .clone()
            .ok_or_else(|| "there is no account".to_string())
    }

    /// First run: creates the account (a new identity key) and starts the node.
    pub async fn create_account(&self, name: &str) -> AppResult<()> {
        let name = check_name(name)?;
        {
            let mut inner = self.inner.lock().await;
            if inner.store.is_none() {
                let store = Store::open(&self.opts.data_dir).map_err(text)?;
                inner.store = Some(Arc::new(store));
            }
            let store = Self::store_of(&inner)?;
            let mut secret = zeroize::Zeroizing::new([0u8; 32]);
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, secret.as_mut());
            store.set_identity_if_absent(&secret).map_err(text)?;
            store.set_name(name).map_err(text)?;
            self.ensure_node_locked(&mut inner)?;
        }
        self.tell_state().await;
        Ok(())
    }

    pub async fn set_name(&self, name: &str) -> AppResult<()> {
        let name = check_name(name)?;
        Self::store_of(&*self.inner.lock().await)?
            .set_name(name)
            .map_err(text)?;
        self.tell_state().await;
        Ok(())
    }

    /// Creates a room whose ticket names this node (through each relay, then directly).
    pub async fn create_room(&self) -> AppResult<StoredRoom> {
        let inner = self.inner.lock().await;
        let store = Self::store_of(&inner)?;
        let node = inner.node.as_ref().ok_or("create the account first")?;
        let me = node.peer_id();
        let mut addrs: Vec<String> = self
            .relays(&store)?
            .iter()
            .map(|r| crate::net::relays::circuit_addr(r, me).to_string())
            .collect();
        addrs.extend(ticket_addrs(node.listen_addrs().await));
        addrs.truncate(confab_protocol::wire::MAX_ADDRS);
        let room = crate::account::rooms::new_room(&store, addrs, Vec::new()).map_err(text)?;
        drop(inner);
        self.tell_state().await;
        Ok(room)
    }

    /// Joins the room of `ticket_text` (a ticket, or any text with one in it: an invite).
    pub async fn join(self: &Arc<Self>, ticket_text: &str) -> AppResult<()> {
        let ticket = find_ticket(ticket_text)?;
        let mut inner = self.inner.lock().await;
        if inner.call.is_some() {
            return Err("already in a call; leave it first".into());
        }
        let store = Self::store_of(&inner)?;
        let name = store.name().map_err(text)?.unwrap_or_default();
        let node = inner.node.as_ref().ok_or("create the account first")?;
        let view = CallView::new(
            ticket.room_id_hex(),
            ticket.to_string(),
            crate::clock::now_ms(),
        );
        let config = CallConfig::new(ticket, name);
        let source = Box::new(BrowserSource(self.media.clone()));
        let sink = Box::new(BrowserSink::new(self.media.clone()));
        let (handle, events) = node.start_call(config, source, sink).await.map_err(text)?;
        handle
            .attach_video(self.video.ports())
            .await
            .map_err(text)?;
        inner.call_no += 1;
        let no = inner.call_no;
        inner.call = Some(LiveCall { handle, view });
        drop(inner);
        tokio::spawn(self.clone().follow(no, events));
        self.tell_call().await;
        Ok(())
    }

    async fn tell_call(&self) {
        let inner = self.inner.lock().await;
        let view = inner.call.as_ref().map(|c| &c.view);
        self.tell(json!({
            "type": "call",
            "call": view,
            "media": self.media_counters(),
        }));
    }

    /// How the page's audio fares at the node: microphone gaps and drops, frames the page
    /// did not take in time.
    fn media_counters(&self) -> Value {
        json!({
            "mic": self.media.mic_counters(),
            "mic_buffered_ms": self.media.mic_buffered_ms(),
            "to_page_dropped": self.media.page_dropped(),
            "video": self.video.report(),
        })
    }

    /// Folds the events of call number `no` into its view, tells the pages, and records the
    /// call in the history when it ends.
    async fn follow(self: Arc<Self>, no: u64, mut events: CallEvents) {
        let mut report = ReportBuilder::new();
        while let Some(ev) = events.next().await {
            report.on_event(&ev);
            let ended = matches!(ev, CallEvent::Ended(_));
            {
                let mut inner = self.inner.lock().await;
                if inner.call_no != no {
                    return;
                }
                if let Some(call) = inner.call.as_mut() {
                    if !call.view.on_event(&ev) {
                        continue;
                    }
                }
            }
            if ended {
                break;
            }
            self.tell_call().await;
        }
        self.finish_call(no, report).await;
    }

    async fn finish_call(&self, no: u64, report: ReportBuilder) {
        let mut inner = self.inner.lock().await;
        if inner.call_no != no {
            return;
        }
        let view = inner.call.take().map(|c| c.view);
        self.video.call_ended();
        if let Some(store) = inner.store.as_ref() {
            if let Err(e) = store.record_call(&report.finish().history_entry()) {
                warn!(error = %e, "cannot record the call in the history");
            }
        }
        drop(inner);
        self.tell(json!({"type": "ended", "call": view}));
        self.tell_state().await;
    }

    async fn handle(&self) -> AppResult<CallHandle> {
        let inner = self.inner.lock().await;
        inner
            .call
            .as_ref()
            .map(|c| c.handle.clone())
            .ok_or_else(|| "not in a call".to_string())
    }

    pub async fn leave(&self) -> AppResult<()> {
        let handle = self.handle().await?;
        handle
            .request_leave(std::time::Duration::from_millis(300))
            .await
            .map_err(text)
    }

    pub async fn mute(&self, on: bool) -> AppResult<()> {
        self.handle().await?.mute(on).await.map_err(text)?;
        if let Some(c) = self.inner.lock().await.call.as_mut() {
            c.view.muted = on;
        }
        self.tell_call().await;
        Ok(())
    }

    pub async fn chat(&self, text_in: &str) -> AppResult<()> {
        let handle = self.handle().await?;
        handle.chat(text_in.to_owned()).await.map_err(text)?;
        if let Some(c) = self.inner.lock().await.call.as_mut() {
            c.view.push_chat(ChatLine {
                at_ms: crate::clock::now_ms(),
                peer: String::new(),
                name: String::new(),
                text: text_in.to_owned(),
                mine: true,
            });
        }
        self.tell_call().await;
        Ok(())
    }

    /// Starts or stops recording what we hear into a WAV file in the data directory; the
    /// room is told at once.
    pub async fn record(&self, on: bool) -> AppResult<()> {
        let handle = self.handle().await?;
        let path = if on {
            let dir = self.opts.data_dir.join("recordings");
            crate::account::store::create_private_dir(&dir).map_err(text)?;
            let path = dir.join(format!("call-{}.wav", crate::clock::now_ms()));
            let sink =
                crate::media::sink::WavMix::create(&path, crate::clock::now_ms()).map_err(text)?;
            handle.start_recording(Box::new(sink)).await.map_err(text)?;
            Some(path.display().to_string())
        } else {
            handle.stop_recording().await.map_err(text)?;
            None
        };
        if let Some(c) = self.inner.lock().await.call.as_mut() {
            c.view.recording = on;
            c.view.recording_path = path;
        }
        self.tell_call().await;
        Ok(())
    }

    /// Adds or removes a relay in the account's settings; the node picks the change up
    /// when no call runs (at once if none does).
    pub async fn set_relay(&self, addr: &str, add: bool) -> AppResult<()> {
        let parsed: Multiaddr = addr.trim().parse().map_err(text)?;
        crate::net::relays::check_relay_addr(&parsed)?;
        {
            let inner = self.inner.lock().await;
            let store = Self::store_of(&inner)?;
            let mut settings = store.settings().map_err(text)?;
            let text_addr = parsed.to_string();
            if add && !settings.relays.contains(&text_addr) {
                settings.relays.push(text_addr);
            } else if !add {
                settings.relays.retain(|r| *r != text_addr);
            }
            store.set_settings(&settings).map_err(text)?;
        }
        self.restart_node_if_idle().await;
        self.tell_state().await;
        Ok(())
    }

    async fn restart_node_if_idle(&self) {
        let mut inner = self.inner.lock().await;
        if inner.call.is_some() {
            return;
        }
        if let Some(node) = inner.node.take() {
            node.shutdown().await;
        }
        if let Err(e) = self.ensure_node_locked(&mut inner) {
            warn!(error = %e, "cannot restart the node");
        }
    }

    pub async fn set_retention(&self, days: u32) -> AppResult<()> {
        Self::store_of(&*self.inner.lock().await)?
            .set_history_retention_days(days, crate::clock::now_ms())
            .map_err(text)?;
        self.tell_state().await;
        Ok(())
    }

    pub async fn clear_history(&self) -> AppResult<usize> {
        let n = Self::store_of(&*self.inner.lock().await)?
            .clear_history()
            .map_err(text)?;
        self.tell_state().await;
        Ok(n)
    }

    /// The account export (never with the identity key: nothing that reaches the page can
    /// read it).
    pub async fn export(&self) -> AppResult<Value> {
        let store = Self::store_of(&*self.inner.lock().await)?;
        let doc =
            crate::account::export::export(&store, false, crate::clock::now_ms()).map_err(text)?;
        serde_json::to_value(doc).map_err(text)
    }

    /// Deletes the account: the node stops and the store is removed from the disk. Refused
    /// during a call.
    pub async fn delete_account(&self) -> AppResult<()> {
        let mut inner = self.inner.lock().await;
        if inner.call.is_some() {
            return Err("leave the call before deleting the account".into());
        }
        if let Some(node) = inner.node.take() {
            node.shutdown().await;
        }
        let store = inner.store.take().ok_or("there is no account")?;
        match Arc::try_unwrap(store) {
            Ok(store) => drop(store),
            Err(store) => {
                inner.store = Some(store);
                return Err("the account is busy; try again in a moment".into());
            }
        }
        crate::account::export::delete(&self.opts.data_dir).map_err(text)?;
        info!("account deleted");
        drop(inner);
        self.tell_state().await;
        Ok(())
    }

    /// Leaves any call and stops the node.
    pub async fn shutdown(&self) {
        let handle = self.handle().await.ok();
        if let Some(h) = handle {
            let _ = h.leave().await;
        }
        if let Some(node) = self.inner.lock().await.node.take() {
            node.shutdown().await;
        }
    }
}

/// A display name, trimmed: 1 to `MAX_NAME` bytes.
fn check_name(name: &str) -> AppResult<&str> {
    let name = name.trim();
    if name.is_empty() || name.len() > confab_protocol::wire::MAX_NAME {
        return Err(format!(
            "a name is 1 to {} bytes",
            confab_protocol::wire::MAX_NAME
        ));
    }
    Ok(name)
}

/// The addresses a ticket made here names: the node's, loopback last (it only helps on
/// this machine).
fn ticket_addrs(listen: Vec<Multiaddr>) -> Vec<String> {
    let loopback = |a: &Multiaddr| {
        a.iter().any(|p| match p {
            libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
            libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        })
    };
    let (lo, other): (Vec<_>, Vec<_>) = listen.into_iter().partition(loopback);
    other.into_iter().chain(lo).map(|a| a.to_string()).collect()
}

/// The ticket in `text`: the text itself, or the first `confab1…` word in it (an invite
/// message or link).
pub fn find_ticket(text: &str) -> AppResult<Ticket> {
    let prefix = confab_protocol::ticket::PREFIX;
    let start = text
        .find(prefix)
        .ok_or("no ticket found: paste the invite you were sent")?;
    let word: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    Ticket::parse(&word).map_err(|e| format!("this invite does not work: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_give_their_ticket() {
        let t = Ticket {
            room_id: [1; 16],
            room_secret: [2; 32],
            bootstrap: vec![],
        };
        let text = t.to_string();
        for wrapped in [
            text.clone(),
            format!("Join my call: {text}\n"),
            format!("http://127.0.0.1:1234/#invite={text}"),
        ] {
            assert_eq!(find_ticket(&wrapped).expect("ticket"), t);
        }
        assert!(find_ticket("hello").is_err());
        assert!(find_ticket("confab1zzzz").is_err());
    }
}
