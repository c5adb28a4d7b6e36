//! The complete consumer of docs/message-queues.md (keep the two the same).

use std::sync::Arc;

use sandbox_router_queue::redis_streams::{Message, StreamConfig, StreamConsumer};
use sandbox_router_queue::{Consumer, Decision, Identity, TableSource};
use sandbox_router_routing::Settings;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Who this process is: the `worker` service, in a sandbox (SANDBOX=worker-v2) or the baseline.
    let identity = match std::env::var("SANDBOX") {
        Ok(sandbox) => Identity::sandboxed("worker", sandbox),
        Err(_) => Identity::baseline("worker"),
    };
    // The routing table from the control service's Watch stream (last-known-good while it is away).
    let source = TableSource::watch("http://sandbox-router:7070", "worker-1")?;
    // The context part of the filter configuration the mesh uses (here the defaults).
    let consumer = Arc::new(Consumer::new(identity, Settings::from_json(b"")?, source)?);

    // One consumer group per consumer: worker.baseline, worker.worker-v2.
    let mut config = StreamConfig::new("redis://redis:6379", "jobs");
    config.consumer_name = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker-1".into());
    let mut stream = StreamConsumer::connect(config, Arc::clone(&consumer))?;
    loop {
        // Only the messages for this side reach the handler; every message is acknowledged.
        let handled = stream.poll(|message: &Message, decision: &Decision| {
            let payload = message.field("payload").unwrap_or_default();
            let side = &decision.recorded;
            println!(
                "processing {}: {} bytes, for {side:?}",
                message.id,
                payload.len()
            );
            Ok::<(), std::io::Error>(())
        });
        if let Err(e) = handled {
            // A failed handler leaves its message pending: it is read again first.
            eprintln!("{e}");
        }
    }
}
