//! Which service a request is for.
//!
//! Default: the request's authority (`:authority` / `Host`), lowercased,
//! without port or trailing dot, minus the first matching configured suffix.
//! It is what the application asked for, it needs nothing but a header the
//! filter already scanned, and it works in plain Envoy whatever the clusters
//! are called. Under a mesh whose cluster names carry the service (Istio:
//! `outbound|8080||backend.default.svc.cluster.local`), `cluster_name` names it
//! from the cluster the route picked instead (the host part after the last `|`).

use serde::Deserialize;

use crate::error::ConfigError;
use crate::table::is_valid_service_name;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationFrom {
    #[default]
    Authority,
    ClusterName,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    #[serde(default)]
    pub from: DestinationFrom,
    /// Removed from the end of the host, first match wins, e.g.
    /// `[".default.svc.cluster.local", ".svc.cluster.local"]`.
    #[serde(default)]
    pub strip_suffixes: Vec<String>,
}

/// Compiled destination rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destination {
    pub from: DestinationFrom,
    strip_suffixes: Vec<String>,
}

impl Destination {
    pub fn compile(spec: DestinationSpec) -> Result<Self, ConfigError> {
        for (i, suffix) in spec.strip_suffixes.iter().enumerate() {
            // `.svc.cluster.local` of a host; `_baseline` of a cluster name.
            let rest = suffix.strip_prefix(['.', '_', '-']);
            if !rest.is_some_and(is_valid_service_name) {
                return Err(ConfigError::new(
                    format!("destination.strip_suffixes[{i}]"),
                    "must start with '.', '_' or '-' and then be a lowercase name (a-z 0-9 . _ -)",
                ));
            }
        }
        Ok(Destination {
            from: spec.from,
            strip_suffixes: spec.strip_suffixes,
        })
    }

    /// The service named by `raw` (an authority or a cluster name, per
    /// `from`). `None` when it names no valid service.
    pub fn service(&self, raw: &[u8]) -> Option<String> {
        let host = match self.from {
            DestinationFrom::Authority => strip_port(raw)?,
            DestinationFrom::ClusterName => match raw.iter().rposition(|b| *b == b'|') {
                Some(bar) => raw.get(bar + 1..)?,
                None => raw,
            },
        };
        let host = host.strip_suffix(b".").unwrap_or(host);
        let mut host = std::str::from_utf8(host).ok()?.to_ascii_lowercase();
        if let Some(suffix) = self
            .strip_suffixes
            .iter()
            .find(|s| host.len() > s.len() && host.ends_with(s.as_str()))
        {
            host.truncate(host.len() - suffix.len());
        }
        is_valid_service_name(&host).then_some(host)
    }
}

/// `host[:port]` or `[v6]:port` -> host. `None` for an IPv6 literal without
/// its closing bracket.
pub(crate) fn strip_port(authority: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = authority.strip_prefix(b"[") {
        let close = rest.iter().position(|b| *b == b']')?;
        return rest.get(..close);
    }
    match authority.iter().rposition(|b| *b == b':') {
        Some(colon) if authority.get(colon + 1..)?.iter().all(u8::is_ascii_digit) => {
            authority.get(..colon)
        }
        _ => Some(authority),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(from: DestinationFrom, suffixes: &[&str]) -> Destination {
        Destination::compile(DestinationSpec {
            from,
            strip_suffixes: suffixes.iter().map(|s| (*s).to_owned()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn from_authority() {
        let d = dest(
            DestinationFrom::Authority,
            &[".default.svc.cluster.local", ".svc.cluster.local"],
        );
        assert_eq!(d.service(b"backend").as_deref(), Some("backend"));
        assert_eq!(d.service(b"Backend:8080").as_deref(), Some("backend"));
        assert_eq!(
            d.service(b"backend.default.svc.cluster.local:80")
                .as_deref(),
            Some("backend")
        );
        assert_eq!(
            d.service(b"backend.other.svc.cluster.local.").as_deref(),
            Some("backend.other")
        );
        // A host that is only the suffix is not stripped to nothing.
        assert_eq!(
            d.service(b"svc.cluster.local").as_deref(),
            Some("svc.cluster.local")
        );
        assert_eq!(d.service(b".svc.cluster.local").as_deref(), None);
        assert_eq!(d.service(b"[::1]:80").as_deref(), None);
        assert_eq!(d.service(b"10.0.0.1:80").as_deref(), Some("10.0.0.1"));
        assert_eq!(d.service(b"").as_deref(), None);
        assert_eq!(d.service(b"bad host").as_deref(), None);
        assert_eq!(d.service(b"\xffhost").as_deref(), None);
    }

    #[test]
    fn from_cluster_name() {
        let d = dest(
            DestinationFrom::ClusterName,
            &[".default.svc.cluster.local"],
        );
        assert_eq!(
            d.service(b"outbound|8080||backend.default.svc.cluster.local")
                .as_deref(),
            Some("backend")
        );
        assert_eq!(d.service(b"backend").as_deref(), Some("backend"));
        assert_eq!(d.service(b"outbound|8080||").as_deref(), None);
    }

    #[test]
    fn suffixes_are_checked() {
        let spec = DestinationSpec {
            from: DestinationFrom::Authority,
            strip_suffixes: vec![".ok".into(), "no-dot".into()],
        };
        assert_eq!(
            Destination::compile(spec).unwrap_err().field,
            "destination.strip_suffixes[1]"
        );
    }
}
