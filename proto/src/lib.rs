//! Protobuf messages of sandbox-router, generated from `proto/` at build time.

#![forbid(unsafe_code)]

/// `sandbox_router.v1`: overrides and the routing table.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/sandbox_router.v1.rs"));
}

/// `lightstep`: the OpenTracing binary carrier of `x-ot-span-context`.
pub mod lightstep {
    include!(concat!(env!("OUT_DIR"), "/lightstep.rs"));
}

pub use prost::Message;
