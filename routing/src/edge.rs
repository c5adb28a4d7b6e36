//! Edge mode: trust at the ingress Envoy.
//!
//! Inside the mesh every sidecar honours the routing context a request
//! carries. At the edge the request comes from the public, and anyone could
//! write `baggage: sandbox-routing-key=...`. With an `edge` section in its
//! configuration, the filter honours routing context only from a trusted
//! source address (CIDRs) or with a valid credential header; from anyone else
//! it removes the context from the request, so no hop further in sees it
//! either, and the request goes to the baseline.
//!
//! What is removed is exactly what any hop could read as routing context
//! under our names (routing keys and the Overrides name), in every format:
//! those members of `baggage` and `tracestate` (the other members pass on
//! untouched), the `ot-baggage-<name>` and `uberctx-<name>` headers, and the
//! whole `x-ot-span-context` (a binary carrier; an outside client has no
//! business sending one). Matching is case-insensitive and ignores the W3C
//! limits, so it is never narrower than what a reader accepts.
//!
//! The credential header is removed from every request at the edge, trusted
//! or not, so it never reaches a service.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::baggage::trim_ows;
use crate::context::{without_query_param, ContextConfig, RequestHeaders, Source};
use crate::error::ConfigError;

/// Default name of the header carrying an edge credential.
pub const DEFAULT_CREDENTIAL_HEADER: &str = "x-sandbox-router-credential";

/// The `edge` section of the filter configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// Downstream addresses whose routing context is honoured, as CIDRs
    /// (`10.0.0.0/8`, `fd00::/8`) or single addresses.
    #[serde(default)]
    pub trusted_cidrs: Vec<String>,
    /// Header carrying a credential; default `x-sandbox-router-credential`.
    pub credential_header: Option<String>,
    /// SHA-256 digests (64 hex digits) of the accepted credentials, so the
    /// configuration never holds a credential itself.
    #[serde(default)]
    pub credential_sha256: Vec<String>,
    /// A cookie that may carry the credential too (browsers cannot add a
    /// header); removed at the edge like the header.
    pub credential_cookie: Option<String>,
}

/// Compiled edge settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePolicy {
    trusted: Vec<IpNet>,
    pub credential_header: String,
    pub credential_cookie: Option<String>,
    credentials: Vec<[u8; 32]>,
}

/// A change to the request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(String),
    Replace(String, Vec<u8>),
}

/// Why a request's routing context was honoured at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Source,
    Credential,
}

impl EdgePolicy {
    pub fn compile(spec: EdgeSpec) -> Result<Self, ConfigError> {
        let mut trusted = Vec::with_capacity(spec.trusted_cidrs.len());
        for (i, text) in spec.trusted_cidrs.iter().enumerate() {
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        format!("edge.trusted_cidrs[{i}]"),
                        "must be a CIDR such as 10.0.0.0/8 or an IP address",
                    )
                })?;
            trusted.push(net.trunc());
        }
        let credential_header = spec
            .credential_header
            .unwrap_or_else(|| DEFAULT_CREDENTIAL_HEADER.to_owned());
        let reserved = [
            "baggage",
            "tracestate",
            "traceparent",
            crate::ORIGINAL_DST_HEADER,
            crate::DEBUG_HEADER,
        ];
        if !crate::is_header_name(&credential_header)
            || reserved.contains(&credential_header.as_str())
            || crate::reads_context(&credential_header)
        {
            return Err(ConfigError::new(
                "edge.credential_header",
                "must be a lowercase header name (a-z 0-9 -) of its own",
            ));
        }
        let mut credentials = Vec::with_capacity(spec.credential_sha256.len());
        for (i, hex) in spec.credential_sha256.iter().enumerate() {
            credentials.push(parse_digest(hex).ok_or_else(|| {
                ConfigError::new(
                    format!("edge.credential_sha256[{i}]"),
                    "must be a SHA-256 digest: 64 hex digits",
                )
            })?);
        }
        if let Some(name) = &spec.credential_cookie {
            if !crate::key::is_valid_context_key_name(name) {
                return Err(ConfigError::new(
                    "edge.credential_cookie",
                    "must start with a-z and hold only a-z 0-9 - _",
                ));
            }
        }
        Ok(EdgePolicy {
            trusted,
            credential_header,
            credential_cookie: spec.credential_cookie,
            credentials,
        })
    }

    /// How many CIDRs are trusted (for the configuration log line).
    pub fn trusted_cidrs(&self) -> usize {
        self.trusted.len()
    }

    /// How many credentials are accepted.
    pub fn credentials(&self) -> usize {
        self.credentials.len()
    }

    /// Whether the request is trusted: by its credential (checked first, it
    /// needs no host call) or by its downstream address (`ip:port` or `ip`,
    /// asked for only when needed).
    pub fn trust(
        &self,
        credential: Option<&[u8]>,
        source_address: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<Trust> {
        if let Some(credential) = credential {
            if !self.credentials.is_empty() {
                let digest: [u8; 32] = Sha256::digest(credential).into();
                if self.credentials.contains(&digest) {
                    return Some(Trust::Credential);
                }
            }
        }
        if self.trusted.is_empty() {
            return None;
        }
        let address = source_address()?;
        let ip = parse_ip(&address)?;
        self.trusted
            .iter()
            .any(|net| net.contains(&ip))
            .then_some(Trust::Source)
    }
}

