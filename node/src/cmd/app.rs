//! `confab app`: starts the node and serves the local web app until Ctrl-C.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use clap::Args;
use libp2p::Multiaddr;

use super::account::open_store;
use super::Failure;
use crate::app::state::{App, AppOptions};

#[derive(Args, Debug)]
pub struct AppArgs {
    /// Port of the web app (default: any free port; the address is printed).
    #[arg(long, default_value_t = 0)]
    pub ui_port: u16,
    /// Serve the web app on this address instead of 127.0.0.1. Anyone who can reach it and
    /// has the printed address (with its token) can use your node: only on networks you trust.
    #[arg(long, value_name = "IP")]
    pub ui_bind: Option<IpAddr>,
    /// Open the web app in the default browser.
    #[arg(long)]
    pub open: bool,
    /// Address the node listens on for calls (repeatable; default: the account's settings,
    /// else all interfaces on a port kept in the settings).
    #[arg(long)]
    pub listen: Vec<Multiaddr>,
    /// Community relay (repeatable; default: the account's relays).
    #[arg(long)]
    pub relay: Vec<Multiaddr>,
    /// Never try a DCUtR hole punch (for tests).
    #[arg(long, hide = true)]
    pub no_hole_punch: bool,
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener).arg(url).spawn() {
        eprintln!("cannot open a browser ({opener}: {e}); open the address above yourself");
    }
}

pub(super) fn run(dir: &Path, args: AppArgs) -> Result<(), Failure> {
    let ip = args.ui_bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if !ip.is_loopback() {
        eprintln!(
            "warning: the web app is served on {ip}, beyond this machine; anyone with its address can use your node"
        );
    }
    for r in &args.relay {
        crate::net::relays::check_relay_addr(r).map_err(Failure::input)?;
    }
    let store = open_store(dir)?;
    let opts = AppOptions {
        data_dir: dir.to_path_buf(),
        listen: args.listen.clone(),
        relays: args.relay.clone(),
        hole_punch: !args.no_hole_punch,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Failure::other)?;
    runtime.block_on(async {
        let app = App::new(opts, store);
        app.ensure_node().await.map_err(Failure::other)?;
        let (served, server) = crate::app::bind(app.clone(), SocketAddr::new(ip, args.ui_port))
            .await
            .map_err(|e| Failure::other(format!("cannot serve the web app: {e}")))?;
        println!("confab is running. Open {} in your browser.", served.url);
        let _ = std::io::stdout().flush();
        if args.open {
            open_browser(&served.url);
        }
        tokio::select! {
            r = server => r.map_err(Failure::other)?,
            _ = tokio::signal::ctrl_c() => eprintln!("stopping: leaving the call and closing the node"),
        }
        app.shutdown().await;
        Ok(())
    })
}
