//! Pure routing logic of sandbox-router, shared by the proxy-wasm filter and
//! the control service / CLI. No `proxy-wasm` here: everything runs natively
//! under `cargo test`.
//!
//! Flow for one request (see [`Settings::route`]):
//! 1. [`ContextConfig::scan`] sorts the request headers in one pass;
//! 2. [`ContextConfig::extract`] reads the routing context (key / Overrides);
//! 3. only if there is one: name the destination service ([`Destination`])
//!    and [`decide`] against the table ([`RouteLookup`]).

#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing)]

pub mod baggage;
pub mod consumer;
pub mod context;
pub mod decision;
pub mod destination;
pub mod edge;
pub mod error;
pub mod header_map;
pub mod key;
pub mod mint;
pub mod percent;
pub mod plan;
pub mod shared;
pub mod sync;
pub mod table;
pub mod tracecontext;

use serde::Deserialize;

pub use context::{
    ContextConfig, Extracted, HostPattern, RequestHeaders, RoutingContext, Source,
    ORIGINAL_DST_HEADER,
};
pub use decision::{decide, select, BaselineReason, Decision, Selected};
pub use destination::{Destination, DestinationFrom, DestinationSpec};
pub use edge::{EdgePolicy, EdgeSpec, HeaderEdit};
pub use error::ConfigError;
pub use plan::{Counter, Counters, Plan, RequestFacts};
pub use table::{ForkLookup, RouteLookup, RoutingTable, TableSpec};

/// Default routing key name (baggage key, `ot-baggage-`/`uberctx-` suffix, tracestate key).
pub const DEFAULT_KEY: &str = "sandbox-routing-key";
/// Default name of the item carrying a base64 `Overrides` protobuf.
pub const DEFAULT_OVERRIDES_KEY: &str = "sandbox-overrides";
/// Default marker header: set with `x-envoy-original-dst-host` on a hit; the
/// Envoy route that matches it sends the request to the ORIGINAL_DST cluster.
pub const DEFAULT_MARKER_HEADER: &str = "x-sandbox-router-route";
/// Response header carrying the decision when `debug_header` is on.
pub const DEBUG_HEADER: &str = "x-sandbox-router-decision";
/// Most routing key names (canonical + aliases).
pub const MAX_KEYS: usize = 8;

/// The filter's plugin configuration, as JSON. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// Routing key names, canonical first, then aliases (e.g. `sd-routing-key`).
    pub keys: Option<Vec<String>>,
    /// Item name for base64 `Overrides`; `""` disables Overrides.
    pub overrides_key: Option<String>,
    /// Enabled sources in precedence order.
    pub sources: Option<Vec<Source>>,
    #[serde(default)]
    pub destination: DestinationSpec,
    pub marker_header: Option<String>,
    /// Add `x-sandbox-router-decision` to responses (off by default: it tells
    /// a caller how the mesh routed).
    #[serde(default)]
    pub debug_header: bool,
    /// A static routing table. Without one, the filter routes by the table
    /// the control service pushes (kept in shared data by the singleton).
    #[serde(default)]
    pub table: Option<TableSpec>,
    /// Edge mode for the ingress Envoy: honour routing context only from
    /// trusted sources (see [`edge`]).
    #[serde(default)]
    pub edge: Option<EdgeSpec>,
    /// The `query` source (webhooks and callbacks).
    #[serde(default)]
    pub query: QuerySpec,
    /// A sidecar of a sandboxed workload: stamp this sandbox's routing key
    /// into outbound requests that carry no routing context (cron jobs,
    /// queue workers: the sandbox as the origin of a request chain).
    #[serde(default)]
    pub origin: Option<OriginSpec>,
    /// The `cookie` source (browsers and phones at the edge).
    #[serde(default)]
    pub cookie: CookieSpec,
    /// The `preview-host` source: a host pattern such as
    /// `{sandbox}.preview.example.com`.
    pub preview_host: Option<String>,
}

