//! The control service's fan-out: N simulated proxies (real gRPC Watch
//! streams, several per HTTP/2 connection) and the time from the API
//! acknowledging a write until every one of them has received it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use reqwest::Method;
use sandbox_router_control::grpc::routing_table_service_client::RoutingTableServiceClient;
use sandbox_router_proto::v1::WatchRequest;
use serde_json::json;
use testbed::ControlService;
use tokio::sync::mpsc;

#[derive(ClapArgs)]
pub struct Args {
    /// Simulated proxies (watch streams).
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Streams per HTTP/2 connection.
    #[arg(long, default_value_t = 10)]
    per_connection: usize,
    /// Writes measured.
    #[arg(long, default_value_t = 50)]
    updates: usize,
}

pub async fn run(args: Args, out: &Path) -> Result<()> {
    let binary = testbed::sibling_binary("sandbox-router")?;
    let control = ControlService::start(&binary, None).await?;
    let url = control.url();
    // Every watcher reports (version, when it arrived).
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let connections = args.watchers.div_ceil(args.per_connection.max(1));
    let mut started = 0;
    for c in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await?;
        for w in 0..args.per_connection.min(args.watchers - started) {
            let mut client = RoutingTableServiceClient::new(channel.clone());
            let seen = seen_tx.clone();
            let (tx, rx) = mpsc::channel(4);
            tx.send(WatchRequest {
                node_id: format!("sim-{c}-{w}"),
                applied_version: 0,
                error: String::new(),
            })
            .await?;
            let mut stream = client
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            tokio::spawn(async move {
                let _keep_request_open = tx;
                while let Ok(Some(update)) = stream.message().await {
                    let _ = seen.send((update.version, Instant::now()));
                }
            });
            started += 1;
        }
    }
    // The snapshots (version 0) first.
    let mut snapshots = 0;
    while snapshots < started {
        match tokio::time::timeout(Duration::from_secs(60), seen_rx.recv()).await? {
            Some((0, _)) => snapshots += 1,
            Some(_) => {}
            None => bail!("watchers ended"),
        }
    }

    let mut samples = Vec::new();
    let mut from_request = Vec::new();
    for i in 0..args.updates {
        let body = json!({ "name": format!("fan-{i}"), "forks": { "backend": ["10.0.0.1:80"] } });
        let sent = Instant::now();
        let (status, created) = control
            .api(Method::POST, "/v1/sandboxes", Some(body))
            .await?;
        let acked = Instant::now();
        if status != 201 {
            bail!("create returned {status}: {created}");
        }
        let version = created["version"].as_u64().unwrap_or_default();
        let (mut got, mut last) = (0, acked);
        while got < started {
            let (v, at) = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watchers ended"))?;
            if v == version {
                got += 1;
                last = last.max(at);
            }
        }
        // Watchers often have it before the 201 reaches this client: clamped at 0.
        samples.push(last.saturating_duration_since(acked));
        from_request.push(last.saturating_duration_since(sent));
    }
    samples.sort_unstable();
    from_request.sort_unstable();
    let ms = |p: f64| crate::percentile_ms(&samples, p);
    let request_ms = |p: f64| crate::percentile_ms(&from_request, p);
    let result = json!({
        "benchmark": "fan-out",
        "watchers": started,
        "streams_per_connection": args.per_connection,
        "updates": samples.len(),
        "after_ack": { "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": ms(1.0) },
        "after_request_sent": { "p50_ms": request_ms(0.5), "p99_ms": request_ms(0.99), "max_ms": request_ms(1.0) },
    });
    println!(
        "fan-out to {started} watchers ({} per connection), {} writes: after the 201 p50 {:.1} ms, p99 {:.1} ms; after sending the write p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.per_connection, samples.len(), ms(0.5), ms(0.99), request_ms(0.5), request_ms(0.99), request_ms(1.0)
    );
    std::fs::create_dir_all(out)?;
    let file = out.join(format!("fanout-{started}-watchers.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("written to {}", file.display());
    Ok(())
}