/// The edits that remove every piece of routing context under our names
/// from a request; empty when it carries none.
pub fn context_removal(config: &ContextConfig, headers: &RequestHeaders<'_>) -> Vec<HeaderEdit> {
    let ours = |element: &[u8]| named(element, config.names());
    let mut edits = Vec::new();
    for (name, lines) in [
        ("baggage", headers.baggage_lines()),
        ("tracestate", headers.tracestate_lines()),
    ] {
        if let Some(edit) = without_members(name, lines, ours) {
            edits.push(edit);
        }
    }
    // Envoy's header maps hold lowercase names, as do our configured names.
    for name in config.prefixed_headers(headers) {
        edits.push(HeaderEdit::Remove(name));
    }
    if headers.has_span_context() {
        edits.push(HeaderEdit::Remove("x-ot-span-context".to_owned()));
    }
    if config.sources.contains(&Source::Query) {
        if let Some(path) = headers
            .path
            .and_then(|p| without_query_param(p, &config.query_param))
        {
            edits.push(HeaderEdit::Replace(":path".to_owned(), path));
        }
    }
    edits
}

/// The list header `name` without the elements `drop` picks, joined into one
/// line; `None` when nothing is dropped.
fn without_members(
    name: &str,
    lines: &[&[u8]],
    drop: impl Fn(&[u8]) -> bool,
) -> Option<HeaderEdit> {
    // Looked for first, so a request without context allocates nothing.
    if !members(lines).any(&drop) {
        return None;
    }
    let kept = kept_members(lines, drop);
    if kept.is_empty() {
        return Some(HeaderEdit::Remove(name.to_owned()));
    }
    Some(HeaderEdit::Replace(name.to_owned(), kept.join(&b","[..])))
}

/// The elements of a list header's lines that `drop` does not pick.
pub(crate) fn kept_members<'a>(lines: &[&'a [u8]], drop: impl Fn(&[u8]) -> bool) -> Vec<&'a [u8]> {
    members(lines).filter(|element| !drop(element)).collect()
}

