//! The native floor of the benchmarks (`module-noop`): an Envoy 1.40 dynamic
//! module (`envoy.filters.http.dynamic_modules`, ABI v0.2.0) whose HTTP
//! filter does nothing per request. What a request costs with it, over plain
//! Envoy, is what any native module costs: Envoy's dynamic-module filter, its
//! per-stream object, and a call into the module for each of the stream's
//! events. sandbox-router's native module minus this is its own work.
//!
//! Two more configurations tell Envoy's side of reading headers from a
//! module's own work (`bench/callgrind.py`, variants `module-get-headers` and
//! `module-get-all-headers`):
//! - `get-headers NAME,NAME,...`: reads each named request header once, in
//!   place (one `get_header` call each), as sandbox-router's module does for
//!   the names its configuration can need;
//! - `get-all-headers`: gets every request header in one call, as pointers
//!   into Envoy's map (`get_headers_size`, then `get_headers` into an array
//!   on the stack): no copy of a name or value either.
//!
//! Why a crate of its own and not a mode of `sandbox-router-envoy-module`:
//! the floor must run none of sandbox-router's code (a mode inside it would
//! still parse its configuration and pass its hooks), and the benchmarks must
//! not add a no-op path to the shipped module. It is the minimum Envoy loads:
//! the required hooks, two callbacks, nothing else (`/tmp/dm-abi-notes.md`
//! and `../shared/ENVOY-FACTS.md` record the signatures checked on Envoy
//! 1.40.0). All its `unsafe` is here, each with its SAFETY comment; no hook
//! can panic (no unwrap, no indexing, no allocation per request).

use std::ffi::{c_char, c_void};
use std::ptr::null;

/// `envoy_dynamic_module_type_envoy_buffer` / `_module_buffer`: `{ptr, length}`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const u8,
    length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header` (in hook signatures only).
#[repr(C)]
pub struct EnvoyHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
/// Every `*_status_Continue`.
const CONTINUE: u32 = 0;

extern "C" {
    /// One value of a header, in place (`index` 0: the first); `count`: how many it has.
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        header_type: u32,
        key: Buffer,
        result: *mut Buffer,
        index: usize,
        count: *mut usize,
    ) -> bool;
    /// How many headers the map has (every value counted).
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: u32,
    ) -> usize;
    /// Every header as pointers into the map; `result` has room for get_headers_size.
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        result: *mut EnvoyHttpHeader,
    ) -> bool;
}

/// One filter configuration: what to read per request (nothing: a pure no-op).
struct Config {
    names: Vec<Vec<u8>>,
    all: bool,
}

/// The most headers `get-all-headers` reads (a larger map is skipped).
const MAX_HEADERS: usize = 64;

impl Config {
    fn parse(text: &[u8]) -> Option<Config> {
        let text = std::str::from_utf8(text).ok()?.trim();
        if text == "get-all-headers" {
            return Some(Config {
                names: Vec::new(),
                all: true,
            });
        }
        let names = match text.strip_prefix("get-headers") {
            Some(list) => list
                .split(',')
                .map(|n| n.trim().to_ascii_lowercase().into_bytes())
                .filter(|n| !n.is_empty())
                .collect(),
            None if text.is_empty() => Vec::new(),
            // Unknown configuration: refused.
            None => return None,
        };
        Some(Config { names, all: false })
    }
}

/// The ABI version of Envoy 1.40.0.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    c"v0.2.0".as_ptr()
}

/// # Safety
/// Envoy passes buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy_ptr: *mut c_void,
    _name: Buffer,
    config: Buffer,
) -> *const c_void {
    let text: &[u8] = if config.ptr.is_null() || config.length == 0 {
        &[]
    } else {
        // SAFETY: Envoy's configuration bytes, valid for this call.
        unsafe { std::slice::from_raw_parts(config.ptr, config.length) }
    };
    match Config::parse(text) {
        Some(config) => Box::into_raw(Box::new(config)).cast_const().cast(),
        None => null(),
    }
}

/// # Safety
/// `config` is what config_new returned, destroyed once after its last stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if !config.is_null() {
        // SAFETY: the Box config_new leaked, taken back once.
        drop(unsafe { Box::from_raw(config.cast::<Config>().cast_mut()) });
    }
}

/// No state per stream: the stream's pointer is the configuration's.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    config
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_: *const c_void) {}

/// # Safety
/// Envoy's stream pointer (valid inside this hook) and what filter_new returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: *mut c_void,
    config: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    if config.is_null() {
        return CONTINUE;
    }
    // SAFETY: a live configuration (Envoy destroys it after its last stream).
    let config = unsafe { &*config.cast::<Config>() };
    for name in &config.names {
        let mut value = Buffer {
            ptr: null(),
            length: 0,
        };
        let mut count = 0usize;
        let key = Buffer {
            ptr: name.as_ptr(),
            length: name.len(),
        };
        // SAFETY: `filter` is valid inside this hook; `key` is lent for the
        // call; `value` and `count` are writable. The value is not read.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                filter,
                REQUEST_HEADER,
                key,
                &mut value,
                0,
                &mut count,
            )
        };
        std::hint::black_box((found, value.length, count));
    }
    if config.all {
        // SAFETY: `filter` is valid inside this hook.
        let size =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(filter, REQUEST_HEADER) };
        if size <= MAX_HEADERS {
            let mut headers = std::mem::MaybeUninit::<[EnvoyHttpHeader; MAX_HEADERS]>::uninit();
            // SAFETY: `filter` is valid inside this hook; the array has room
            // for `size` headers, which Envoy writes (pointers into its map,
            // not read here).
            let ok = unsafe {
                envoy_dynamic_module_callback_http_get_headers(
                    filter,
                    REQUEST_HEADER,
                    headers.as_mut_ptr().cast::<EnvoyHttpHeader>(),
                )
            };
            std::hint::black_box((ok, &headers));
        }
    }
    CONTINUE
}

// The other hooks Envoy 1.40 requires: nothing to do.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _: *mut c_void,
    _: *const c_void,
    _: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _: *mut c_void,
    _: *const c_void,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _: *mut c_void,
    _: *const c_void,
    _: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _: *mut c_void,
    _: *const c_void,
    _: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _: *mut c_void,
    _: *const c_void,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _: *mut c_void,
    _: *const c_void,
) {
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: *mut c_void,
    _: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut Buffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
    _data: *const Buffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
    _trailers: *mut EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _: *mut c_void,
    _: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _: *mut c_void,
    _: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}
