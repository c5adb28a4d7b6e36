//! A consumer of a Redis stream, one consumer group per consumer.
//!
//! A message is a stream entry; its fields are its headers (`baggage`,
//! `traceparent`, `uberctx-...`) and whatever else the producer puts there
//! (the payload, under a field of its own). Each consumer, baseline or
//! sandboxed, reads every entry through its own group
//! ([`Identity::group_name`]: `worker.baseline`, `worker.worker-v2`),
//! decides it ([`Consumer::decide`]), calls the handler for the ones it
//! processes, and acknowledges (`XACK`) every entry it processed or skipped.
//!
//! Delivery is at least once, as Redis consumer groups give it: an entry
//! whose handler failed, or whose consumer stopped before `XACK`, stays in
//! the group's pending list and is read again first (after an error, and on
//! the next start). Claims are kept in Redis beside the stream
//! ([`RedisClaims`]), so a message read again is decided the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, Value};

use crate::{Claims, Consumer, DecideError, Decision, HandleError};

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `redis://HOST:PORT` or `unix:///path/to/redis.sock`.
    pub url: String,
    /// The stream (the topic).
    pub stream: String,
    /// The consumer group; default: the identity's [`crate::Identity::group_name`].
    pub group: Option<String>,
    /// This consumer's name within its group (one per process).
    pub consumer_name: String,
    /// Entries read per call.
    pub batch: usize,
    /// How long one read waits for new entries.
    pub block: Duration,
    /// How long a claim (the first decision about a message) is kept.
    pub claim_ttl: Duration,
    /// A new group reads the stream from its start (`0`) instead of only
    /// entries added after it is created (`$`).
    pub from_start: bool,
}

impl StreamConfig {
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> Self {
        StreamConfig {
            url: url.into(),
            stream: stream.into(),
            group: None,
            consumer_name: String::from("consumer-1"),
            batch: 32,
            block: Duration::from_millis(500),
            claim_ttl: Duration::from_secs(24 * 3600),
            from_start: false,
        }
    }
}

/// One stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The entry id, e.g. `1733130000000-0`.
    pub id: String,
    /// Field names and values, in order (a name may repeat).
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Message {
    /// The first value of field `name` (exact name).
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// What happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub id: String,
    pub decision: Decision,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError<E: std::error::Error + 'static> {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// An answer that is not what Redis sends for the command.
    #[error("unexpected reply to {0}")]
    Protocol(&'static str),
    /// The handler failed: the entry is not acknowledged, and is read again
    /// first by the next [`StreamConsumer::poll`].
    #[error("handler failed on {id}: {error}")]
    Handler {
        id: String,
        #[source]
        error: E,
    },
}

/// Claims in Redis: `SET PREFIX:STREAM:SERVICE:ID OWNER NX GET EX TTL`
/// (Redis 7.0 or later), shared by every consumer of the service.
pub struct RedisClaims<'c> {
    con: &'c mut Connection,
    prefix: String,
    ttl_seconds: u64,
}

impl<'c> RedisClaims<'c> {
    pub fn new(con: &'c mut Connection, stream: &str, service: &str, ttl: Duration) -> Self {
        RedisClaims {
            con,
            prefix: claim_prefix(stream, service),
            ttl_seconds: ttl.as_secs().max(1),
        }
    }
}

/// The key prefix of a stream's claims for one service.
pub fn claim_prefix(stream: &str, service: &str) -> String {
    format!("sandbox-router:claim:{stream}:{service}:")
}

impl Claims for RedisClaims<'_> {
    type Error = RedisError;

    fn claim(&mut self, message_id: &str, owner: &str) -> Result<String, RedisError> {
        let previous: Option<String> = redis::cmd("SET")
            .arg(format!("{}{message_id}", self.prefix))
            .arg(owner)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(self.ttl_seconds)
            .query(self.con)?;
        Ok(previous.unwrap_or_else(|| owner.to_owned()))
    }
}

/// A consumer of one stream through its own consumer group.
pub struct StreamConsumer {
    con: Connection,
    config: StreamConfig,
    group: String,
    consumer: Arc<Consumer>,
    /// Read the group's pending entries (this consumer's, not acknowledged) next.
    pending_first: bool,
}

