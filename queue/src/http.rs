//! The decision over HTTP/JSON, for consumers in other languages: the
//! `sandbox-router-queue` binary serves it beside them (one per host or per
//! pod), holding the table from the control service's Watch stream (or a
//! static one), so a consumer needs no routing code of its own.
//!
//! - `POST /v1/owner` `{"service", "headers": [[name, value], ...]}`: the
//!   message's owner by the table, as the text a consumer records as its
//!   claim (`baseline REASON` or `sandbox KEY ENDPOINTS`). Counts nothing.
//! - `POST /v1/decide` `{"service", "sandbox": NAME or null, "headers",
//!   "claimed": TEXT (optional)}`: `process` or `skip` (with a reason) for
//!   this consumer, by the claim recorded first when `claimed` is given, else
//!   by the table alone. Counted per consumer.
//! - `GET /v1/stats`: every consumer's counters. `GET /healthz`: the table's state.
//!
//! Errors are the control service's: a 4xx (or 503 while it cannot decide
//! yet) with `{"error": {"field", "reason"}}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sandbox_router_routing::consumer::Owner;
use sandbox_router_routing::Settings;
use serde::{Deserialize, Serialize};

use crate::{Consumer, Identity, StatsSnapshot, TableSource, Verdict};

/// Most headers read from one message.
const MAX_HEADERS: usize = 128;
/// Most consumers (service, sandbox) counted by one endpoint: names come from
/// callers, so the map they key must not grow without bound.
const MAX_CONSUMERS: usize = 4096;

/// What the endpoint serves from.
pub struct Decider {
    settings: Settings,
    source: Arc<TableSource>,
    consumers: Mutex<HashMap<Identity, Arc<Consumer>>>,
}

impl Decider {
    pub fn new(settings: Settings, source: TableSource) -> Self {
        Decider {
            settings,
            source: Arc::new(source),
            consumers: Mutex::new(HashMap::new()),
        }
    }

    /// The consumer of this identity, kept (with its counters and its
    /// remembered fork) when `keep`.
    fn consumer(&self, identity: Identity, keep: bool) -> Result<Arc<Consumer>, ApiError> {
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(consumer) = consumers.get(&identity) {
            return Ok(Arc::clone(consumer));
        }
        let consumer = Consumer::new(
            identity.clone(),
            self.settings.clone(),
            Arc::clone(&self.source),
        )
        .map_err(|e| ApiError::invalid(e.field, e.reason))?;
        let consumer = Arc::new(consumer);
        if keep {
            if consumers.len() >= MAX_CONSUMERS {
                return Err(ApiError::invalid(
                    "service",
                    "at most 4096 consumers (service and sandbox) per decision endpoint",
                ));
            }
            consumers.insert(identity, Arc::clone(&consumer));
        }
        Ok(consumer)
    }
}

