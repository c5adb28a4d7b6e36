//! One demo service as its own process, for containers
//! (`envoy-config/compose/`): the echo service `make demo` runs in-process
//! (`testbed::EchoService`). It answers every request with JSON naming its
//! service and version and, given a next hop, first calls that service
//! through its sidecar, passing the tracing context (baggage etc.) on.
//!
//! ```text
//! demo-service --service frontend --version baseline --listen 0.0.0.0:8080 \
//!     --next-hop http://frontend-sidecar:15001 --next-host backend
//! ```

use std::net::SocketAddr;

use anyhow::{bail, Result};
use clap::Parser;
use testbed::{EchoService, NextHop};

#[derive(Parser)]
#[command(
    name = "demo-service",
    about = "A demo service: answers with its service and version, optionally after calling a next hop through its sidecar."
)]
struct Args {
    /// The service this is, e.g. `frontend`.
    #[arg(long, env = "DEMO_SERVICE")]
    service: String,
    /// `baseline`, or the sandbox's name.
    #[arg(long, env = "DEMO_VERSION", default_value = "baseline")]
    version: String,
    /// Address to listen on.
    #[arg(long, env = "DEMO_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The sidecar the next hop is called through, e.g. `http://127.0.0.1:15001`.
    #[arg(
        long,
        env = "DEMO_NEXT_HOP",
        requires = "next_host",
        value_name = "URL"
    )]
    next_hop: Option<String>,
    /// The service called there (the request's Host), e.g. `backend`.
    #[arg(
        long,
        env = "DEMO_NEXT_HOST",
        requires = "next_hop",
        value_name = "HOST"
    )]
    next_host: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let next = match (args.next_hop, args.next_host) {
        (Some(via), Some(host)) => {
            if !via.starts_with("http://") {
                bail!("--next-hop must be an http:// URL, got {via:?}");
            }
            Some(NextHop { via, host })
        }
        _ => None,
    };
    let calls = next
        .as_ref()
        .map(|n| format!(", calling {} via {}", n.host, n.via))
        .unwrap_or_default();
    let service = EchoService::start_on(args.listen, &args.service, &args.version, next).await?;
    println!(
        "demo-service: {}/{} listening on {}{calls}",
        args.service,
        args.version,
        service.addr()
    );
    stopped().await?;
    println!("demo-service: stopping");
    drop(service);
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM (`docker stop`: the service runs as PID 1).
async fn stopped() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = term.recv() => {}
    }
    Ok(())
}