/// The non-empty elements of a list header's lines, trimmed.
fn members<'a, 'l>(lines: &'l [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> + 'l {
    lines
        .iter()
        .flat_map(|line| line.split(|b| *b == b','))
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

/// Whether a list element (`name=value;props`) is named one of `names`
/// (case-insensitive).
pub(crate) fn named<'n>(element: &[u8], names: impl IntoIterator<Item = &'n str>) -> bool {
    let key = element
        .split(|b| *b == b'=' || *b == b';')
        .next()
        .map(trim_ows)
        .unwrap_or_default();
    names
        .into_iter()
        .any(|name| key.eq_ignore_ascii_case(name.as_bytes()))
}

/// The lowercase hex SHA-256 of a credential, as `credential_sha256` lists it.
pub fn credential_sha256(credential: &[u8]) -> String {
    Sha256::digest(credential)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_ip(address: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(address).ok()?;
    text.parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
        // An IPv4 client on a dual-stack listener shows as ::ffff:a.b.c.d.
        .map(|ip| ip.to_canonical())
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    fn policy(spec: serde_json::Value) -> EdgePolicy {
        EdgePolicy::compile(serde_json::from_value(spec).unwrap()).unwrap()
    }

    fn sha256_hex(text: &str) -> String {
        credential_sha256(text.as_bytes())
    }

    fn addr(text: &str) -> impl FnOnce() -> Option<Vec<u8>> + '_ {
        move || Some(text.as_bytes().to_vec())
    }

    #[test]
    fn trust_by_cidr_and_by_credential() {
        let p = policy(serde_json::json!({
            "trusted_cidrs": ["10.0.0.0/8", "192.168.1.7", "fd00::/8"],
            "credential_sha256": [sha256_hex("s3cret")],
        }));
        assert_eq!(p.trust(None, addr("10.1.2.3:5000")), Some(Trust::Source));
        assert_eq!(p.trust(None, addr("192.168.1.7:1")), Some(Trust::Source));
        assert_eq!(p.trust(None, addr("192.168.1.8:1")), None);
        assert_eq!(p.trust(None, addr("[fd00::1]:80")), Some(Trust::Source));
        assert_eq!(
            p.trust(None, addr("[::ffff:10.0.0.1]:80")),
            Some(Trust::Source)
        );
        assert_eq!(p.trust(None, addr("127.0.0.1:80")), None);
        assert_eq!(p.trust(None, addr("not an address")), None);
        assert_eq!(p.trust(None, || None), None);
        assert_eq!(
            p.trust(Some(b"s3cret"), || panic!("not asked")),
            Some(Trust::Credential)
        );
        assert_eq!(p.trust(Some(b"wrong"), addr("127.0.0.1:80")), None);
        assert_eq!(
            p.trust(Some(b"wrong"), addr("10.0.0.1:80")),
            Some(Trust::Source)
        );
    }

    #[test]
    fn bad_edge_config_names_the_field() {
        let err = |spec: serde_json::Value| {
            EdgePolicy::compile(serde_json::from_value(spec).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(err(serde_json::json!({"trusted_cidrs": ["10.0.0.0/33"]}))
            .contains("edge.trusted_cidrs[0]"));
        assert!(err(serde_json::json!({"credential_sha256": ["abc"]}))
            .contains("edge.credential_sha256[0]"));
        assert!(
            err(serde_json::json!({"credential_sha256": ["zz".repeat(32)]}))
                .contains("edge.credential_sha256[0]")
        );
        assert!(err(serde_json::json!({"credential_header": "X-Bad"}))
            .contains("edge.credential_header"));
    }

    fn removal(headers: &[(&'static str, &'static [u8])]) -> Vec<HeaderEdit> {
        let settings =
            Settings::from_json(br#"{"keys": ["sandbox-routing-key", "sd-routing-key"]}"#).unwrap();
        let scanned = settings.scan(headers.iter().copied());
        context_removal(&settings.context, &scanned)
    }

    fn replace(name: &str, value: &str) -> HeaderEdit {
        HeaderEdit::Replace(name.to_owned(), value.as_bytes().to_vec())
    }

    fn remove(name: &str) -> HeaderEdit {
        HeaderEdit::Remove(name.to_owned())
    }

    #[test]
    fn only_our_members_are_removed() {
        assert_eq!(removal(&[("baggage", b"userId=1,vendor=x")]), vec![]);
        assert_eq!(
            removal(&[(
                "baggage",
                b"userId=1, sandbox-routing-key=abc;p=1 ,vendor=x"
            )]),
            vec![replace("baggage", "userId=1,vendor=x")]
        );
        assert_eq!(
            removal(&[
                ("baggage", b"SANDBOX-ROUTING-KEY=abc"),
                ("baggage", b"sd-routing-key = x, sandbox-overrides=AAAA"),
            ]),
            vec![remove("baggage")]
        );
        assert_eq!(
            removal(&[
                (
                    "traceparent",
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                ),
                ("tracestate", b"dd=s:1,sandbox-routing-key=abc"),
            ]),
            vec![replace("tracestate", "dd=s:1")]
        );
        assert_eq!(
            removal(&[
                ("ot-baggage-sandbox-routing-key", b"abc"),
                ("uberctx-sd-routing-key", b"abc"),
                ("uberctx-other", b"abc"),
                ("x-ot-span-context", b"AAAA"),
            ]),
            vec![
                remove("ot-baggage-sandbox-routing-key"),
                remove("uberctx-sd-routing-key"),
                remove("x-ot-span-context"),
            ]
        );
    }

    #[test]
    fn members_past_the_w3c_limits_are_removed_too() {
        let mut long = "a=1,".repeat(100);
        long.push_str("sandbox-routing-key=abc");
        let long: &'static str = Box::leak(long.into_boxed_str());
        let edits = removal(&[("baggage", long.as_bytes())]);
        let [HeaderEdit::Replace(_, kept)] = edits.as_slice() else {
            panic!("{edits:?}")
        };
        assert!(!kept.windows(7).any(|w| w == b"sandbox"));
    }
}