/// The `cookie` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieSpec {
    /// Default: `sandbox-routing-key`.
    pub name: Option<String>,
    /// Pass the cookie on to the services (default: removed, the key goes on
    /// in `baggage`).
    #[serde(default)]
    pub forward: bool,
}

/// The `query` section: which URL query parameter carries a routing key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// Default: `sandbox-routing-key`.
    pub param: Option<String>,
    /// Remove the parameter before the request goes upstream (default: keep).
    #[serde(default)]
    pub remove: bool,
}

/// The `origin` section: the sandbox this sidecar's workload belongs to,
/// by name (its key is looked up in the table) or by routing key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSpec {
    pub sandbox: Option<String>,
    pub routing_key: Option<String>,
}

/// Whose routing key a sandbox's sidecar stamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Sandbox(String),
    RoutingKey(String),
}

/// Compiled, validated filter settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub context: ContextConfig,
    pub destination: Destination,
    pub marker_header: String,
    pub debug_header: bool,
    /// The configured static table; `None`: the pushed table.
    pub table: Option<RoutingTable>,
    /// Edge mode; `None` on a sidecar, which honours all routing context.
    pub edge: Option<EdgePolicy>,
    /// Remove the `query` source's parameter before the upstream.
    pub query_remove: bool,
    /// The sandbox whose key this sidecar stamps into requests without context.
    pub origin: Option<Origin>,
    /// Pass the `cookie` source's cookie on to the services.
    pub cookie_forward: bool,
    /// The request headers the plan can read (see [`Settings::header_names`]).
    header_names: Vec<String>,
}

/// Result of routing one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    pub extracted: Extracted,
    /// The destination service, when it was needed and could be named.
    pub service: Option<String>,
    /// The routing key was stamped by this sidecar's `origin`, not read.
    pub stamped: bool,
}

