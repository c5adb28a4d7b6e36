//! The C ABI of Envoy's dynamic modules (ABI v0.2.0, Envoy 1.40), declared by
//! hand (the official Rust SDK is not on crates.io): the hooks Envoy calls,
//! the callbacks the module calls, and safe wrappers around both. The only
//! `unsafe` code of the crate is in this file.
//!
//! Rules the wrappers keep (each `SAFETY` comment says which applies):
//! - Envoy's pointers: `filter_envoy_ptr` is valid from `filter_new` until
//!   `filter_destroy`, and only on that stream's worker thread, inside a hook;
//!   `filter_config_envoy_ptr` from `config_new` until `config_destroy`
//!   returns (main thread). [`Stream`] lives only inside one hook call.
//! - A buffer Envoy returns points into its header map and is valid until the
//!   hook returns or any setter is called: [`Stream`]'s getters borrow the
//!   stream (`&self`) and its setters need `&mut self`, so the borrow checker
//!   ends every borrowed value before the map can change.
//! - A panic must never cross into Envoy (it would abort the whole proxy):
//!   every hook that runs module code runs it under `catch_unwind` and fails
//!   safe. The release profile keeps `panic = "unwind"`.
//! - The module's pointers handed to Envoy are `Box::into_raw` results,
//!   turned back into a `Box` exactly once, by the matching `destroy` hook.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{null, NonNull};

use smallvec::SmallVec;

use crate::filter::{self, RequestHost};
use crate::Module;

/// The ABI version the module was written against: Envoy 1.40.0's. Envoy
/// 1.40 logs whether it matches its own and loads the module either way;
/// only a null version refuses it (docs/native-module.md, "Supported Envoy
/// versions and the ABI").
pub const ABI_VERSION: &CStr = c"v0.2.0";

// ---------------------------------------------------------------- ABI types

/// `envoy_dynamic_module_type_envoy_buffer`: bytes Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

impl EnvoyBuffer {
    const NULL: EnvoyBuffer = EnvoyBuffer {
        ptr: null(),
        length: 0,
    };

    /// # Safety
    /// `ptr` must be valid for `length` bytes for `'a` (or be NULL).
    unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            &[]
        } else {
            // SAFETY: the caller's contract.
            unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
        }
    }
}

/// `envoy_dynamic_module_type_module_buffer`: bytes the module owns, lent for one call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

/// NULL: "no value" (`set_header` removes the header).
const NO_VALUE: ModuleBuffer = ModuleBuffer {
    ptr: null(),
    length: 0,
};

fn lend(bytes: &[u8]) -> ModuleBuffer {
    ModuleBuffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`: one header, as pointers
/// into Envoy's map.
#[repr(C)]
pub struct EnvoyHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl EnvoyHttpHeader {
    /// # Safety
    /// Both pointers must be valid for their lengths for `'a` (or be NULL).
    unsafe fn as_pair<'a>(&self) -> (&'a [u8], &'a [u8]) {
        let key = EnvoyBuffer {
            ptr: self.key_ptr,
            length: self.key_length,
        };
        let value = EnvoyBuffer {
            ptr: self.value_ptr,
            length: self.value_length,
        };
        // SAFETY: the caller's contract.
        unsafe { (key.as_slice(), value.as_slice()) }
    }
}

// C enums are 32-bit.
const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;
/// Every `*_status_Continue`.
const CONTINUE: u32 = 0;
const METRICS_SUCCESS: u32 = 0;

// ---------------------------------------------------------------- callbacks

/// The callbacks Envoy exports (resolved when Envoy loads the module; the
/// unit tests link a fake Envoy instead, see `fake` below).
mod envoy {
    #[cfg(test)]
    pub use super::fake::*;

    #[cfg(not(test))]
    use super::{EnvoyBuffer, EnvoyHttpHeader, ModuleBuffer};
    #[cfg(not(test))]
    use std::ffi::c_void;

    #[cfg(not(test))]
    extern "C" {
        pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
        pub fn envoy_dynamic_module_callback_is_validation_mode() -> bool;
        pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
            config: *mut c_void,
            name: ModuleBuffer,
            label_names: *const ModuleBuffer,
            label_names_length: usize,
            id_out: *mut usize,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
            config: *mut c_void,
            name: ModuleBuffer,
            label_names: *const ModuleBuffer,
            label_names_length: usize,
            id_out: *mut usize,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
            config: *mut c_void,
            id: usize,
            label_values: *const ModuleBuffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
            config: *mut c_void,
            id: usize,
            label_values: *const ModuleBuffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
            config: *mut c_void,
        ) -> *mut c_void;
        pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
            scheduler: *mut c_void,
            event_id: u64,
        );
        pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
            scheduler: *mut c_void,
        );
        pub fn envoy_dynamic_module_callback_http_get_headers_size(
            filter: *mut c_void,
            header_type: u32,
        ) -> usize;
        pub fn envoy_dynamic_module_callback_http_get_headers(
            filter: *mut c_void,
            header_type: u32,
            result: *mut EnvoyHttpHeader,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_set_header(
            filter: *mut c_void,
            header_type: u32,
            key: ModuleBuffer,
            value: ModuleBuffer,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: *mut c_void);
        pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
            filter: *mut c_void,
            attribute_id: u32,
            result: *mut EnvoyBuffer,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_get_cluster_name(
            filter: *mut c_void,
            result: *mut EnvoyBuffer,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
            filter: *mut c_void,
            id: usize,
            label_values: *const ModuleBuffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;
    }
}

