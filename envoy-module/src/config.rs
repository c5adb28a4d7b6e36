//! The module's configuration (the `filter_config` string of the Envoy
//! filter): the proxy-wasm filter's JSON exactly as `docs/configuration.md`
//! describes it, plus one section of the native host's own, `control`:
//! where the pushed table comes from (the Wasm build has a singleton
//! `WasmService` with its own configuration for that instead).
//!
//! ```json
//! {"keys": ["sandbox-routing-key"], "debug_header": false,
//!  "control": {"server": "http://127.0.0.1:7070", "node_id": "frontend-sidecar", "token": "..."}}
//! ```
//!
//! `control` is split off before the rest goes to the routing crate, so the
//! filter's fields, defaults and error messages are the Wasm filter's, and the
//! Wasm filter's accepted JSON is unchanged (it refuses `control`).

use std::time::Duration;

use sandbox_router_routing::error::parse_json;
use sandbox_router_routing::{ConfigError, ConfigSpec, Settings};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A parsed, validated module configuration.
#[derive(Debug)]
pub struct ModuleConfig {
    pub settings: Settings,
    /// Where the pushed table comes from; `None` with a static `table`.
    pub control: Option<ControlSpec>,
}

/// The `control` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSpec {
    /// The control service's gRPC address, `http://HOST:PORT`.
    pub server: String,
    /// This proxy's name in `sandbox-router status` (the native module cannot
    /// read Envoy's node id when it is configured: give the same value).
    pub node_id: String,
    /// Bearer token for the watch stream (the control service's `--watch-token`).
    #[serde(default)]
    pub token: Option<String>,
    /// Reconnect backoff: starts here, doubles up to `max_backoff_ms`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
}

fn default_initial_backoff() -> u64 {
    100
}
fn default_max_backoff() -> u64 {
    5000
}

impl ControlSpec {
    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let address = self.server.strip_prefix("http://").unwrap_or_default();
        let (host, port) = address.rsplit_once(':').unwrap_or_default();
        let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:_".contains(&b));
        if !port_ok || !host_ok {
            return Err(ConfigError::new(
                "control.server",
                "must be http://HOST:PORT (the control service's gRPC address, e.g. http://127.0.0.1:7070)",
            ));
        }
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if self.node_id.is_empty() || self.node_id.len() > 253 || !printable(&self.node_id) {
            return Err(ConfigError::new(
                "control.node_id",
                "must name this proxy: 1-253 visible ASCII characters (what `sandbox-router status` lists)",
            ));
        }
        if let Some(token) = &self.token {
            if token.is_empty() || token.len() > 4096 || !printable(token) {
                return Err(ConfigError::new(
                    "control.token",
                    "must be 1-4096 visible ASCII characters (the control service's --watch-token)",
                ));
            }
        }
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            return Err(ConfigError::new(
                "control.max_backoff_ms",
                "backoff must be positive and max_backoff_ms >= initial_backoff_ms",
            ));
        }
        Ok(())
    }
}

/// Parses the module's configuration. An error names the field, e.g.
/// `keys[0]: ...` (a filter field, as the Wasm filter names it) or
/// `control.server: ...`.
pub fn parse(bytes: &[u8]) -> Result<ModuleConfig, ConfigError> {
    let mut document: Map<String, Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        parse_json(bytes, "configuration")?
    };
    let control = match document.remove("control") {
        None | Some(Value::Null) => None,
        Some(section) => {
            let spec: ControlSpec = from_value(section, "control")?;
            spec.validate()?;
            Some(spec)
        }
    };
    let spec: ConfigSpec = from_value(Value::Object(document), "")?;
    let settings = Settings::compile(spec)?;
    match (&settings.table, &control) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "control",
            "not used with a static `table`: give one of them (a static table, or the control service's pushed one)",
        )),
        (None, None) => Err(ConfigError::new(
            "control",
            "required without a static `table`: the pushed table comes from the control service \
             (e.g. \"control\": {\"server\": \"http://127.0.0.1:7070\", \"node_id\": \"my-proxy\"})",
        )),
        _ => Ok(ModuleConfig { settings, control }),
    }
}