/// The router: `/v1/owner`, `/v1/decide`, `/v1/stats`, `/healthz`.
pub fn router(decider: Arc<Decider>) -> Router {
    Router::new()
        .route("/v1/owner", post(owner))
        .route("/v1/decide", post(decide))
        .route("/v1/stats", get(stats))
        .route("/healthz", get(health))
        .with_state(decider)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerRequest {
    service: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideRequest {
    service: String,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    claimed: Option<String>,
}

#[derive(Debug, Serialize)]
struct OwnerResponse {
    owner: String,
    table_version: u64,
}

#[derive(Debug, Serialize)]
struct DecideResponse {
    /// `process` or `skip`.
    verdict: &'static str,
    /// Why it is skipped (`sandboxed`, `baseline`, `other_sandbox`, `claimed_elsewhere`).
    reason: Option<&'static str>,
    /// The owner by this table.
    owner: String,
    /// The owner the verdict follows (`claimed`, or `owner`).
    recorded: String,
    table_version: u64,
}

#[derive(Debug, Serialize)]
struct ConsumerStats {
    service: String,
    sandbox: Option<String>,
    #[serde(flatten)]
    stats: StatsSnapshot,
}

#[derive(Debug, Serialize)]
struct Health {
    synced: bool,
    table_version: u64,
}

async fn owner(
    State(decider): State<Arc<Decider>>,
    body: Result<Json<OwnerRequest>, JsonRejection>,
) -> Result<Json<OwnerResponse>, ApiError> {
    let Json(request) = body.map_err(ApiError::from_json)?;
    check_headers(&request.headers)?;
    let consumer = decider.consumer(Identity::baseline(request.service), false)?;
    let table = consumer.table();
    if !table.is_synced() {
        return Err(ApiError::not_ready("table", "no routing table yet"));
    }
    let owner = consumer.owner(pairs(&request.headers), &table);
    Ok(Json(OwnerResponse {
        owner: owner.claim_text(),
        table_version: table.version(),
    }))
}

async fn decide(
    State(decider): State<Arc<Decider>>,
    body: Result<Json<DecideRequest>, JsonRejection>,
) -> Result<Json<DecideResponse>, ApiError> {
    let Json(request) = body.map_err(ApiError::from_json)?;
    check_headers(&request.headers)?;
    let claimed = match &request.claimed {
        Some(text) => Some(Owner::from_claim_text(text).ok_or_else(|| {
            ApiError::invalid(
                "claimed",
                "must be an owner as /v1/owner gives it: \"baseline REASON\" or \"sandbox KEY IP:PORT,...\"",
            )
        })?),
        None => None,
    };
    let identity = Identity {
        service: request.service,
        sandbox: request.sandbox,
    };
    let consumer = decider.consumer(identity, true)?;
    let table = consumer.table();
    consumer.readiness(&table).map_err(|why| {
        let field = if table.is_synced() {
            "sandbox"
        } else {
            "table"
        };
        ApiError::not_ready(field, why)
    })?;
    let owner = consumer.owner(pairs(&request.headers), &table);
    let recorded = claimed.unwrap_or_else(|| owner.clone());
    let decision = consumer.settle(owner, recorded, &table);
    consumer.count(&decision);
    let (verdict, reason) = match decision.verdict {
        Verdict::Process => ("process", None),
        Verdict::Skip(reason) => ("skip", Some(reason.as_str())),
    };
    Ok(Json(DecideResponse {
        verdict,
        reason,
        owner: decision.owner.claim_text(),
        recorded: decision.recorded.claim_text(),
        table_version: decision.table_version,
    }))
}

/// A request's headers as the consumer reads them.
fn pairs(headers: &[(String, String)]) -> impl Iterator<Item = (&str, &[u8])> {
    headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))
}

async fn stats(State(decider): State<Arc<Decider>>) -> Json<Vec<ConsumerStats>> {
    let consumers = decider.consumers.lock().unwrap_or_else(|e| e.into_inner());
    let mut all: Vec<ConsumerStats> = consumers
        .values()
        .map(|c| ConsumerStats {
            service: c.identity().service.clone(),
            sandbox: c.identity().sandbox.clone(),
            stats: c.stats().snapshot(),
        })
        .collect();
    all.sort_by(|a, b| (&a.service, &a.sandbox).cmp(&(&b.service, &b.sandbox)));
    Json(all)
}

async fn health(State(decider): State<Arc<Decider>>) -> Json<Health> {
    let table = decider.source.snapshot();
    Json(Health {
        synced: table.is_synced(),
        table_version: table.version(),
    })
}

fn check_headers(headers: &[(String, String)]) -> Result<(), ApiError> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::invalid("headers", "at most 128 headers"));
    }
    Ok(())
}

/// An error answer: status, and `{"error": {"field", "reason"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    field: String,
    reason: String,
}

impl ApiError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn not_ready(field: &str, reason: &str) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            field: field.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn from_json(rejection: JsonRejection) -> Self {
        let status = match rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError {
            status,
            field: String::from("body"),
            reason: rejection.body_text(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    field: &'a str,
    reason: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                field: &self.field,
                reason: &self.reason,
            },
        };
        (self.status, Json(body)).into_response()
    }
}