use envoy::*;

// ---------------------------------------------------------------- safe wrappers

/// Envoy's log levels (logger `dynamic_modules`).
#[derive(Debug, Clone, Copy)]
pub enum Level {
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Logs through Envoy (any thread).
pub fn log(level: Level, message: &str) {
    // SAFETY: the buffer is valid for the call (Envoy copies it); the log
    // callback may be called from any thread (checked from the watch thread).
    unsafe { envoy_dynamic_module_callback_log(level as u32, lend(message.as_bytes())) }
}

/// What `config_new` may do with Envoy's configuration object.
pub struct ConfigInit {
    config: *mut c_void,
}

impl ConfigInit {
    /// Defines a counter `<metrics_namespace>.<name>`; Envoy's id for it.
    pub fn define_counter(&mut self, name: &str) -> Result<usize, String> {
        let mut id = 0;
        // SAFETY: `config` is valid during config_new (where a ConfigInit
        // lives); `name` is lent for the call; `id` is writable.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.config,
                lend(name.as_bytes()),
                null(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS)
            .then_some(id)
            .ok_or_else(|| format!("cannot define counter {name}: metrics result {result}"))
    }

    /// Defines a gauge `<metrics_namespace>.<name>`; Envoy's id for it.
    pub fn define_gauge(&mut self, name: &str) -> Result<usize, String> {
        let mut id = 0;
        // SAFETY: as in `define_counter`.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_gauge(
                self.config,
                lend(name.as_bytes()),
                null(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS)
            .then_some(id)
            .ok_or_else(|| format!("cannot define gauge {name}: metrics result {result}"))
    }

    /// `envoy --mode validate` (no watch is started then).
    pub fn is_validation_mode(&self) -> bool {
        // SAFETY: no arguments; config_new runs on the main thread, where
        // Envoy allows this call.
        unsafe { envoy_dynamic_module_callback_is_validation_mode() }
    }

    /// A scheduler whose commits run this configuration's
    /// `on_http_filter_config_scheduled` on Envoy's main thread.
    pub fn scheduler(&mut self) -> Option<Scheduler> {
        // SAFETY: `config` is valid here; Envoy allocates the scheduler, which
        // the returned `Scheduler` deletes exactly once (Drop).
        let raw =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.config) };
        NonNull::new(raw).map(Scheduler)
    }
}

/// Envoy's scheduler for one filter configuration: `commit` from any thread
/// makes Envoy run the configuration's scheduled hook on its main thread. It
/// holds only a weak reference to the configuration: a commit after the
/// configuration is gone is dropped by Envoy.
pub struct Scheduler(NonNull<c_void>);

// SAFETY: Envoy's DynamicModuleHttpFilterConfigScheduler::commit posts to the
// main thread's dispatcher, which is thread-safe; the pointer is only used by
// `commit` and, once, by `Drop`.
unsafe impl Send for Scheduler {}
// SAFETY: as above; `commit` takes `&self` and may run on several threads.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler is alive until Drop.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                self.0.as_ptr(),
                event_id,
            )
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new, deleted once, here.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0.as_ptr())
        }
    }
}

/// A configuration's stats, in its scheduled hook (main thread).
pub struct ConfigMetrics {
    config: *mut c_void,
}

impl ConfigMetrics {
    pub fn add_counter(&self, id: usize, value: u64) {
        // SAFETY: `config` is valid during the scheduled hook; the id was
        // defined by this configuration.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.config,
                id,
                null(),
                0,
                value,
            );
        }
    }

    pub fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: as in `add_counter`.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.config,
                id,
                null(),
                0,
                value,
            );
        }
    }
}

/// One stream, inside one hook call.
pub struct Stream {
    filter: *mut c_void,
}

impl Stream {
    /// Sets a response header (the debug header).
    pub fn set_response_header(&mut self, name: &str, value: &[u8]) -> bool {
        // SAFETY: `filter` is valid inside the hook; both buffers are lent
        // for the call (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.filter,
                RESPONSE_HEADER,
                lend(name.as_bytes()),
                lend(value),
            )
        }
    }

    fn copy_of(found: bool, buffer: EnvoyBuffer) -> Option<Vec<u8>> {
        // SAFETY: on success Envoy points `buffer` at a value valid until the
        // hook returns; it is copied at once.
        found.then(|| unsafe { buffer.as_slice() }.to_vec())
    }
}

/// How many headers a request may have before its list leaves the stack
/// (one allocation, for that request only).
const INLINE_HEADERS: usize = 64;