/// Deserializes `value`; an error names the field below `root` (`""`: the
/// document itself, named `configuration` as the Wasm filter names it).
fn from_value<T: serde::de::DeserializeOwned>(value: Value, root: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = match (root, path.as_str()) {
            ("", "." | "") => "configuration".to_owned(),
            ("", path) => path.to_owned(),
            (root, "." | "") => root.to_owned(),
            (root, path) => format!("{root}.{path}"),
        };
        ConfigError::new(field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => e.to_string(),
        }
    }

    const CONTROL: &str = r#""control": {"server": "http://127.0.0.1:7070", "node_id": "n1"}"#;

    #[test]
    fn the_filter_fields_are_the_wasm_filters() {
        let config = parse(format!(r#"{{"debug_header": true, {CONTROL}}}"#).as_bytes()).unwrap();
        assert!(config.settings.debug_header);
        let control = config.control.unwrap();
        assert_eq!(control.server, "http://127.0.0.1:7070");
        assert_eq!(control.node_id, "n1");
        assert_eq!(control.token, None);
        assert_eq!(control.initial_backoff(), Duration::from_millis(100));
        assert_eq!(control.max_backoff(), Duration::from_millis(5000));
        // The static table example needs no control section.
        let table = r#"{"table": {"entries": [{"routing_key": "k1", "forks": [{"service": "backend", "endpoints": ["10.0.0.1:80"]}]}]}}"#;
        let config = parse(table.as_bytes()).unwrap();
        assert!(config.control.is_none());
        assert_eq!(config.settings.table.as_ref().map(|t| t.len()), Some(1));
    }

    #[test]
    fn errors_name_the_field_as_the_wasm_filter_does() {
        // The same messages as the Wasm filter's (integration-tests/tests/config.rs).
        for (json, expected) in [
            (r#"{"keyz": []}"#, "keyz: unknown field `keyz`"),
            (r#"{"keys": ["Bad Name"]}"#, "keys[0]: must start with a-z"),
            (
                r#"{"sources": ["baggage", "smoke-signals"]}"#,
                "sources[1]: unknown variant `smoke-signals`",
            ),
            ("not json", "configuration: expected ident"),
            (
                r#"{"table": {"entries": [{"routing_key": 5}]}}"#,
                "table.entries[0].routing_key: invalid type",
            ),
            (r#"[1]"#, "configuration: invalid type: sequence"),
        ] {
            let with_control = json.replacen('{', &format!("{{{CONTROL}, "), 1);
            let json = if json.starts_with('{') {
                with_control.as_str()
            } else {
                json
            };
            let err = refused(json);
            assert!(err.starts_with(expected), "{json}: {err}");
        }
    }

    #[test]
    fn the_control_section_is_checked() {
        for (control, expected) in [
            (
                r#"{"server": "127.0.0.1:7070", "node_id": "n"}"#,
                "control.server: must be http://HOST:PORT",
            ),
            (
                r#"{"server": "http://127.0.0.1", "node_id": "n"}"#,
                "control.server:",
            ),
            (
                r#"{"server": "http://127.0.0.1:0", "node_id": "n"}"#,
                "control.server:",
            ),
            (
                r#"{"server": "http://:7070", "node_id": "n"}"#,
                "control.server:",
            ),
            (
                r#"{"server": "http://a b:7070", "node_id": "n"}"#,
                "control.server:",
            ),
            (
                r#"{"server": "http://c:7070", "node_id": ""}"#,
                "control.node_id: must name this proxy",
            ),
            (
                r#"{"server": "http://c:7070", "node_id": "a b"}"#,
                "control.node_id:",
            ),
            (
                r#"{"server": "http://c:7070"}"#,
                "control: missing field `node_id`",
            ),
            (
                r#"{"server": "http://c:7070", "node_id": "n", "token": ""}"#,
                "control.token:",
            ),
            (
                r#"{"server": "http://c:7070", "node_id": "n", "token": "a\nb"}"#,
                "control.token:",
            ),
            (
                r#"{"server": "http://c:7070", "node_id": "n", "initial_backoff_ms": 0}"#,
                "control.max_backoff_ms:",
            ),
            (
                r#"{"server": "http://c:7070", "node_id": "n", "max_backoff_ms": 5}"#,
                "control.max_backoff_ms:",
            ),
            (
                r#"{"server": "http://c:7070", "node_id": "n", "cluster": "x"}"#,
                "control.cluster: unknown field",
            ),
            (
                r#"{"server": 7, "node_id": "n"}"#,
                "control.server: invalid type",
            ),
            (r#""http://c:7070""#, "control: invalid type: string"),
        ] {
            let err = refused(&format!(r#"{{"control": {control}}}"#));
            assert!(err.starts_with(expected), "{control}: {err}");
        }
        let ok = r#"{"control": {"server": "http://control.example:7070", "node_id": "edge-1", "token": "w4tch", "initial_backoff_ms": 50, "max_backoff_ms": 50}}"#;
        let control = parse(ok.as_bytes()).unwrap().control.unwrap();
        assert_eq!(control.token.as_deref(), Some("w4tch"));
        assert_eq!(control.max_backoff(), Duration::from_millis(50));
    }

    #[test]
    fn a_table_source_is_required_and_only_one() {
        assert!(refused("").starts_with("control: required without a static `table`"));
        assert!(refused(r#"{"control": null}"#).starts_with("control: required"));
        let both = format!(r#"{{"table": {{"entries": []}}, {CONTROL}}}"#);
        assert!(refused(&both).starts_with("control: not used with a static `table`"));
    }
}
