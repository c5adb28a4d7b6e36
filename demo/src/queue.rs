//! The demo's message hop: a job published with the frontend's tracing
//! context, read by two workers (the baseline and sandbox `worker-v2`), each
//! through its own consumer group on the Redis stream, each deciding with
//! `sandbox-router-queue` by the table the control service pushes.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use sandbox_router_queue::redis_streams::{publish, Message, StreamConfig, StreamConsumer};
use sandbox_router_queue::{Consumer, Decision, Identity, TableSource};
use sandbox_router_routing::Settings;
use testbed::poll_until;

use crate::{Demo, CREDENTIAL_HEADER};

const STREAM: &str = "jobs";

/// job name -> the workers that processed it (`worker/baseline`, `worker/worker-v2`).
type Ledger = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

struct Worker {
    consumer: Arc<Consumer>,
    thread: JoinHandle<Result<(), String>>,
}

pub async fn message_hop(demo: &mut Demo) -> Result<()> {
    // A worker has no HTTP traffic; its fork registers an address of the
    // sandboxed workload (here a port it holds), which names the sandbox's workload.
    let worker_v2_port = TcpListener::bind("127.0.0.1:0")?;
    let key = demo.create_sandbox(
        "worker-v2",
        &format!("worker={}", worker_v2_port.local_addr()?),
    )?;

    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for sandbox in [None, Some("worker-v2")] {
        let identity = Identity {
            service: "worker".into(),
            sandbox: sandbox.map(str::to_owned),
        };
        let label = format!("worker/{}", sandbox.unwrap_or("baseline"));
        let source = TableSource::watch(&demo.control.url(), &format!("demo-{label}"))?;
        let consumer = Arc::new(Consumer::new(identity, Settings::from_json(b"")?, source)?);
        let ready = {
            let consumer = Arc::clone(&consumer);
            tokio::task::spawn_blocking(move || consumer.wait_ready(Duration::from_secs(10)))
                .await?
        };
        if !ready {
            bail!("{label} never had its table");
        }
        let mut config = StreamConfig::new(demo.broker.url(), STREAM);
        config.block = Duration::from_millis(100);
        let mut stream = StreamConsumer::connect(config, Arc::clone(&consumer))?;
        println!(
            "  {label:<16} consumer group {}, table version {}",
            stream.group(),
            consumer.table().version()
        );
        let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let handler = |message: &Message, _: &Decision| {
                let job = String::from_utf8_lossy(message.field("job").unwrap_or_default());
                if let Ok(mut ledger) = ledger.lock() {
                    ledger
                        .entry(job.into_owned())
                        .or_default()
                        .push(label.clone());
                }
                Ok::<(), std::io::Error>(())
            };
            stream
                .run(handler, || stop.load(Ordering::SeqCst))
                .map_err(|e| e.to_string())
        });
        workers.push(Worker { consumer, thread });
    }
    println!();

    let mut con = redis::Client::open(demo.broker.url())?.get_connection()?;
    let jobs = [
        (
            "job-1",
            Some(format!("sandbox-routing-key={key}")),
            "worker/worker-v2",
        ),
        ("job-2", None, "worker/baseline"),
    ];
    for (job, baggage, _) in &jobs {
        // The frontend receives a tester's request, and publishes a job with
        // the context it holds (its OpenTelemetry messaging instrumentation
        // writes `baggage` and `traceparent` into the message's fields).
        let mut headers: Vec<(&str, &[u8])> = vec![(CREDENTIAL_HEADER, demo.credential.as_bytes())];
        if let Some(baggage) = baggage {
            headers.push(("baggage", baggage.as_bytes()));
        }
        let reply = testbed::get_via(&demo.http, demo.edge_listener, "frontend", &headers).await?;
        let received = reply.echo.map(|e| e.headers).unwrap_or_default();
        let mut fields: Vec<(&str, &[u8])> = ["baggage", "traceparent"]
            .iter()
            .filter_map(|name| received.get(*name).map(|v| (*name, v.as_bytes())))
            .collect();
        fields.push(("job", job.as_bytes()));
        let id = publish(&mut con, STREAM, &fields)?;
        let shown = received
            .get("baggage")
            .map_or(String::from("(no routing context)"), |b| {
                format!("baggage: {b}")
            });
        println!("  frontend publishes {job} (entry {id}), {shown}");
    }
    println!();
    let names: Vec<&str> = jobs.iter().map(|(job, _, _)| *job).collect();
    let done = poll_until("both jobs processed", Duration::from_secs(10), || {
        let all = ledger
            .lock()
            .map(|l| names.iter().all(|job| l.contains_key(*job)))
            .unwrap_or(false);
        async move { all.then_some(()) }
    })
    .await;
    // Both workers have read both jobs (each processed or skipped each).
    let read_all = poll_until(
        "both workers read both jobs",
        Duration::from_secs(10),
        || {
            let all = workers.iter().all(|w| {
                let s = w.consumer.stats().snapshot();
                s.processed + s.skipped.values().sum::<u64>() >= jobs.len() as u64
            });
            async move { all.then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut stats = Vec::new();
    for worker in workers {
        let label = worker.consumer.identity().group_name();
        match worker.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{label}: {e}"),
            Err(_) => bail!("{label}: the consumer thread panicked"),
        }
        stats.push((label, worker.consumer.stats().snapshot()));
    }
    done?;
    read_all?;
    let ledger = ledger
        .lock()
        .map_err(|_| anyhow!("ledger poisoned"))?
        .clone();
    for (job, _, expect) in &jobs {
        let processed_by = ledger.get(*job).cloned().unwrap_or_default().join(" + ");
        demo.report_line(&format!("{job} processed by"), &processed_by, expect);
    }
    println!("  Consumer counters:");
    for (label, s) in stats {
        let skipped: Vec<String> = s
            .skipped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("skipped.{reason}={n}"))
            .collect();
        println!(
            "    {label:<18} processed={} {}",
            s.processed,
            skipped.join(" ")
        );
    }
    println!();
    drop(worker_v2_port);
    Ok(())
}
