//! A tiny HTTP service standing in for one version of one service: it answers
//! every request with who it is and the headers it received, so a test can
//! see where a request landed and what reached the upstream.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Result;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// What an echo service answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    pub service: String,
    /// `baseline`, or the sandbox's name.
    pub version: String,
    /// The address this instance listens on (tells a fork's endpoints apart).
    pub addr: String,
    /// Request headers as received (lossy UTF-8; repeated names joined by `, `).
    pub headers: BTreeMap<String, String>,
}

pub struct EchoService {
    pub service: String,
    pub version: String,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Identity {
    service: String,
    version: String,
    addr: String,
}

impl EchoService {
    /// Serves on a free loopback port until dropped.
    pub async fn start(service: &str, version: &str) -> Result<EchoService> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let identity = Identity {
            service: service.to_owned(),
            version: version.to_owned(),
            addr: addr.to_string(),
        };
        let app = axum::Router::new().fallback(answer).with_state(identity);
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(EchoService {
            service: service.to_owned(),
            version: version.to_owned(),
            addr,
            shutdown: Some(tx),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn answer(State(identity): State<Identity>, headers: HeaderMap) -> Json<EchoReply> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        seen.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    Json(EchoReply {
        service: identity.service,
        version: identity.version,
        addr: identity.addr,
        headers: seen,
    })
}
