//! The gRPC side of the echo services (`proto/echo/v1/echo.proto`): every
//! [`crate::EchoService`] also answers `sandbox_router.echo.v1.Echo` on its
//! port (h2c), with who it is, the HTTP version and the metadata its request
//! arrived with. Given a next hop, it first calls that service's `Echo`
//! through its sidecar, passing the tracing context (baggage etc.) on in the
//! call's metadata, as an instrumented gRPC application does.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_stream::Stream;
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
pub use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Response, Status};

use crate::echo::is_propagated;
use crate::NextHop;

/// Generated code for `sandbox_router.echo.v1`.
pub mod proto {
    #![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    include!(concat!(env!("OUT_DIR"), "/sandbox_router.echo.v1.rs"));
}

use proto::echo_client::EchoClient;
use proto::echo_server::{Echo, EchoServer};
use proto::{CountRequest, EchoAnswer, Fail, SayRequest};

impl EchoAnswer {
    /// `service/version`, followed by ` -> ` and the next hop's, if any (as
    /// [`crate::EchoReply::chain`]).
    pub fn chain(&self) -> String {
        let mut text = format!("{}/{}", self.service, self.version);
        if let Some(next) = &self.downstream {
            text.push_str(" -> ");
            text.push_str(&next.chain());
        }
        text
    }
}

/// A client of the echo service `authority` (the call's `:authority`, what
/// Envoy routes by), over h2c to `via`: a sidecar's listener
/// (`http://127.0.0.1:PORT`) or the service itself. Connects on first use.
pub fn grpc_client(via: &str, authority: &str) -> Result<EchoClient<Channel>> {
    let origin = format!("http://{authority}")
        .parse()
        .with_context(|| format!("{authority:?} as an authority"))?;
    let channel = Endpoint::from_shared(via.to_owned())
        .with_context(|| format!("{via:?} as a URL"))?
        .origin(origin)
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(EchoClient::new(channel))
}

/// A call with `message` and these metadata lines (values as bytes; a name
/// given twice is sent twice).
pub fn request<T>(message: T, metadata: &[(&str, &[u8])]) -> Result<Request<T>> {
    let mut request = Request::new(message);
    for (name, value) in metadata {
        request.metadata_mut().append(
            MetadataKey::from_bytes(name.as_bytes())
                .with_context(|| format!("{name:?} as a metadata key"))?,
            MetadataValue::try_from(*value)
                .with_context(|| format!("the value of {name} as ASCII metadata"))?,
        );
    }
    Ok(request)
}

/// `Say` with these metadata lines: the answer, or the call's status.
pub async fn say(client: &EchoClient<Channel>, metadata: &[(&str, &[u8])]) -> Result<EchoAnswer> {
    let call = request(SayRequest::default(), metadata)?;
    Ok(client.clone().say(call).await?.into_inner())
}

/// `Count` of `count` answers with these metadata lines: every answer, or the
/// status the call or the stream ended with.
pub async fn count(
    client: &EchoClient<Channel>,
    metadata: &[(&str, &[u8])],
    count: u32,
) -> Result<Vec<EchoAnswer>> {
    let call = request(CountRequest { count, fail: None }, metadata)?;
    let mut stream = client.clone().count(call).await?.into_inner();
    let mut answers = Vec::new();
    while let Some(answer) = stream.message().await? {
        answers.push(answer);
    }
    Ok(answers)
}

/// Copies the tracing context of `incoming` into an outgoing call's metadata.
pub fn propagate(incoming: &MetadataMap, outgoing: &mut MetadataMap) {
    for entry in incoming.iter() {
        if let KeyAndValueRef::Ascii(key, value) = entry {
            if is_propagated(key.as_str()) {
                outgoing.append(key.clone(), value.clone());
            }
        }
    }
}

/// Trailing metadata naming `service/version` of the echo service that
/// answered with a non-OK status (a [`Fail`]).
pub const SERVED_BY: &str = "x-echo-served-by";

/// The HTTP version a request arrived with, recorded by [`record_version`].
#[derive(Debug, Clone, Copy)]
struct HttpVersion(axum::http::Version);

async fn record_version(mut request: axum::extract::Request) -> axum::extract::Request {
    let version = request.version();
    request.extensions_mut().insert(HttpVersion(version));
    request
}

