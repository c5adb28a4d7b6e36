//! Propagation: from the control API acknowledging a write (the HTTP 201) to
//! every worker of every Envoy routing by it.
//!
//! Each Envoy gets several keep-alive connections (a connection stays on one
//! worker; with twice as many connections as workers, all workers are almost
//! surely covered), and each connection polls with the new routing key until
//! the sandbox answers. The write's propagation time is when the last
//! connection of the last Envoy saw it. The pollers share the machine's two
//! cores with Envoy and the control service, so the figures are upper bounds.
//!
//! `--host` picks the sandbox-router every Envoy runs: the Wasm filter (its
//! singleton writes the table into shared data) or the native module (its
//! watch thread swaps the table in process memory).
//!
//! `--until acked` measures instead until every proxy has acknowledged the
//! version (`GET /v1/proxies`, polled by one client), then checks that every
//! connection routes by the key at its first request (a write whose check
//! fails stops the run). A proxy acknowledges a version after it applied it,
//! so this bounds the time to routing from above without 40 pollers
//! competing for the CPU they measure. It is exact for the native module,
//! whose workers all read the one table the watch swaps; a Wasm worker may
//! still be reading its shared data, which is why the check follows.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use reqwest::Method;
use serde_json::json;
use testbed::{
    get_via, poll_until, shipped_config, sidecar_config_for, wait_for_filter, ControlService,
    EchoService, Envoy, Host, SidecarPorts, DEFAULT_SYNC_CONFIG,
};

#[derive(ClapArgs)]
pub struct Args {
    /// Envoy processes watching the control service.
    #[arg(long, default_value_t = 1)]
    envoys: usize,
    /// Workers per Envoy (`--concurrency`).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Writes measured (each a sandbox create; the sandbox is deleted after).
    #[arg(long, default_value_t = 100)]
    updates: usize,
    /// The host of sandbox-router: wasm or native.
    #[arg(long, value_parser = crate::hosts::parse_host, default_value = "wasm")]
    host: Host,
    /// What ends a write's measurement: every connection routed (polled),
    /// or every proxy acknowledged the version (then every connection is
    /// checked once).
    #[arg(long, value_enum, default_value_t = Until::Routed)]
    until: Until,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    Routed,
    Acked,
}

