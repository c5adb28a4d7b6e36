//! A proxy-wasm HTTP filter that does nothing: every request costs only what
//! the Wasm runtime costs (VM call-in for the headers, context creation).
//!
//! With the plugin configuration `read-headers` it also copies the request's
//! header map into the VM, as sandbox-router does for every request: the
//! benchmark uses it to tell the host boundary's cost from the filter's own.

#![forbid(unsafe_code)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot { read_headers: false }) });
}}

struct NoopRoot {
    read_headers: bool,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.read_headers = config.trim_ascii() == b"read-headers";
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop {
            read_headers: self.read_headers,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop {
    read_headers: bool,
}

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.read_headers {
            let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
            std::hint::black_box(headers);
        }
        Action::Continue
    }
}
