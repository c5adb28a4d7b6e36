//! The Watch call's codec: tonic's prost encoding for what the watch sends,
//! and a decoder that hands each update over still encoded.
//!
//! tonic's `ProstCodec` turns an undecodable message into an error that ends
//! the stream. The Wasm singleton instead refuses that one update (counted,
//! answered with its error) and keeps the stream, so the native module must
//! too: the code that applies updates decodes them
//! ([`crate::Table::apply_encoded`]), and an undecodable one is one more
//! refused update. It also decodes a snapshot one entry at a time.

use bytes::{Buf, Bytes};
use sandbox_router_proto::v1::WatchRequest;
use sandbox_router_routing::sync::{WATCH_METHOD, WATCH_SERVICE};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;
use tonic_prost::ProstEncoder;

/// One message of the stream: an encoded `TableUpdate`, not yet decoded.
pub(crate) type Received = Bytes;

/// The gRPC path of `RoutingTableService.Watch`.
pub(crate) fn watch_path() -> PathAndQuery {
    // Both halves are constant protocol names: always a valid path.
    PathAndQuery::from_maybe_shared(format!("/{WATCH_SERVICE}/{WATCH_METHOD}"))
        .unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchRequest;
    type Decode = Received;
    type Encoder = ProstEncoder<WatchRequest>;
    type Decoder = UpdateDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        UpdateDecoder
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UpdateDecoder;

impl Decoder for UpdateDecoder {
    type Item = Received;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Received>, Status> {
        // The whole message is taken, so a decode that stops early leaves
        // nothing behind to be read as the next message's frame.
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_path_is_the_services_watch_method() {
        assert_eq!(
            watch_path().as_str(),
            "/sandbox_router.v1.RoutingTableService/Watch"
        );
    }
}
