//! confab-relay binary: parse the CLI, load config, install tracing, run the relay.

use anyhow::Context as _;
use clap::Parser as _;
use confab_relay::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.opts.resolve()?;
    install_tracing(config.log_ips);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => runtime.block_on(run(config)),
        Command::PeerId => {
            let (key, _) = confab_relay::identity::load_or_create(&config.identity_path())?;
            println!("{}", key.public().to_peer_id());
            Ok(())
        }
        Command::PrintConfig => {
            print!(
                "{}",
                toml::to_string(&config).context("encoding the config")?
            );
            Ok(())
        }
        Command::Bench(args) => Ok(runtime.block_on(confab_relay::bench::run(args))?),
    }
}

/// Logs go to stderr. Without `RUST_LOG`, the relay logs at info and other crates only
/// errors (their warnings can carry addresses); `log_ips` lets their warnings through.
fn install_tracing(log_ips: bool) {
    let default = if log_ips {
        "warn,confab_relay=info"
    } else {
        "error,confab_relay=info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(config: confab_relay::Config) -> anyhow::Result<()> {
    let handle = confab_relay::start(config).await?;
    // Machine-readable ready lines on stdout: the relay's own addresses only.
    println!("peer-id {}", handle.peer_id());
    for addr in handle.listen_addrs() {
        println!("listen {addr}");
    }
    if let Some(m) = handle.metrics_addr() {
        println!("metrics {m}");
    }
    println!("ready");
    wait_for_signal().await?;
    tracing::info!("shutting down");
    handle.shutdown().await?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