/// Where Envoy writes a request's header list (pointers into its map): the
/// filter's stack frame, so the list is written once and never moved.
#[derive(Default)]
pub struct HeaderBuffer(SmallVec<[EnvoyHttpHeader; INLINE_HEADERS]>);

impl RequestHost for Stream {
    type HeaderBuffer = HeaderBuffer;

    fn request_headers<'h>(
        &'h self,
        buffer: &'h mut HeaderBuffer,
    ) -> impl Iterator<Item = (&'h [u8], &'h [u8])> + 'h {
        let raw = &mut buffer.0;
        raw.clear();
        // SAFETY: `filter` is valid inside the hook.
        let size = unsafe {
            envoy_dynamic_module_callback_http_get_headers_size(self.filter, REQUEST_HEADER)
        };
        raw.reserve(size);
        // SAFETY: `filter` is valid inside the hook; `raw` has room for the
        // `size` entries Envoy writes (the map cannot change in between: it
        // changes only on this thread, which is running this hook).
        let filled = unsafe {
            envoy_dynamic_module_callback_http_get_headers(
                self.filter,
                REQUEST_HEADER,
                raw.as_mut_ptr(),
            )
        };
        if filled {
            // SAFETY: Envoy initialised the first `size` entries.
            unsafe { raw.set_len(size) };
        }
        raw.iter()
            // SAFETY: each entry points into Envoy's header map, valid until
            // the hook returns or a setter runs; the pairs borrow `self`, and
            // every setter takes `&mut self`.
            .map(|header| unsafe { header.as_pair() })
    }

    fn source_address(&self) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::NULL;
        // SAFETY: `filter` is valid inside the hook; `value` is writable.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.filter,
                ATTRIBUTE_SOURCE_ADDRESS,
                &mut value,
            )
        };
        Self::copy_of(found, value)
    }

    fn cluster_name(&self) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::NULL;
        // SAFETY: as in `source_address`.
        let found =
            unsafe { envoy_dynamic_module_callback_http_get_cluster_name(self.filter, &mut value) };
        Self::copy_of(found, value)
    }

    fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) -> bool {
        // SAFETY: `filter` is valid inside the hook; the buffers are lent for
        // the call (Envoy copies them); NULL removes the header.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.filter,
                REQUEST_HEADER,
                lend(name.as_bytes()),
                value.map_or(NO_VALUE, lend),
            )
        }
    }

    fn clear_route_cache(&mut self) {
        // SAFETY: `filter` is valid inside the hook.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.filter) }
    }

    fn increment_counter(&mut self, id: usize) {
        // SAFETY: `filter` is valid inside the hook; the id was defined by
        // this stream's configuration, without labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.filter,
                id,
                null(),
                0,
                1,
            );
        }
    }
}

// ---------------------------------------------------------------- per-stream pointer

/// What `filter_new` hands Envoy for one stream. With the debug header off
/// (the production case) it is the configuration's own pointer: no state per
/// stream, no allocation. With it on, a boxed [`DebugStream`], tagged by
/// setting the lowest bit (a `Box` of it is at least 8-aligned, as is a `Module`'s).
struct DebugStream {
    module: *const Module,
    decision: Option<String>,
}

const DEBUG_TAG: usize = 1;

enum StreamState<'a> {
    Plain(&'a Module),
    Debug(&'a mut DebugStream),
}

impl<'a> StreamState<'a> {
    /// # Safety
    /// `ptr` is a pointer `filter_new` returned, not yet destroyed, used by
    /// one hook at a time (Envoy runs a stream's hooks on one thread, in turn).
    unsafe fn from_raw(ptr: *const c_void) -> StreamState<'a> {
        let address = ptr as usize;
        if address & DEBUG_TAG == 0 {
            // SAFETY: an untagged pointer is the configuration's, alive while
            // any of its streams is (Envoy destroys a configuration after its
            // last stream).
            StreamState::Plain(unsafe { &*ptr.cast::<Module>() })
        } else {
            // SAFETY: a tagged pointer is a leaked Box<DebugStream> of this
            // stream, used by no other hook call now.
            StreamState::Debug(unsafe { &mut *((address & !DEBUG_TAG) as *mut DebugStream) })
        }
    }

    fn module(&self) -> &Module {
        match self {
            StreamState::Plain(module) => module,
            // SAFETY: the configuration outlives its streams (as above).
            StreamState::Debug(stream) => unsafe { &*stream.module },
        }
    }
}

// ---------------------------------------------------------------- hooks

/// Envoy compares the returned ABI version with its own when it loads the
/// module and logs the result (a mismatch is a warning, not a refusal).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    #[cfg(not(test))]
    crate::install_logging();
    #[cfg(feature = "test-hooks")]
    if let Some(version) = test_abi_version() {
        return version;
    }
    ABI_VERSION.as_ptr()
}