impl Settings {
    /// Parses and compiles the JSON plugin configuration. Empty input gives
    /// the defaults with an empty table.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let spec: ConfigSpec = if bytes.iter().all(u8::is_ascii_whitespace) {
            ConfigSpec::default()
        } else {
            error::parse_json(bytes, "configuration")?
        };
        Self::compile(spec)
    }

    pub fn compile(spec: ConfigSpec) -> Result<Self, ConfigError> {
        let keys = spec.keys.unwrap_or_else(|| vec![DEFAULT_KEY.to_owned()]);
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(ConfigError::new("keys", "must list 1 to 8 names"));
        }
        for (i, name) in keys.iter().enumerate() {
            check_name(&format!("keys[{i}]"), name)?;
            if keys.iter().take(i).any(|k| k == name) {
                return Err(ConfigError::new(format!("keys[{i}]"), "duplicate name"));
            }
        }
        let overrides_key = match spec.overrides_key {
            None => Some(DEFAULT_OVERRIDES_KEY.to_owned()),
            Some(name) if name.is_empty() => None,
            Some(name) => {
                check_name("overrides_key", &name)?;
                Some(name)
            }
        };
        // Checked after the default applies: a key named like the default
        // Overrides item would read Overrides as a routing key.
        if let Some(name) = &overrides_key {
            if keys.contains(name) {
                return Err(ConfigError::new(
                    "overrides_key",
                    format!("{name:?} must differ from every routing key name (set overrides_key, or \"\" to disable Overrides)"),
                ));
            }
        }
        let sources = spec
            .sources
            .unwrap_or_else(|| Source::DEFAULT_ORDER.to_vec());
        for (i, source) in sources.iter().enumerate() {
            if sources.iter().take(i).any(|s| s == source) {
                return Err(ConfigError::new(
                    format!("sources[{i}]"),
                    "duplicate source",
                ));
            }
        }
        let marker_header = spec
            .marker_header
            .unwrap_or_else(|| DEFAULT_MARKER_HEADER.to_owned());
        let reserved = [
            ORIGINAL_DST_HEADER,
            DEBUG_HEADER,
            "baggage",
            "tracestate",
            "traceparent",
        ];
        if !is_header_name(&marker_header)
            || reserved.contains(&marker_header.as_str())
            || reads_context(&marker_header)
        {
            return Err(ConfigError::new(
                "marker_header",
                "must be a lowercase header name (a-z 0-9 -) of its own",
            ));
        }
        let table = match spec.table {
            Some(table) => Some(RoutingTable::compile(&table.into(), "table")?),
            None => None,
        };
        let edge = match spec.edge {
            Some(edge) => {
                let edge = EdgePolicy::compile(edge)?;
                if edge.credential_header == marker_header {
                    return Err(ConfigError::new(
                        "edge.credential_header",
                        "must differ from marker_header",
                    ));
                }
                Some(edge)
            }
            None => None,
        };
        let query_param = spec.query.param.unwrap_or_else(|| DEFAULT_KEY.to_owned());
        check_name("query.param", &query_param)?;
        let origin = match spec.origin {
            None => None,
            Some(OriginSpec {
                sandbox: Some(name),
                routing_key: None,
            }) if key::is_valid_sandbox_name(&name) => Some(Origin::Sandbox(name)),
            Some(OriginSpec {
                sandbox: None,
                routing_key: Some(key),
            }) if key::is_valid_routing_key(key.as_bytes()) => Some(Origin::RoutingKey(key)),
            Some(OriginSpec {
                sandbox: Some(_),
                routing_key: None,
            }) => {
                return Err(ConfigError::new(
                    "origin.sandbox",
                    "must be a sandbox name: a DNS label (1-63 of a-z 0-9 '-', starting and ending with a letter or digit)",
                ))
            }
            Some(OriginSpec {
                sandbox: None,
                routing_key: Some(_),
            }) => {
                return Err(ConfigError::new(
                    "origin.routing_key",
                    "must be 1-64 characters of A-Z a-z 0-9 - _",
                ))
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "origin",
                    "must give exactly one of sandbox and routing_key",
                ))
            }
        };
        let cookie_name = spec.cookie.name.unwrap_or_else(|| DEFAULT_KEY.to_owned());
        check_name("cookie.name", &cookie_name)?;
        let preview_host = match &spec.preview_host {
            Some(pattern) => Some(HostPattern::parse(pattern).ok_or_else(|| {
                ConfigError::new(
                    "preview_host",
                    "must be a lowercase host with one {sandbox}, e.g. {sandbox}.preview.example.com",
                )
            })?),
            None => None,
        };
        if sources.contains(&Source::PreviewHost) && preview_host.is_none() {
            return Err(ConfigError::new(
                "preview_host",
                "is required when sources lists preview-host",
            ));
        }
        let credential_cookie = edge.as_ref().and_then(|e| e.credential_cookie.as_deref());
        if credential_cookie == Some(cookie_name.as_str()) {
            return Err(ConfigError::new(
                "edge.credential_cookie",
                "must differ from cookie.name",
            ));
        }
        let context = ContextConfig {
            keys,
            overrides_key,
            reads_cookies: sources.contains(&Source::Cookie) || credential_cookie.is_some(),
            sources,
            query_param,
            cookie_name,
            preview_host,
        };
        let credential_header = edge.as_ref().map(|e| e.credential_header.as_str());
        let header_names = context.header_names(&marker_header, credential_header);
        Ok(Settings {
            context,
            destination: Destination::compile(spec.destination)?,
            marker_header,
            debug_header: spec.debug_header,
            table,
            edge,
            query_remove: spec.query.remove,
            origin,
            cookie_forward: spec.cookie.forward,
            header_names,
        })
    }

    /// Sorts a request's headers (lowercase names) into what routing needs:
    /// the whole header map, or only the [`Settings::header_names`]. Names
    /// are bytes (`&str` too): Envoy's, handed over unchecked.
    pub fn scan<'a, N, I>(&self, headers: I) -> RequestHeaders<'a>
    where
        N: AsRef<[u8]>,
        I: IntoIterator<Item = (N, &'a [u8])>,
    {
        let credential = self.edge.as_ref().map(|e| e.credential_header.as_str());
        self.context.scan(&self.marker_header, credential, headers)
    }

    /// Every request header the plan can read. A host that reads headers by
    /// name (every value of each) feeds [`Settings::scan`] these and nothing
    /// else: no copy of the whole header map.
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// In edge mode, the header edits that strip the routing context of an
    /// untrusted request (empty when it carries none, or is trusted; see
    /// [`edge`]). `source_address` is asked only when needed.
    pub fn untrusted_context(
        &self,
        headers: &RequestHeaders<'_>,
        credential: Option<&[u8]>,
        source_address: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Vec<HeaderEdit> {
        let Some(edge) = &self.edge else {
            return Vec::new();
        };
        let edits = edge::context_removal(&self.context, headers);
        if edits.is_empty() || edge.trust(credential, source_address).is_some() {
            return Vec::new();
        }
        edits
    }

    /// Routes one request. `cluster_name` is asked only when the destination
    /// comes from the cluster name and the request has routing context; the
    /// table is consulted only then too.
    pub fn route(
        &self,
        headers: &RequestHeaders<'_>,
        cluster_name: impl FnOnce() -> Option<Vec<u8>>,
        table: &impl RouteLookup,
        pick: usize,
    ) -> Outcome {
        let extracted = self.context.extract(headers);
        self.route_extracted(extracted, headers, cluster_name, table, pick)
    }

    /// [`Settings::route`] for a routing context already read.
    pub(crate) fn route_extracted(
        &self,
        extracted: Extracted,
        headers: &RequestHeaders<'_>,
        cluster_name: impl FnOnce() -> Option<Vec<u8>>,
        table: &impl RouteLookup,
        pick: usize,
    ) -> Outcome {
        if !matches!(
            extracted.context,
            RoutingContext::Found { .. } | RoutingContext::Named { .. }
        ) {
            let decision = decide(&extracted.context, None, table, pick);
            return Outcome {
                decision,
                extracted,
                service: None,
                stamped: false,
            };
        }
        let service = match self.destination.from {
            DestinationFrom::Authority => {
                headers.authority.and_then(|a| self.destination.service(a))
            }
            DestinationFrom::ClusterName => {
                cluster_name().and_then(|c| self.destination.service(&c))
            }
        };
        let decision = decide(&extracted.context, service.as_deref(), table, pick);
        Outcome {
            decision,
            extracted,
            service,
            stamped: false,
        }
    }
}

fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if key::is_valid_context_key_name(name) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            "must start with a-z and hold only a-z 0-9 - _ (at most 200 characters)",
        ))
    }
}