#[derive(Clone)]
pub(crate) struct GrpcEcho {
    service: String,
    version: String,
    addr: String,
    next: Option<EchoClient<Channel>>,
}

impl GrpcEcho {
    pub(crate) fn new(
        service: &str,
        version: &str,
        addr: &str,
        next: Option<&NextHop>,
    ) -> Result<GrpcEcho> {
        Ok(GrpcEcho {
            service: service.to_owned(),
            version: version.to_owned(),
            addr: addr.to_owned(),
            next: next
                .map(|next| grpc_client(&next.via, &next.host))
                .transpose()?,
        })
    }

    /// The service's routes (`/sandbox_router.echo.v1.Echo/*`), to merge
    /// into the echo service's HTTP router.
    pub(crate) fn router(self) -> axum::Router {
        tonic::service::Routes::new(EchoServer::new(self))
            .into_axum_router()
            .layer(axum::middleware::map_request(record_version))
    }

    fn served_by(&self) -> String {
        format!("{}/{}", self.service, self.version)
    }

    fn answer<T>(
        &self,
        request: &Request<T>,
        text: String,
        index: u32,
        downstream: Option<EchoAnswer>,
    ) -> EchoAnswer {
        let http_version = request
            .extensions()
            .get::<HttpVersion>()
            .map(|v| format!("{:?}", v.0))
            .unwrap_or_default();
        EchoAnswer {
            service: self.service.clone(),
            version: self.version.clone(),
            addr: self.addr.clone(),
            http_version,
            metadata: seen(request.metadata()),
            text,
            index,
            downstream: downstream.map(Box::new),
        }
    }
}

/// Request metadata as an echo answer shows it: ASCII values, repeated keys
/// joined by `, ` (as the HTTP echo shows headers).
fn seen(metadata: &MetadataMap) -> BTreeMap<String, String> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for entry in metadata.iter() {
        if let KeyAndValueRef::Ascii(key, value) = entry {
            let value = String::from_utf8_lossy(value.as_encoded_bytes()).into_owned();
            seen.entry(key.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
    }
    seen
}

/// The status a [`Fail`] asks for, its trailers as custom metadata, plus
/// [`SERVED_BY`]: `service/version` of the instance that failed.
fn failure(fail: Fail, served_by: &str) -> Status {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(served_by) {
        metadata.insert(SERVED_BY, value);
    }
    for (key, value) in &fail.trailers {
        let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) else {
            return Status::invalid_argument(format!("bad trailer {key}: {value}"));
        };
        metadata.append(key, value);
    }
    Status::with_metadata(Code::from_i32(fail.code), fail.message, metadata)
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<EchoAnswer, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for GrpcEcho {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<EchoAnswer>, Status> {
        let downstream = match &self.next {
            Some(next) => {
                let mut call = Request::new(SayRequest {
                    text: request.get_ref().text.clone(),
                    fail: None,
                });
                propagate(request.metadata(), call.metadata_mut());
                // A failed next hop's status (code, message, metadata) is the answer.
                Some(next.clone().say(call).await?.into_inner())
            }
            None => None,
        };
        if let Some(fail) = request.get_ref().fail.clone() {
            return Err(failure(fail, &self.served_by()));
        }
        let text = request.get_ref().text.clone();
        Ok(Response::new(self.answer(&request, text, 0, downstream)))
    }

    type CountStream = AnswerStream;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<AnswerStream>, Status> {
        let count = request.get_ref().count;
        let mut downstream = Vec::new();
        if let Some(next) = &self.next {
            let mut call = Request::new(CountRequest { count, fail: None });
            propagate(request.metadata(), call.metadata_mut());
            let mut stream = next.clone().count(call).await?.into_inner();
            while let Some(answer) = stream.message().await? {
                downstream.push(answer);
            }
        }
        let mut downstream = downstream.into_iter();
        let mut answers: Vec<Result<EchoAnswer, Status>> = (0..count)
            .map(|index| Ok(self.answer(&request, index.to_string(), index, downstream.next())))
            .collect();
        if let Some(fail) = request.get_ref().fail.clone() {
            answers.push(Err(failure(fail, &self.served_by())));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(answers))))
    }
}
