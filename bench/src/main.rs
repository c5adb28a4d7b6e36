//! `sandbox-router-bench`: measurements against real Envoys and the real
//! control service. Figures go to stdout and to `bench/results/`.

mod cost;
mod fanout;
mod hosts;
mod load;
mod propagation;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sandbox-router-bench",
    about = "Benchmarks of sandbox-router against real Envoys."
)]
struct Cli {
    /// Where to write results (JSON and markdown).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time from the control API acknowledging a write to every Envoy worker routing by it.
    Propagation(propagation::Args),
    /// Envoy CPU per request, latency, throughput and RSS: sandbox-router (Wasm and native) against plain Envoy, native routes, Lua, a Wasm and a native no-op.
    Cost(cost::Args),
    /// The control service's fan-out: time until N simulated proxies have a write.
    Fanout(fanout::Args),
    /// For bench/callgrind.py: writes a store of N sandboxes, prints the routing key to route by.
    #[command(hide = true)]
    Store(hosts::StoreArgs),
    /// For bench/callgrind.py: prints the shipped sidecar config of a host, rendered.
    #[command(hide = true)]
    SidecarConfig(hosts::SidecarArgs),
    /// For bench/callgrind.py: prints the HTTP filter of a variant in the bench layout.
    #[command(hide = true)]
    Filter(hosts::FilterArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Propagation(args) => propagation::run(args, &cli.out).await,
        Command::Cost(args) => cost::run(args, &cli.out).await,
        Command::Fanout(args) => fanout::run(args, &cli.out).await,
        Command::Store(args) => hosts::store(args),
        Command::SidecarConfig(args) => hosts::sidecar_config(args),
        Command::Filter(args) => hosts::print_filter(args),
    }
}

/// The `p`-quantile (0..=1, nearest rank) of sorted durations, in milliseconds; NaN when empty.
fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}