/// Headers a routing source reads (beyond `baggage`, `tracestate`,
/// `traceparent`): a marker or credential header of that name would be read
/// as routing context, or hide it.
pub(crate) fn reads_context(name: &str) -> bool {
    name == "x-ot-span-context" || name.starts_with("ot-baggage-") || name.starts_with("uberctx-")
}

pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> String {
        match Settings::from_json(json.as_bytes()) {
            Ok(_) => String::from("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn names_that_would_collide_are_refused() {
        // Found by the plugin_config fuzz target (fuzz/corpus/plugin_config/regression-*).
        for marker in [
            "x-ot-span-context",
            "ot-baggage-x",
            "uberctx-sandbox-routing-key",
        ] {
            let json = format!(r#"{{"marker_header": "{marker}"}}"#);
            assert!(refused(&json).starts_with("marker_header:"), "{marker}");
        }
        assert!(
            refused(r#"{"keys": ["sandbox-routing-key", "sandbox-overrides"]}"#)
                .starts_with("overrides_key:")
        );
        assert_eq!(
            refused(
                r#"{"keys": ["sandbox-routing-key", "sandbox-overrides"], "overrides_key": ""}"#
            ),
            "accepted"
        );
        assert!(refused(r#"{"": 1}"#).starts_with("configuration: unknown field"));
        for header in ["baggage", "ot-baggage-k", "x-sandbox-router-route"] {
            let json = format!(r#"{{"edge": {{"credential_header": "{header}"}}}}"#);
            assert!(
                refused(&json).starts_with("edge.credential_header:"),
                "{header}"
            );
        }
    }
}
