//! How people and workloads reach a sandbox without writing headers: a
//! preview host and a cookie for browsers and phones at the edge, a URL
//! query parameter for webhooks. `serve` is told what the edge's filter
//! configuration enables (`--preview-host`, `--preview-cookie`,
//! `--query-param`), and every sandbox and route group in the API then
//! carries ready-to-use values in `access`.

use sandbox_router_routing::HostPattern;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The edge's `preview_host` pattern, e.g. `{sandbox}.preview.example.com`.
    pub preview_host: Option<HostPattern>,
    /// The edge's `cookie.name`.
    pub cookie: Option<String>,
    /// The `query.param` of the edge and sidecars.
    pub query_param: Option<String>,
}

impl Access {
    /// `access` of the sandbox or route group `name` with routing key `key`;
    /// `None` when nothing is configured.
    pub fn of(&self, name: &str, key: &str) -> Option<Value> {
        let mut access = Map::new();
        if let Some(pattern) = &self.preview_host {
            access.insert(
                "preview_url".into(),
                json!(format!("https://{}/", pattern.host_of(name))),
            );
        }
        if let Some(cookie) = &self.cookie {
            // What a tester pastes into the browser's console on the app's
            // domain: `document.cookie = "..."`.
            access.insert("cookie".into(), json!(format!("{cookie}={key}; Path=/")));
        }
        if let Some(param) = &self.query_param {
            access.insert(
                "query".into(),
                json!(sandbox_router_routing::mint::query_param(param, key)),
            );
        }
        (!access.is_empty()).then_some(Value::Object(access))
    }

    /// `value` (a sandbox or route group as JSON) with its `access`.
    pub fn annotate(&self, mut value: Value) -> Value {
        let name = value["name"].as_str().unwrap_or_default().to_owned();
        let key = value["routing_key"].as_str().unwrap_or_default().to_owned();
        if let (Some(access), Some(object)) = (self.of(&name, &key), value.as_object_mut()) {
            object.insert("access".into(), access);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lists_what_is_configured() {
        assert_eq!(Access::default().of("s", "k"), None);
        let access = Access {
            preview_host: HostPattern::parse("{sandbox}.preview.example.com"),
            cookie: Some("sandbox-routing-key".into()),
            query_param: Some("sr".into()),
        };
        assert_eq!(
            access.annotate(json!({"name": "backend-v2", "routing_key": "abc"})),
            json!({
                "name": "backend-v2",
                "routing_key": "abc",
                "access": {
                    "preview_url": "https://backend-v2.preview.example.com/",
                    "cookie": "sandbox-routing-key=abc; Path=/",
                    "query": "sr=abc"
                }
            })
        );
    }
}