pub async fn run(args: Args, out: &Path) -> Result<()> {
    let binary = testbed::sibling_binary("sandbox-router")?;
    let control = ControlService::start(&binary, None).await?;
    let baseline = EchoService::start("backend", "baseline").await?;
    let sandbox = EchoService::start("backend", "sandbox").await?;
    let filter_config = shipped_config("filter-config.json")?;
    let ports = SidecarPorts {
        backend_baseline: baseline.addr().port(),
        frontend_baseline: 1,
        control: control.addr().port(),
    };
    let mut envoys = Vec::new();
    let mut pollers = Vec::new();
    for i in 0..args.envoys {
        let envoy = Envoy::start(
            &sidecar_config_for(
                args.host,
                &format!("bench-{i}"),
                &ports,
                &filter_config,
                DEFAULT_SYNC_CONFIG,
            )?,
            args.concurrency,
        )
        .await?;
        let listener = envoy.listener("outbound").await?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        wait_for_filter(&envoy, &http, listener, "backend").await?;
        for _ in 0..2 * args.concurrency {
            // One client per poller: its own keep-alive connection.
            pollers.push((
                reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(1)
                    .build()?,
                listener,
            ));
        }
        envoys.push(envoy);
    }
    poll_until(
        "every Envoy connected to the control service",
        Duration::from_secs(30),
        || async {
            let (_, body) = control.api(Method::GET, "/v1/proxies", None).await.ok()?;
            (body["proxies"].as_array()?.len() == args.envoys).then_some(())
        },
    )
    .await?;

    let mut samples = Vec::with_capacity(args.updates);
    for i in 0..args.updates {
        let name = format!("bench-{i}");
        let body = json!({ "name": name, "forks": { "backend": [sandbox.addr().to_string()] } });
        let (status, created) = control
            .api(Method::POST, "/v1/sandboxes", Some(body))
            .await?;
        let acked = Instant::now();
        if status != 201 {
            bail!("create returned {status}: {created}");
        }
        let key = created["routing_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let value = format!("sandbox-routing-key={key}");
        if args.until == Until::Acked {
            let version = created["version"].as_u64().unwrap_or(u64::MAX);
            samples.push(until_acked(&control, args.envoys, version, acked).await?);
            for (http, listener) in &pollers {
                let reply =
                    get_via(http, *listener, "backend", &[("baggage", value.as_bytes())]).await?;
                if reply.served_by() != "backend/sandbox" {
                    bail!("every proxy acknowledged version {version}, but a connection to {listener} was not routed by it");
                }
            }
            control
                .api(Method::DELETE, &format!("/v1/sandboxes/{name}"), None)
                .await?;
            continue;
        }
        // All connections poll at once, each on its own task.
        let waits: Vec<_> = pollers
            .iter()
            .map(|(http, listener)| {
                let (http, listener, value) = (http.clone(), *listener, value.clone());
                tokio::spawn(async move {
                    let deadline = acked + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        let reply =
                            get_via(&http, listener, "backend", &[("baggage", value.as_bytes())])
                                .await?;
                        if reply.served_by() == "backend/sandbox" {
                            return Ok(acked.elapsed());
                        }
                    }
                    bail!("not routed within 10 s")
                })
            })
            .collect();
        let mut seen = Vec::with_capacity(waits.len());
        for wait in waits {
            seen.push(wait.await??);
        }
        samples.push(seen.into_iter().max().unwrap_or_default());
        control
            .api(Method::DELETE, &format!("/v1/sandboxes/{name}"), None)
            .await?;
    }
    drop(envoys);

    samples.sort_unstable();
    // Issue 1's target for the Wasm build; issue 12's for the native module.
    let target_ms = match args.host {
        Host::Wasm => 50,
        Host::Native => 10,
    };
    let pct = |p: f64| crate::percentile_ms(&samples, p);
    let until = match args.until {
        Until::Routed => "routed",
        Until::Acked => "acked",
    };
    let result = json!({
        "benchmark": "propagation",
        "host": args.host.name(),
        "until": until,
        "envoys": args.envoys,
        "concurrency": args.concurrency,
        "connections_per_envoy": 2 * args.concurrency,
        "updates": samples.len(),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "target_p99_ms": target_ms,
    });
    println!(
        "propagation ({}, until {until}), {} Envoy(s) x {} workers, {} writes: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= {target_ms} ms)",
        args.host.name(), args.envoys, args.concurrency, samples.len(), pct(0.5), pct(0.9), pct(0.99), pct(1.0)
    );
    std::fs::create_dir_all(out)?;
    // The Wasm build's file keeps the name earlier results have.
    let host = match args.host {
        Host::Wasm => "",
        Host::Native => "-native",
    };
    let until = match args.until {
        Until::Routed => "",
        Until::Acked => "-acked",
    };
    let file = out.join(format!(
        "propagation-{}-envoys{host}{until}.json",
        args.envoys
    ));
    std::fs::write(&file, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("written to {}", file.display());
    Ok(())
}

/// Polls the control service until each of `envoys` proxies acknowledged
/// `version` (or a later one); the time since `acked`.
async fn until_acked(
    control: &ControlService,
    envoys: usize,
    version: u64,
    acked: Instant,
) -> Result<Duration> {
    while acked.elapsed() < Duration::from_secs(10) {
        let (_, body) = control.api(Method::GET, "/v1/proxies", None).await?;
        let applied = body["proxies"].as_array().map_or(0, |proxies| {
            proxies
                .iter()
                .filter(|p| p["applied_version"].as_u64() >= Some(version))
                .count()
        });
        if applied >= envoys {
            return Ok(acked.elapsed());
        }
    }
    bail!("version {version} not acknowledged by {envoys} proxies within 10 s")
}
