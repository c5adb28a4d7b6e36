//! `sandbox-router-queue`: the queue consumer's decision over HTTP/JSON, for
//! consumers in other languages (see `docs/message-queues.md`). Holds the
//! routing table from the control service's Watch stream (last-known-good
//! while it is away) or from a static table file, and answers
//! `POST /v1/owner`, `POST /v1/decide`, `GET /v1/stats`, `GET /healthz`.
//!
//! Prints `listening on ADDR` once it accepts connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sandbox_router_queue::http::{router, Decider};
use sandbox_router_queue::TableSource;
use sandbox_router_routing::Settings;

#[derive(Debug, Parser)]
#[command(name = "sandbox-router-queue", version, about)]
struct Cli {
    /// Address to serve on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:7072")]
    listen: SocketAddr,
    /// The control service's gRPC address, e.g. http://127.0.0.1:7070 (the same address as its HTTP API).
    #[arg(long, conflicts_with = "table", required_unless_present = "table")]
    control: Option<String>,
    /// A static routing table, JSON (the filter's `table` field).
    #[arg(long)]
    table: Option<PathBuf>,
    /// The filter configuration the producers' mesh uses (only its `keys`,
    /// `overrides_key` and `sources` matter); default: the filter's defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Node id on the watch stream (what `sandbox-router status` shows).
    #[arg(long, default_value = "sandbox-router-queue")]
    node_id: String,
    /// Bearer token for the watch stream (`serve --watch-token`).
    #[arg(long, env = "SANDBOX_ROUTER_WATCH_TOKEN")]
    watch_token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox-router-queue: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let settings = match &cli.config {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Settings::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Settings::from_json(b"").map_err(|e| e.to_string())?,
    };
    let source = match (&cli.control, &cli.table) {
        (_, Some(path)) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            TableSource::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
        }
        (Some(server), None) => {
            let mut config = sandbox_router_watch::WatchConfig::new(server, &cli.node_id);
            config.token = cli.watch_token.clone();
            TableSource::watch_with(config).map_err(|e| format!("--control: {e}"))?
        }
        (None, None) => return Err(String::from("give --control or --table")),
    };
    let decider = Arc::new(Decider::new(settings, source));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .map_err(|e| format!("--listen {}: {e}", cli.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening on {addr}");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        axum::serve(listener, router(decider))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| e.to_string())
    })
}
