//! Edge mode (`Settings::untrusted_context`): at the ingress, routing context
//! from an untrusted client is removed from the request. Input: header lines
//! `name: value` (see `header_lines`); a `:source` line stands for the
//! downstream address the filter asks the host for.
//!
//! Invariants: a trusted request (credential whose SHA-256 is configured, or
//! a source address inside a trusted CIDR, IPv4-mapped IPv6 included) is left
//! alone; for any other request, once the edits are applied (a header
//! removed or replaced in full, as the filter does), no routing context is
//! left to read, in any source, for this hop or any later one; the edits only
//! touch headers a source reads; members of `baggage` and `tracestate` that
//! are not ours survive.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox_router_fuzz::{header_lines, settings_once};
use sandbox_router_routing::edge::credential_sha256;
use sandbox_router_routing::{HeaderEdit, RoutingContext, Settings};

const CREDENTIAL: &[u8] = b"s3cret-credential";
const CREDENTIAL_HEADER: &str = "x-sandbox-router-credential";

fn config() -> Vec<u8> {
    format!(
        r#"{{
  "keys": ["sandbox-routing-key", "sd-routing-key"],
  "overrides_key": "sandbox-overrides",
  "edge": {{
    "trusted_cidrs": ["10.0.0.0/8", "fd00::/8", "192.168.1.7"],
    "credential_header": "{CREDENTIAL_HEADER}",
    "credential_sha256": ["{}"]
  }}
}}"#,
        credential_sha256(CREDENTIAL)
    )
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    let settings = settings_once(&SETTINGS, &config());
    let lines = header_lines(data);
    let source = lines
        .iter()
        .find(|(n, _)| *n == ":source")
        .map(|(_, v)| v.to_vec());
    let credential = lines
        .iter()
        .find(|(n, _)| *n == CREDENTIAL_HEADER)
        .map(|(_, v)| *v);

    let scanned = settings.scan(lines.iter().copied());
    let edits = settings.untrusted_context(&scanned, credential, || source.clone());

    if credential == Some(CREDENTIAL) || source.as_deref().is_some_and(trusted) {
        assert!(edits.is_empty(), "a trusted request was edited: {edits:?}");
        return;
    }
    // The request as the next filter and the next hop see it.
    let mut after: Vec<(&str, Vec<u8>)> = lines.iter().map(|(n, v)| (*n, v.to_vec())).collect();
    for edit in &edits {
        let name = match edit {
            HeaderEdit::Remove(name) | HeaderEdit::Replace(name, _) => name.as_str(),
        };
        assert!(
            matches!(name, "baggage" | "tracestate" | "x-ot-span-context")
                || name.starts_with("ot-baggage-")
                || name.starts_with("uberctx-"),
            "edit of {name}"
        );
        after.retain(|(n, _)| *n != name);
        if let HeaderEdit::Replace(name, value) = edit {
            after.push((name.as_str(), value.clone()));
        }
    }
    let rescanned = settings.scan(after.iter().map(|(n, v)| (*n, v.as_slice())));
    let context = settings.context.extract(&rescanned).context;
    assert_eq!(
        context,
        RoutingContext::None,
        "context left after {edits:?}"
    );
    assert!(
        settings
            .untrusted_context(&rescanned, None, || None)
            .is_empty(),
        "removal is not complete in one pass"
    );

    // Members that are not ours pass on.
    for edit in &edits {
        if let HeaderEdit::Replace(name, value) = edit {
            let kept: Vec<&[u8]> = value.split(|b| *b == b',').collect();
            for (n, v) in &lines {
                if n != name {
                    continue;
                }
                for element in v.split(|b| *b == b',').map(trim) {
                    if !element.is_empty() && !ours(element) {
                        assert!(kept.contains(&element), "{element:?} dropped");
                    }
                }
            }
        }
    }
});

fn trim(s: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// A member named (any case) like one of the configured names.
fn ours(element: &[u8]) -> bool {
    let key = trim(
        element
            .split(|b| *b == b'=' || *b == b';')
            .next()
            .unwrap_or_default(),
    );
    ["sandbox-routing-key", "sd-routing-key", "sandbox-overrides"]
        .iter()
        .any(|name| key.eq_ignore_ascii_case(name.as_bytes()))
}

fn trusted(address: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(address) else {
        return false;
    };
    let ip = match text.parse::<SocketAddr>() {
        Ok(a) => a.ip(),
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return false,
        },
    };
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets()[0] == 10 || v4.octets() == [192, 168, 1, 7],
        IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
    }
}
