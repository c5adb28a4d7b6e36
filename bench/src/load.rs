//! Load for the cost benchmark.
//!
//! `fixed_rate` sends requests on a fixed schedule (open loop) over a small
//! pool of keep-alive connections, so the Envoy under test does the same work
//! per second in every variant; latency is measured per request from the moment
//! it is sent. `saturate` runs `wrk` (closed loop) for the secondary figure.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Connections the fixed-rate load uses.
const CONNECTIONS: usize = 8;

pub struct Latencies {
    pub sent: usize,
    pub failed: usize,
    /// Sorted, microseconds.
    pub micros: Vec<u64>,
}

impl Latencies {
    pub fn percentile(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let i = ((self.micros.len() as f64 * p).ceil() as usize).clamp(1, self.micros.len()) - 1;
        self.micros[i] as f64
    }
}

pub fn headers(extra: &[(String, String)]) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    map.insert(reqwest::header::HOST, HeaderValue::from_static("backend"));
    // An instrumented app's request carries a trace context either way.
    map.insert(
        HeaderName::from_static("traceparent"),
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    for (name, value) in extra {
        map.insert(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    Ok(map)
}

/// `rate` requests per second for `duration` to `listener`.
pub async fn fixed_rate(
    listener: SocketAddr,
    headers: HeaderMap,
    rate: u32,
    duration: Duration,
) -> Result<Latencies> {
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()?;
    let url = format!("http://{listener}/");
    let next = Arc::new(AtomicUsize::new(0));
    let micros = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(5);
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, url, headers) = (client.clone(), url.clone(), headers.clone());
            let (next, micros, failed) = (next.clone(), micros.clone(), failed.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + interval * i as u32;
                    tokio::time::sleep_until(due.into()).await;
                    let sent = Instant::now();
                    let ok = match client.get(&url).headers(headers.clone()).send().await {
                        Ok(response) => {
                            response.status().is_success() && response.bytes().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    if ok {
                        let us = sent.elapsed().as_micros() as u64;
                        if let Ok(mut m) = micros.lock() {
                            m.push(us);
                        }
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    let mut micros = std::mem::take(&mut *micros.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    micros.sort_unstable();
    Ok(Latencies {
        sent: total,
        failed: failed.load(Ordering::Relaxed),
        micros,
    })
}

/// Saturated requests per second by `wrk` (pinned to `cpus`), or `None` without wrk.
pub fn saturate(
    listener: SocketAddr,
    extra: &[(String, String)],
    seconds: u32,
    cpus: &str,
) -> Result<Option<f64>> {
    if Command::new("wrk").arg("--version").output().is_err() {
        return Ok(None);
    }
    let mut command = Command::new("taskset");
    command.args([
        "-c",
        cpus,
        "wrk",
        "-t1",
        "-c16",
        &format!("-d{seconds}s"),
        "-H",
        "Host: backend",
    ]);
    command.args([
        "-H",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ]);
    for (name, value) in extra {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    let output = command.arg(format!("http://{listener}/")).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        bail!("wrk saw non-2xx answers:\n{text}");
    }
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok()))
}