/// Test builds only: `SANDBOX_ROUTER_TEST_ABI_VERSION` (`null`: NULL) in
/// place of the real version, to see what Envoy does with it.
#[cfg(feature = "test-hooks")]
fn test_abi_version() -> Option<*const c_char> {
    let version = std::env::var("SANDBOX_ROUTER_TEST_ABI_VERSION").ok()?;
    if version == "null" {
        return Some(null());
    }
    let version = std::ffi::CString::new(version).ok()?;
    // Leaked once per process: Envoy reads it after this returns.
    Some(Box::leak(version.into_boxed_c_str()).as_ptr())
}

/// # Safety
/// Envoy calls it on the main thread with its configuration object and two
/// buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: *mut c_void,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let made = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the configuration bytes are valid for this call.
        let bytes = unsafe { config.as_slice() };
        let mut init = ConfigInit {
            config: config_envoy_ptr,
        };
        Module::new(bytes, &mut init)
    }));
    match made {
        Ok(Some(module)) => Box::into_raw(Box::new(module)).cast_const().cast(),
        // Refused: Envoy rejects the configuration (the reason is logged).
        Ok(None) => null(),
        Err(_) => {
            log(
                Level::Error,
                "sandbox-router: rejected plugin configuration: a panic (see the log line before)",
            );
            null()
        }
    }
}

/// # Safety
/// `config_ptr` is a pointer `config_new` returned; Envoy destroys it once,
/// after its last stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config_ptr: *const c_void,
) {
    if config_ptr.is_null() {
        return;
    }
    // SAFETY: the Box config_new leaked, taken back once.
    let module = unsafe { Box::from_raw(config_ptr.cast::<Module>().cast_mut()) };
    if catch_unwind(AssertUnwindSafe(move || drop(module))).is_err() {
        log(
            Level::Error,
            "sandbox-router: a panic while dropping a configuration",
        );
    }
}

/// Runs on the main thread after a [`Scheduler::commit`] of this configuration.
///
/// # Safety
/// Envoy passes a live configuration: its own pointer and the one config_new returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy_ptr: *mut c_void,
    config_ptr: *const c_void,
    _event_id: u64,
) {
    if config_ptr.is_null() {
        return;
    }
    // SAFETY: a live configuration (Envoy drops commits after config_destroy).
    let module = unsafe { &*config_ptr.cast::<Module>() };
    let metrics = ConfigMetrics {
        config: config_envoy_ptr,
    };
    if catch_unwind(AssertUnwindSafe(|| module.on_scheduled(&metrics))).is_err() {
        log(
            Level::Error,
            "sandbox-router: a panic while publishing the watch's stats",
        );
    }
}

/// # Safety
/// `config_ptr` is a live pointer config_new returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    if config_ptr.is_null() {
        return null();
    }
    // SAFETY: a live configuration.
    let module = unsafe { &*config_ptr.cast::<Module>() };
    if !module.filter.settings.debug_header {
        return config_ptr;
    }
    let stream = Box::new(DebugStream {
        module: config_ptr.cast(),
        decision: None,
    });
    (Box::into_raw(stream) as usize | DEBUG_TAG) as *const c_void
}

/// # Safety
/// `filter_ptr` is what filter_new returned for this stream; called once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_ptr: *const c_void) {
    let address = filter_ptr as usize;
    if address & DEBUG_TAG != 0 {
        // SAFETY: a tagged pointer is this stream's leaked Box, taken back once.
        drop(unsafe { Box::from_raw((address & !DEBUG_TAG) as *mut DebugStream) });
    }
}

/// # Safety
/// Envoy's stream pointer and what filter_new returned, on the stream's thread.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: *mut c_void,
    filter_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    if filter_ptr.is_null() {
        return CONTINUE;
    }
    // SAFETY: see StreamState::from_raw; this hook is the only user now.
    let mut state = unsafe { StreamState::from_raw(filter_ptr) };
    let module = state.module();
    let mut stream = Stream {
        filter: filter_envoy_ptr,
    };
    let decision = match catch_unwind(AssertUnwindSafe(|| {
        filter::on_request_headers(&module.filter, &mut stream)
    })) {
        Ok(decision) => decision,
        Err(_) => {
            log(
                Level::Error,
                "sandbox-router: a panic in the request-headers hook (logged above); the request stays on the baseline, counted as baseline.malformed",
            );
            catch_unwind(AssertUnwindSafe(|| {
                filter::fail_safe(&module.filter, &mut stream)
            }))
            .unwrap_or(None)
        }
    };
    if let StreamState::Debug(debug) = &mut state {
        debug.decision = decision;
    }
    CONTINUE
}

/// # Safety
/// As for the request-headers hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy_ptr: *mut c_void,
    filter_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    if filter_ptr.is_null() {
        return CONTINUE;
    }
    // SAFETY: see StreamState::from_raw.
    if let StreamState::Debug(debug) = unsafe { StreamState::from_raw(filter_ptr) } {
        if let Some(decision) = debug.decision.take() {
            let mut stream = Stream {
                filter: filter_envoy_ptr,
            };
            let set = catch_unwind(AssertUnwindSafe(|| {
                stream
                    .set_response_header(sandbox_router_routing::DEBUG_HEADER, decision.as_bytes())
            }));
            if set.is_err() {
                log(
                    Level::Error,
                    "sandbox-router: a panic in the response-headers hook",
                );
            }
        }
    }
    CONTINUE
}