impl StreamConsumer {
    /// Connects and creates the consumer group if it does not exist.
    pub fn connect(config: StreamConfig, consumer: Arc<Consumer>) -> Result<Self, RedisError> {
        let mut con = redis::Client::open(config.url.as_str())?.get_connection()?;
        let group = config
            .group
            .clone()
            .unwrap_or_else(|| consumer.identity().group_name());
        let created: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&config.stream)
            .arg(&group)
            .arg(if config.from_start { "0" } else { "$" })
            .arg("MKSTREAM")
            .query(&mut con);
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        Ok(StreamConsumer {
            con,
            config,
            group,
            consumer,
            pending_first: true,
        })
    }

    pub fn consumer(&self) -> &Arc<Consumer> {
        &self.consumer
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Reads up to `batch` entries (this consumer's pending ones first after
    /// a start or a failed handler), decides each, calls `handler` on those
    /// to process, and acknowledges each processed or skipped one. Before the
    /// consumer is ready (no table yet, see [`DecideError::NotReady`]) it
    /// reads nothing: it waits up to `block` and returns an empty list.
    pub fn poll<E, F>(&mut self, mut handler: F) -> Result<Vec<Handled>, StreamError<E>>
    where
        E: std::error::Error + 'static,
        F: FnMut(&Message, &Decision) -> Result<(), E>,
    {
        if !self.consumer.wait_ready(self.config.block) {
            return Ok(Vec::new());
        }
        let pending = self.pending_first;
        let messages = self.read(if pending { "0" } else { ">" })?;
        if pending && messages.is_empty() {
            self.pending_first = false;
            return Ok(Vec::new());
        }
        let mut handled = Vec::with_capacity(messages.len());
        let service = self.consumer.identity().service.clone();
        for message in messages {
            let headers = message
                .fields
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()));
            let mut claims = RedisClaims::new(
                &mut self.con,
                &self.config.stream,
                &service,
                self.config.claim_ttl,
            );
            let processed = |decision: &Decision| handler(&message, decision);
            let decision = match self
                .consumer
                .handle(&message.id, headers, &mut claims, processed)
            {
                Ok(decision) => decision,
                Err(HandleError::Decide(DecideError::Claim(e))) => {
                    return Err(StreamError::Redis(e))
                }
                // Lost its table between the check above and now (cannot
                // happen once ready: the table is kept): read it again later.
                Err(HandleError::Decide(DecideError::NotReady(_))) => {
                    self.pending_first = true;
                    return Ok(handled);
                }
                Err(HandleError::Process(error)) => {
                    self.pending_first = true;
                    return Err(StreamError::Handler {
                        id: message.id,
                        error,
                    });
                }
            };
            let _: Value = redis::cmd("XACK")
                .arg(&self.config.stream)
                .arg(&self.group)
                .arg(&message.id)
                .query(&mut self.con)?;
            handled.push(Handled {
                id: message.id,
                decision,
            });
        }
        Ok(handled)
    }

    /// Polls until `stop` returns true; for a consumer's main loop.
    pub fn run<E, F>(
        &mut self,
        mut handler: F,
        mut stop: impl FnMut() -> bool,
    ) -> Result<(), StreamError<E>>
    where
        E: std::error::Error + 'static,
        F: FnMut(&Message, &Decision) -> Result<(), E>,
    {
        while !stop() {
            self.poll(&mut handler)?;
        }
        Ok(())
    }

    fn read<E: std::error::Error + 'static>(
        &mut self,
        id: &str,
    ) -> Result<Vec<Message>, StreamError<E>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.config.consumer_name)
            .arg("COUNT")
            .arg(self.config.batch.max(1));
        if id == ">" {
            cmd.arg("BLOCK")
                .arg(self.config.block.as_millis().max(1) as u64);
        }
        let reply: Value = cmd
            .arg("STREAMS")
            .arg(&self.config.stream)
            .arg(id)
            .query(&mut self.con)?;
        parse_read_reply(reply).ok_or(StreamError::Protocol("XREADGROUP"))
    }
}

/// Appends an entry (`XADD STREAM * FIELD VALUE ...`); returns its id.
pub fn publish(
    con: &mut Connection,
    stream: &str,
    fields: &[(&str, &[u8])],
) -> Result<String, RedisError> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    cmd.query(con)
}

/// `XREADGROUP`'s reply (RESP2 arrays or RESP3 maps) as messages. An entry
/// whose fields are gone (deleted while pending) comes with none.
fn parse_read_reply(reply: Value) -> Option<Vec<Message>> {
    let streams: Vec<Value> = match reply {
        Value::Nil => return Some(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect::<Option<_>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return None,
    };
    let mut messages = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            return None;
        };
        for entry in entries {
            let Value::Array(entry) = entry else {
                return None;
            };
            let mut entry = entry.into_iter();
            let id = text(entry.next()?)?;
            let fields = match entry.next() {
                Some(Value::Array(flat)) => {
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let Some(name) = flat.next() {
                        let value = bytes(flat.next()?)?;
                        fields.push((text(name)?, value));
                    }
                    fields
                }
                Some(Value::Map(pairs)) => pairs
                    .into_iter()
                    .map(|(n, v)| Some((text(n)?, bytes(v)?)))
                    .collect::<Option<_>>()?,
                Some(Value::Nil) | None => Vec::new(),
                Some(_) => return None,
            };
            messages.push(Message { id, fields });
        }
    }
    Some(messages)
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn text(value: Value) -> Option<String> {
    String::from_utf8(bytes(value)?).ok()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_keep_field_order_and_repeats() {
        let entry = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![
                bulk("baggage"),
                bulk("a=1"),
                bulk("baggage"),
                bulk("b=2"),
                bulk("payload"),
                bulk("x"),
            ]),
        ]);
        let gone = Value::Array(vec![bulk("2-0"), Value::Nil]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("jobs"),
            Value::Array(vec![entry, gone]),
        ])]);
        let messages = parse_read_reply(reply).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].id, "1-0");
        assert_eq!(
            messages[0].fields,
            [
                ("baggage".to_owned(), b"a=1".to_vec()),
                ("baggage".to_owned(), b"b=2".to_vec()),
                ("payload".to_owned(), b"x".to_vec()),
            ]
        );
        assert_eq!(messages[0].field("payload"), Some(&b"x"[..]));
        assert!(messages[1].fields.is_empty());
        assert_eq!(parse_read_reply(Value::Nil), Some(Vec::new()));
        assert_eq!(parse_read_reply(Value::Int(1)), None);
        let odd = Value::Array(vec![Value::Array(vec![
            bulk("jobs"),
            Value::Array(vec![Value::Array(vec![
                bulk("3-0"),
                Value::Array(vec![bulk("lonely")]),
            ])]),
        ])]);
        assert_eq!(parse_read_reply(odd), None);
    }
}
