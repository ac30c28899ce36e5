use clap::Parser;

fn main() {
    let cli = confab_node::cmd::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(confab_node::cmd::LogWriter)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn")),
        )
        .init();
    if let Err(f) = confab_node::cmd::run(cli) {
        eprintln!("error: {}", f.message);
        std::process::exit(f.code);
    }
}
