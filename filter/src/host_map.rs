//! The request's header map in one host call, without the SDK's per-header
//! copies: the host's buffer is kept and read in place by
//! `sandbox_router_routing::header_map`. The only `unsafe` in the filter.

#![allow(unsafe_code)]

use std::ptr::null_mut;

use proxy_wasm::types::{MapType, Status};

#[link(wasm_import_module = "env")]
extern "C" {
    // The proxy-wasm ABI (0.2.1) call the SDK's `get_map_bytes` makes too.
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// The serialized request header map; empty if the host has none or fails.
pub fn request_headers() -> Vec<u8> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a length to the two locations,
    // both valid for writes for the duration of the call.
    let status =
        unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
    if status != Status::Ok || data.is_null() {
        return Vec::new();
    }
    // SAFETY: `data` was allocated in this VM by the SDK's exported
    // `proxy_on_memory_allocate(size)` (a boxed slice of exactly `size`
    // bytes, which the host filled) and ownership passes to us: the same
    // hand-over the SDK's own `get_map_bytes` does.
    unsafe { Vec::from_raw_parts(data, size, size) }
}