// The hooks Envoy 1.40 requires of an HTTP filter module that this one has
// no use for: they run no module code (nothing that could panic).

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
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: *mut c_void,
    _: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
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
    _data: *const EnvoyBuffer,
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

// ---------------------------------------------------------------- tests: a fake Envoy

/// The callbacks, implemented over plain Rust data, so the unit tests drive
/// the real hooks: the same pointers, buffers and calls as Envoy.
#[cfg(test)]
pub mod fake {
    use super::{EnvoyBuffer, EnvoyHttpHeader, ModuleBuffer};
    use std::ffi::c_void;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    pub static VALIDATION_MODE: AtomicBool = AtomicBool::new(false);
    pub static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Envoy's configuration object: its stats.
    #[derive(Default)]
    pub struct Config {
        pub counters: Vec<(String, u64)>,
        pub gauges: Vec<(String, u64)>,
    }

    impl Config {
        pub fn counter(&self, name: &str) -> u64 {
            self.counters
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v)
        }
        pub fn gauge(&self, name: &str) -> u64 {
            self.gauges
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v)
        }
    }

    /// Envoy's stream object: its header maps and what was asked of it.
    pub struct Stream {
        pub config: *mut Config,
        pub request: Vec<(Vec<u8>, Vec<u8>)>,
        pub response: Vec<(Vec<u8>, Vec<u8>)>,
        pub source: Vec<u8>,
        pub cluster: Vec<u8>,
        pub route_cleared: bool,
    }

    pub struct Scheduler {
        pub commits: AtomicU64,
    }

    fn bytes<'a>(buffer: ModuleBuffer) -> &'a [u8] {
        if buffer.ptr.is_null() {
            &[]
        } else {
            // SAFETY: the module lends valid buffers for the call.
            unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) }
        }
    }

    fn text(buffer: ModuleBuffer) -> String {
        String::from_utf8_lossy(bytes(buffer)).into_owned()
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_log(_level: u32, message: ModuleBuffer) {
        if let Ok(mut logs) = LOGS.lock() {
            logs.push(text(message));
        }
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_is_validation_mode() -> bool {
        VALIDATION_MODE.load(Ordering::SeqCst)
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        _: *const ModuleBuffer,
        _: usize,
        id_out: *mut usize,
    ) -> u32 {
        // SAFETY: the test passes a live fake Config.
        let config = unsafe { &mut *config.cast::<Config>() };
        config.counters.push((text(name), 0));
        // SAFETY: the module passes a writable id.
        unsafe { *id_out = config.counters.len() };
        0
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        _: *const ModuleBuffer,
        _: usize,
        id_out: *mut usize,
    ) -> u32 {
        // SAFETY: as above.
        let config = unsafe { &mut *config.cast::<Config>() };
        config.gauges.push((text(name), 0));
        // SAFETY: as above.
        unsafe { *id_out = config.gauges.len() };
        0
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        _: *const ModuleBuffer,
        _: usize,
        value: u64,
    ) -> u32 {
        // SAFETY: as above.
        let config = unsafe { &mut *config.cast::<Config>() };
        match config.counters.get_mut(id.wrapping_sub(1)) {
            Some((_, v)) => {
                *v += value;
                0
            }
            None => 1,
        }
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: *mut c_void,
        id: usize,
        _: *const ModuleBuffer,
        _: usize,
        value: u64,
    ) -> u32 {
        // SAFETY: as above.
        let config = unsafe { &mut *config.cast::<Config>() };
        match config.gauges.get_mut(id.wrapping_sub(1)) {
            Some((_, v)) => {
                *v = value;
                0
            }
            None => 1,
        }
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        _: *mut c_void,
    ) -> *mut c_void {
        Box::into_raw(Box::new(Scheduler {
            commits: AtomicU64::new(0),
        }))
        .cast()
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        _: u64,
    ) {
        // SAFETY: a live fake scheduler.
        unsafe { &*scheduler.cast::<Scheduler>() }
            .commits
            .fetch_add(1, Ordering::SeqCst);
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: *mut c_void,
    ) {
        // SAFETY: made by scheduler_new, deleted once.
        drop(unsafe { Box::from_raw(scheduler.cast::<Scheduler>()) });
    }

    fn map(filter: *mut c_void, header_type: u32) -> &'static mut Vec<(Vec<u8>, Vec<u8>)> {
        // SAFETY: the test passes a live fake Stream, used by one hook at a time.
        let stream = unsafe { &mut *filter.cast::<Stream>() };
        if header_type == 0 {
            &mut stream.request
        } else {
            &mut stream.response
        }
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: u32,
    ) -> usize {
        map(filter, header_type).len()
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        result: *mut EnvoyHttpHeader,
    ) -> bool {
        for (i, (name, value)) in map(filter, header_type).iter().enumerate() {
            // SAFETY: the caller made room for get_headers_size entries.
            unsafe {
                result.add(i).write(EnvoyHttpHeader {
                    key_ptr: name.as_ptr(),
                    key_length: name.len(),
                    value_ptr: value.as_ptr(),
                    value_length: value.len(),
                })
            };
        }
        true
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool {
        let headers = map(filter, header_type);
        let key = bytes(key).to_vec();
        headers.retain(|(n, _)| *n != key);
        // As Envoy: NULL or empty removes.
        if !value.ptr.is_null() && value.length > 0 {
            headers.push((key, bytes(value).to_vec()));
        }
        true
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_clear_route_cache(
        filter: *mut c_void,
    ) {
        // SAFETY: a live fake Stream.
        unsafe { &mut *filter.cast::<Stream>() }.route_cleared = true;
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        _attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool {
        // SAFETY: a live fake Stream; `result` is writable.
        let stream = unsafe { &*filter.cast::<Stream>() };
        // SAFETY: `result` is writable (the module passes its own slot).
        unsafe {
            *result = EnvoyBuffer {
                ptr: stream.source.as_ptr(),
                length: stream.source.len(),
            }
        };
        !stream.source.is_empty()
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_cluster_name(
        filter: *mut c_void,
        result: *mut EnvoyBuffer,
    ) -> bool {
        // SAFETY: a live fake Stream; `result` is writable.
        let stream = unsafe { &*filter.cast::<Stream>() };
        // SAFETY: `result` is writable (the module passes its own slot).
        unsafe {
            *result = EnvoyBuffer {
                ptr: stream.cluster.as_ptr(),
                length: stream.cluster.len(),
            }
        };
        !stream.cluster.is_empty()
    }

    pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        labels: *const ModuleBuffer,
        labels_length: usize,
        value: u64,
    ) -> u32 {
        // SAFETY: a live fake Stream whose config is live.
        let config = unsafe { (*filter.cast::<Stream>()).config };
        // SAFETY: forwards to the config-level fake.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                config.cast(),
                id,
                labels,
                labels_length,
                value,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    // Counts this thread's allocations (the module's own, on Envoy's worker).
    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    struct Counting;

    // SAFETY: forwards to the system allocator unchanged; only counts.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: `ptr` came from the system allocator.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = ALLOCATIONS.with(Cell::get);
        let out = f();
        (out, ALLOCATIONS.with(Cell::get) - before)
    }

    const KEY: &str = "key-feature-x";

    fn module_config(debug: bool, extra: &str) -> String {
        format!(
            r#"{{"debug_header": {debug}, "table": {{"version": 3, "entries": [
                {{"routing_key": "{KEY}", "sandbox": "feature-x",
                  "forks": [{{"service": "backend", "endpoints": ["10.0.0.7:8080"]}}]}}]}}{extra}}}"#
        )
    }

    /// Envoy's side of one configuration.
    struct Envoy {
        config: Box<fake::Config>,
        module: *const c_void,
    }

    impl Envoy {
        fn new(json: &str) -> Envoy {
            let mut config = Box::<fake::Config>::default();
            let buffer = EnvoyBuffer {
                ptr: json.as_ptr(),
                length: json.len(),
            };
            // SAFETY: `config` is a live fake Config, boxed for the Envoy's lifetime; `buffer` borrows `json` for the call.
            let module = unsafe {
                envoy_dynamic_module_on_http_filter_config_new(
                    (&mut *config as *mut fake::Config).cast(),
                    EnvoyBuffer::NULL,
                    buffer,
                )
            };
            Envoy { config, module }
        }

        fn stream(&mut self, headers: &[(&str, &str)]) -> fake::Stream {
            let mut request = Vec::with_capacity(16);
            request.extend(
                headers
                    .iter()
                    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())),
            );
            fake::Stream {
                config: &mut *self.config,
                request,
                response: Vec::with_capacity(4),
                source: b"127.0.0.1:4000".to_vec(),
                cluster: b"backend_baseline".to_vec(),
                route_cleared: false,
            }
        }

        /// One request and its response through the hooks; the allocations
        /// the module made in the request-headers hook.
        fn request(&mut self, stream: &mut fake::Stream) -> usize {
            let fe: *mut c_void = (stream as *mut fake::Stream).cast();
            // SAFETY: `fe` is a live fake Stream for the whole block; `fm` is the module's filter for it, destroyed last.
            unsafe {
                let fm = envoy_dynamic_module_on_http_filter_new(self.module, fe);
                assert!(!fm.is_null());
                let (_, allocated) = allocations(|| {
                    envoy_dynamic_module_on_http_filter_request_headers(fe, fm, true)
                });
                envoy_dynamic_module_on_http_filter_response_headers(fe, fm, true);
                envoy_dynamic_module_on_http_filter_stream_complete(fe, fm);
                envoy_dynamic_module_on_http_filter_destroy(fm);
                allocated
            }
        }
    }

    impl Drop for Envoy {
        fn drop(&mut self) {
            // SAFETY: `module` came from config_new and is destroyed once, here.
            unsafe { envoy_dynamic_module_on_http_filter_config_destroy(self.module) };
        }
    }

    fn values(headers: &[(Vec<u8>, Vec<u8>)], name: &str) -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    #[test]
    fn the_abi_version_is_envoy_1_40s() {
        let version = envoy_dynamic_module_on_program_init();
        // SAFETY: the module returns a static, NUL-terminated version string.
        assert_eq!(unsafe { CStr::from_ptr(version) }, c"v0.2.0");
    }

    #[test]
    fn every_counter_is_defined_once_under_its_name() {
        let envoy = Envoy::new(&module_config(false, ""));
        assert!(!envoy.module.is_null());
        let names: Vec<&str> = envoy
            .config
            .counters
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let expected: Vec<&str> = sandbox_router_routing::Counter::ALL
            .iter()
            .map(|c| c.name())
            .collect();
        assert_eq!(names, expected);
        // A static table: no watch, no sync stats.
        assert!(envoy.config.gauges.is_empty());
    }

    #[test]
    fn a_routed_request_through_the_hooks() {
        let mut envoy = Envoy::new(&module_config(true, ""));
        let baggage = format!("sandbox-routing-key={KEY}");
        let mut stream = envoy.stream(&[(":authority", "backend"), ("baggage", &baggage)]);
        envoy.request(&mut stream);
        assert_eq!(
            values(&stream.request, "x-envoy-original-dst-host"),
            ["10.0.0.7:8080"]
        );
        assert_eq!(values(&stream.request, "x-sandbox-router-route"), ["1"]);
        assert!(stream.route_cleared);
        assert_eq!(
            values(&stream.response, "x-sandbox-router-decision"),
            ["routed; source=baggage; service=backend; endpoint=10.0.0.7:8080"]
        );
        assert_eq!(envoy.config.counter("routed"), 1);
    }

    /// Requests without routing context: a plain one, and a traced one
    /// with W3C trace context and someone else's baggage.
    const NO_CONTEXT: [&[(&str, &str)]; 2] = [
        &[
            (":authority", "backend"),
            (":path", "/"),
            ("user-agent", "curl/8"),
            ("accept", "*/*"),
        ],
        &[
            (":authority", "backend.default.svc.cluster.local:8080"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("baggage", "userId=alice,isProduction=false"),
            ("baggage", "serverNode=DF%2028"),
        ],
    ];

    /// The shipped sidecar and edge configurations with the pushed table
    /// (the same `control` section as the watch test: one watch per process).
    #[test]
    fn the_shipped_pushed_and_edge_configurations_allocate_nothing_without_context() {
        let shipped = [
            include_str!("../../envoy-config/filter-config.json"),
            include_str!("../../envoy-config/filter-config-edge.json"),
        ];
        for json in shipped {
            let mut config: serde_json::Value =
                serde_json::from_str(&json.replace("${EDGE_CREDENTIAL_SHA256}", &"ab".repeat(32)))
                    .unwrap();
            config["control"] =
                serde_json::json!({"server": "http://127.0.0.1:1", "node_id": "unit"});
            // The shipped sidecar turns the debug header on for the demo: its
            // value is a String per request, by design.
            config["debug_header"] = false.into();
            let mut envoy = Envoy::new(&config.to_string());
            assert!(!envoy.module.is_null(), "{config}");
            for headers in NO_CONTEXT {
                let mut stream = envoy.stream(headers);
                assert_eq!(envoy.request(&mut stream), 0, "{config} {headers:?}");
                assert!(!stream.route_cleared);
            }
            assert_eq!(envoy.config.counter("baseline.no_context"), 2, "{config}");
        }
    }

    #[test]
    fn a_request_without_routing_context_allocates_nothing() {
        let mut envoy = Envoy::new(&module_config(
            false,
            r#", "keys": ["sandbox-routing-key", "sd-routing-key"]"#,
        ));
        for headers in NO_CONTEXT {
            let mut stream = envoy.stream(headers);
            assert_eq!(envoy.request(&mut stream), 0, "{headers:?}");
            assert!(!stream.route_cleared);
            assert!(stream.response.is_empty());
        }
        assert_eq!(envoy.config.counter("baseline.no_context"), 2);

        // Routed: the edits allocate (for comparison).
        let baggage = format!("sandbox-routing-key={KEY}");
        let mut stream = envoy.stream(&[(":authority", "backend"), ("baggage", &baggage)]);
        assert!(envoy.request(&mut stream) > 0);
    }

    #[test]
    fn a_panic_in_a_hook_is_caught_and_the_request_stays_on_the_baseline() {
        let mut envoy = Envoy::new(&module_config(true, ""));
        let baggage = format!("sandbox-routing-key={KEY}");
        let mut stream = envoy.stream(&[
            (":authority", "backend"),
            ("baggage", &baggage),
            ("x-envoy-original-dst-host", "169.254.169.254:80"),
            ("x-sandbox-router-route", "1"),
            (crate::filter::TEST_PANIC_HEADER, "1"),
        ]);
        envoy.request(&mut stream);
        assert!(values(&stream.request, "x-envoy-original-dst-host").is_empty());
        assert!(values(&stream.request, "x-sandbox-router-route").is_empty());
        assert!(stream.route_cleared);
        assert_eq!(envoy.config.counter("baseline.malformed"), 1);
        assert_eq!(envoy.config.counter("routed"), 0);
        assert_eq!(
            values(&stream.response, "x-sandbox-router-decision"),
            ["baseline; reason=malformed"]
        );
        let logs = fake::LOGS.lock().unwrap().join("\n");
        assert!(
            logs.contains("a panic in the request-headers hook"),
            "{logs}"
        );
        // The next request is served as usual.
        let mut stream = envoy.stream(&[(":authority", "backend"), ("baggage", &baggage)]);
        envoy.request(&mut stream);
        assert_eq!(envoy.config.counter("routed"), 1);
    }

    #[test]
    fn a_bad_configuration_is_refused_naming_the_field() {
        let envoy = Envoy::new(r#"{"keys": ["Bad Name"], "table": {"entries": []}}"#);
        assert!(envoy.module.is_null());
        let logs = fake::LOGS.lock().unwrap().join("\n");
        assert!(
            logs.contains(
                "sandbox-router: rejected plugin configuration: keys[0]: must start with a-z"
            ),
            "{logs}"
        );
    }

    #[test]
    fn the_pushed_table_defines_the_watchs_stats_and_starts_one_watch() {
        // Validate mode: the stats, no watch.
        fake::VALIDATION_MODE.store(true, std::sync::atomic::Ordering::SeqCst);
        let control = r#"{"control": {"server": "http://127.0.0.1:1", "node_id": "unit"}}"#;
        let validating = Envoy::new(control);
        fake::VALIDATION_MODE.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(!validating.module.is_null());
        let gauges: Vec<&str> = validating
            .config
            .gauges
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(gauges, ["sync.table_version", "sync.routing_keys"]);
        assert!(validating
            .config
            .counters
            .iter()
            .any(|(n, _)| n == "sync.update_errors"));
        // Serving: the first configuration starts the process's watch, a
        // second with the same section shares it, another section is refused.
        let mut first = Envoy::new(control);
        assert!(!first.module.is_null());
        let same = Envoy::new(control);
        assert!(!same.module.is_null());
        let other =
            Envoy::new(r#"{"control": {"server": "http://127.0.0.1:1", "node_id": "other"}}"#);
        assert!(other.module.is_null());
        let logs = fake::LOGS.lock().unwrap().join("\n");
        assert!(
            logs.contains(
                "sandbox-router: sharing this Envoy's watch of http://127.0.0.1:1 (node unit)"
            ),
            "{logs}"
        );
        assert!(
            logs.contains("control: this Envoy already watches http://127.0.0.1:1 as node unit"),
            "{logs}"
        );
        // The scheduled hook publishes the watch's state (nothing yet).
        let config: *mut fake::Config = &mut *first.config;
        // SAFETY: `config` is the live fake Config of `first`; `first.module` is its configuration.
        unsafe {
            envoy_dynamic_module_on_http_filter_config_scheduled(config.cast(), first.module, 0)
        };
        assert_eq!(first.config.gauge("sync.table_version"), 0);
        assert_eq!(first.config.counter("sync.updates_applied"), 0);
        // No table yet: a key is unknown.
        let baggage = format!("sandbox-routing-key={KEY}");
        let mut stream = first.stream(&[(":authority", "backend"), ("baggage", &baggage)]);
        first.request(&mut stream);
        assert_eq!(first.config.counter("baseline.unknown_key"), 1);
    }

    #[test]
    fn without_the_debug_header_a_stream_has_no_state_of_its_own() {
        let mut envoy = Envoy::new(&module_config(false, ""));
        let mut stream = envoy.stream(&[(":authority", "backend")]);
        let fe: *mut c_void = (&mut stream as *mut fake::Stream).cast();
        // SAFETY: `fe` is a live fake Stream; `envoy.module` a live configuration.
        let fm = unsafe { envoy_dynamic_module_on_http_filter_new(envoy.module, fe) };
        assert_eq!(fm, envoy.module);
        // SAFETY: `fm` came from filter_new just above.
        unsafe { envoy_dynamic_module_on_http_filter_destroy(fm) };
        let debug = Envoy::new(&module_config(true, ""));
        // SAFETY: as above, for the debug configuration.
        let fm = unsafe { envoy_dynamic_module_on_http_filter_new(debug.module, fe) };
        assert_eq!(fm as usize & DEBUG_TAG, DEBUG_TAG);
        // SAFETY: `fm` came from filter_new just above.
        unsafe { envoy_dynamic_module_on_http_filter_destroy(fm) };
    }
}
