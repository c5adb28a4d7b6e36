//! Reading the routing context of a request: a routing key and/or an
//! `Overrides` message, from the first configured source that carries one.
//!
//! | source              | routing key                        | Overrides (base64 protobuf)      |
//! |---------------------|------------------------------------|----------------------------------|
//! | `baggage`           | member `<key>=<pct-encoded>`        | member `<overrides_key>=...`     |
//! | `ot-baggage`        | header `ot-baggage-<key>`           | header `ot-baggage-<overrides_key>` |
//! | `uberctx`           | header `uberctx-<key>`              | header `uberctx-<overrides_key>` |
//! | `tracestate`        | member `<key>=...` (valid `traceparent` only) | -                     |
//! | `x-ot-span-context` | baggage item `<key>`                | baggage item `<overrides_key>`   |
//! | `query` (off unless listed) | URL query parameter `<query.param>` (webhooks) | -                 |
//! | `cookie` (off unless listed) | cookie `<cookie.name>` (browsers)  | -                                |
//! | `preview-host` (off unless listed) | the sandbox named by the host, `{sandbox}.preview.example.com` | - |
//!
//! Sources are tried in the configured order and the first that carries any
//! of our keys decides alone; a later source is never mixed in. Within a
//! source, `key` names are tried in configured order (the first is the
//! canonical name, the rest aliases such as Signadot's `sd-routing-key`).
//! The same name given twice with different values is ambiguous: malformed.

use std::borrow::Cow;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use prost::Message as _;
use sandbox_router_proto::lightstep::BinaryCarrier;
use sandbox_router_proto::v1::Overrides;
use serde::Deserialize;

use smallvec::SmallVec;

use crate::baggage;
use crate::edge::HeaderEdit;
use crate::key::is_valid_routing_key;
use crate::percent::decode_strict;
use crate::tracecontext::{self, TracestateMember};
use crate::MAX_KEYS;

/// Header Envoy's ORIGINAL_DST cluster reads the upstream address from.
pub const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";
/// Longest `x-ot-span-context` value decoded.
pub const MAX_SPAN_CONTEXT_LEN: usize = 8192;
/// Longest base64 `Overrides` value decoded, and most entries honoured.
pub const MAX_OVERRIDES_LEN: usize = 4096;
pub const MAX_OVERRIDES_ENTRIES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Baggage,
    OtBaggage,
    Uberctx,
    Tracestate,
    XOtSpanContext,
    /// A URL query parameter (`?sandbox-routing-key=KEY`): for callers that
    /// cannot send our headers, such as a third party's webhook. Off unless
    /// listed in `sources`.
    Query,
    /// A cookie (browsers and phones at the edge). Off unless listed.
    Cookie,
    /// The host names a sandbox (`{sandbox}.preview.example.com`); its key
    /// comes from the table. Off unless listed.
    PreviewHost,
}

impl Source {
    /// Default precedence: the W3C standard first, then the OpenTracing-era
    /// formats, the binary carrier last (costliest to decode).
    pub const DEFAULT_ORDER: [Source; 5] = [
        Source::Baggage,
        Source::OtBaggage,
        Source::Uberctx,
        Source::Tracestate,
        Source::XOtSpanContext,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Baggage => "baggage",
            Source::OtBaggage => "ot-baggage",
            Source::Uberctx => "uberctx",
            Source::Tracestate => "tracestate",
            Source::XOtSpanContext => "x-ot-span-context",
            Source::Query => "query",
            Source::Cookie => "cookie",
            Source::PreviewHost => "preview-host",
        }
    }

    /// Whether the applications pass this source on from hop to hop. The
    /// plan carries a key found in any other source on in `baggage`.
    pub fn propagates(self) -> bool {
        !matches!(self, Source::Query | Source::Cookie | Source::PreviewHost)
    }
}

/// Compiled context settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextConfig {
    /// Routing key names, canonical first.
    pub keys: Vec<String>,
    /// Name of the item carrying a base64 `Overrides`; `None` disables Overrides.
    pub overrides_key: Option<String>,
    pub sources: Vec<Source>,
    /// The URL query parameter of the `query` source.
    pub query_param: String,
    /// The cookie of the `cookie` source.
    pub cookie_name: String,
    /// The host pattern of the `preview-host` source.
    pub preview_host: Option<HostPattern>,
    /// Collect `cookie` lines: the `cookie` source, or an edge credential cookie.
    pub reads_cookies: bool,
}

/// `{sandbox}.preview.example.com`: a literal prefix and suffix around one
/// DNS label, the sandbox name (case-insensitive, any port ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    pub prefix: String,
    pub suffix: String,
}

impl HostPattern {
    pub const PLACEHOLDER: &'static str = "{sandbox}";

    /// Parses a pattern with exactly one `{sandbox}`; `None` otherwise.
    pub fn parse(pattern: &str) -> Option<HostPattern> {
        let (prefix, suffix) = pattern.split_once(Self::PLACEHOLDER)?;
        let literal = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        (literal(prefix) && literal(suffix) && !(prefix.is_empty() && suffix.is_empty())).then(
            || HostPattern {
                prefix: prefix.to_owned(),
                suffix: suffix.to_owned(),
            },
        )
    }

    /// The sandbox name an authority (`host[:port]`) carries, if it matches.
    pub fn sandbox(&self, authority: &[u8]) -> Option<String> {
        let host = crate::destination::strip_port(authority)?;
        let host = host.strip_suffix(b".").unwrap_or(host);
        if host.len() < self.prefix.len() + self.suffix.len() {
            return None;
        }
        let (head, rest) = host.split_at(self.prefix.len());
        let (name, tail) = rest.split_at(rest.len() - self.suffix.len());
        if !head.eq_ignore_ascii_case(self.prefix.as_bytes())
            || !tail.eq_ignore_ascii_case(self.suffix.as_bytes())
        {
            return None;
        }
        // Sandbox names are lowercase DNS labels; hosts are case-insensitive.
        let name = std::str::from_utf8(name).ok()?.to_ascii_lowercase();
        crate::key::is_valid_sandbox_name(&name).then_some(name)
    }

    /// The host of a sandbox's preview, e.g. `feature-x.preview.example.com`.
    pub fn host_of(&self, sandbox: &str) -> String {
        format!("{}{sandbox}{}", self.prefix, self.suffix)
    }
}

/// Which of our names a prefixed header (`ot-baggage-*`, `uberctx-*`) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Index into `ContextConfig::keys`.
    Key(usize),
    Overrides,
}

/// The headers of one request that routing looks at, borrowed from the
/// request's header map in one pass. Up to two lines of each name are kept
/// without allocating ([`Lines`]), so a request without routing context (even
/// one with `traceparent`, `tracestate` or other `baggage`) costs one scan
/// and no allocation here.
#[derive(Debug, Clone, Default)]
pub struct RequestHeaders<'a> {
    pub authority: Option<&'a [u8]>,
    /// The client sent `x-envoy-original-dst-host` or the marker header.
    pub internal_headers: bool,
    /// Edge mode: the credential header's value (the first, if repeated).
    pub credential: Option<&'a [u8]>,
    /// `:path`, with its query (read only when the `query` source is enabled).
    pub path: Option<&'a [u8]>,
    /// `cookie` lines (read only when [`ContextConfig::reads_cookies`]).
    pub cookies: Lines<&'a [u8]>,
    baggage: Lines<&'a [u8]>,
    ot_baggage: Lines<(Slot, &'a [u8])>,
    uberctx: Lines<(Slot, &'a [u8])>,
    traceparent: Lines<&'a [u8]>,
    tracestate: Lines<&'a [u8]>,
    ot_span_context: Lines<&'a [u8]>,
}

/// The lines of one header name: the first two inline, more on the heap
/// (a request rarely repeats a header), so scanning allocates nothing for
/// the usual request.
pub type Lines<T> = SmallVec<[T; 2]>;

impl RequestHeaders<'_> {
    pub fn baggage_lines(&self) -> &[&[u8]] {
        &self.baggage
    }

    pub(crate) fn tracestate_lines(&self) -> &[&[u8]] {
        &self.tracestate
    }

    pub(crate) fn has_span_context(&self) -> bool {
        !self.ot_span_context.is_empty()
    }
}

/// What a request's headers say, before the table is consulted.
#[derive(Debug, Clone, PartialEq)]
pub enum RoutingContext {
    /// No enabled source carries any of our names.
    None,
    Found {
        source: Source,
        key: Option<String>,
        overrides: Option<Overrides>,
    },
    /// The deciding source names a sandbox (a preview host); its routing
    /// key comes from the table.
    Named { source: Source, sandbox: String },
    /// The deciding source carries our name but its value cannot be used.
    Malformed { source: Source, why: &'static str },
}

/// The routing context plus what was ignored on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub context: RoutingContext,
    /// Baggage went past the W3C limits (64 members / 8192 bytes); members
    /// beyond them were not read.
    pub baggage_over_limit: bool,
}

impl ContextConfig {
    /// Sorts the request's headers into what routing needs. `marker` is the
    /// filter's internal marker header name. Header names must be lowercase
    /// (Envoy's header maps are); they are compared as bytes, so a host
    /// hands over Envoy's names as they are (no UTF-8 check per name).
    /// `credential` names the edge credential header, if any.
    pub fn scan<'a, N, I>(
        &self,
        marker: &str,
        credential: Option<&str>,
        headers: I,
    ) -> RequestHeaders<'a>
    where
        N: AsRef<[u8]>,
        I: IntoIterator<Item = (N, &'a [u8])>,
    {
        let mut seen = RequestHeaders::default();
        let credential = credential.map(str::as_bytes);
        for (name, value) in headers {
            let name = name.as_ref();
            match name {
                b":authority" => seen.authority = Some(value),
                b":path" if self.sources.contains(&Source::Query) => seen.path = Some(value),
                b"cookie" if self.reads_cookies => seen.cookies.push(value),
                b"baggage" => seen.baggage.push(value),
                b"traceparent" => seen.traceparent.push(value),
                b"tracestate" => seen.tracestate.push(value),
                b"x-ot-span-context" => seen.ot_span_context.push(value),
                _ if name == ORIGINAL_DST_HEADER.as_bytes() => seen.internal_headers = true,
                _ if name == marker.as_bytes() => seen.internal_headers = true,
                _ if Some(name) == credential => {
                    seen.credential = seen.credential.or(Some(value));
                }
                _ => {
                    if let Some(rest) = name.strip_prefix(b"ot-baggage-") {
                        if let Some(slot) = self.slot(rest) {
                            seen.ot_baggage.push((slot, value));
                        }
                    } else if let Some(rest) = name.strip_prefix(b"uberctx-") {
                        if let Some(slot) = self.slot(rest) {
                            seen.uberctx.push((slot, value));
                        }
                    }
                }
            }
        }
        seen
    }

    /// Our names as members of a list header (baggage, tracestate): the
    /// routing key names, canonical first, then the Overrides item's.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys
            .iter()
            .chain(self.overrides_key.as_ref())
            .map(String::as_str)
    }

    /// Every header name `scan` can use, for a host that reads headers one
    /// name at a time (scanning only these gives the same result as
    /// scanning the whole map).
    pub fn header_names(&self, marker: &str, credential: Option<&str>) -> Vec<String> {
        let fixed = [
            ":authority",
            "baggage",
            "traceparent",
            "tracestate",
            "x-ot-span-context",
            ORIGINAL_DST_HEADER,
            marker,
        ];
        let path = self.sources.contains(&Source::Query).then_some(":path");
        let cookie = self.reads_cookies.then_some("cookie");
        fixed
            .into_iter()
            .chain(credential)
            .chain(path)
            .chain(cookie)
            .map(str::to_owned)
            .chain(
                self.names()
                    .flat_map(|name| [format!("ot-baggage-{name}"), format!("uberctx-{name}")]),
            )
            .collect()
    }

    /// The `ot-baggage-<name>` and `uberctx-<name>` headers the request
    /// carries under our names.
    pub(crate) fn prefixed_headers(&self, headers: &RequestHeaders<'_>) -> Vec<String> {
        let name = |slot: &Slot| match slot {
            Slot::Key(i) => self.keys.get(*i).map(String::as_str),
            Slot::Overrides => self.overrides_key.as_deref(),
        };
        let mut found: Vec<String> = Vec::new();
        for (prefix, seen) in [
            ("ot-baggage-", &headers.ot_baggage),
            ("uberctx-", &headers.uberctx),
        ] {
            for (slot, _) in seen.iter() {
                if let Some(name) = name(slot) {
                    let header = format!("{prefix}{name}");
                    if !found.contains(&header) {
                        found.push(header);
                    }
                }
            }
        }
        found
    }

    fn slot(&self, name: &[u8]) -> Option<Slot> {
        if let Some(i) = self.keys.iter().position(|k| k.as_bytes() == name) {
            return Some(Slot::Key(i));
        }
        (self.overrides_key.as_deref().map(str::as_bytes) == Some(name)).then_some(Slot::Overrides)
    }

    /// Reads the routing context from the scanned headers.
    pub fn extract(&self, headers: &RequestHeaders<'_>) -> Extracted {
        let mut baggage_over_limit = false;
        for source in &self.sources {
            let source = *source;
            let found = match source {
                Source::Baggage => {
                    let (found, over) = self.read_baggage(&headers.baggage);
                    baggage_over_limit = over;
                    found
                }
                Source::OtBaggage => self.read_prefixed(&headers.ot_baggage),
                Source::Uberctx => self.read_prefixed(&headers.uberctx),
                Source::Tracestate => self.read_tracestate(headers),
                Source::XOtSpanContext => self.read_span_context(&headers.ot_span_context),
                Source::Query => self.read_query(headers.path),
                Source::Cookie => self.read_cookie(&headers.cookies),
                Source::PreviewHost => match self.preview_sandbox(headers) {
                    Some(sandbox) => {
                        return Extracted {
                            context: RoutingContext::Named { source, sandbox },
                            baggage_over_limit,
                        }
                    }
                    None => continue,
                },
            };
            let context = match found {
                Ok(None) => continue,
                Ok(Some(raw)) => match raw.decode() {
                    Ok((key, overrides)) => RoutingContext::Found {
                        source,
                        key,
                        overrides,
                    },
                    Err(why) => RoutingContext::Malformed { source, why },
                },
                Err(why) => RoutingContext::Malformed { source, why },
            };
            return Extracted {
                context,
                baggage_over_limit,
            };
        }
        Extracted {
            context: RoutingContext::None,
            baggage_over_limit,
        }
    }

    fn read_baggage<'h>(
        &self,
        lines: &[&'h [u8]],
    ) -> (Result<Option<RawContext<'h>>, &'static str>, bool) {
        if lines.is_empty() {
            return (Ok(None), false);
        }
        let mut found = Candidates::new(Encoding::Percent);
        let mut members = baggage::Members::new(lines);
        for member in members.by_ref() {
            let Ok(name) = std::str::from_utf8(member.key) else {
                continue;
            };
            let Some(slot) = self.slot(name.as_bytes()) else {
                continue;
            };
            let offered = match member.value {
                Some(value) => found.offer(slot, Cow::Borrowed(value)),
                None => Err("baggage member value breaks the W3C grammar"),
            };
            if let Err(why) = offered {
                return (Err(why), members.over_limit());
            }
        }
        (Ok(found.finish()), members.over_limit())
    }

    fn read_prefixed<'h>(
        &self,
        headers: &[(Slot, &'h [u8])],
    ) -> Result<Option<RawContext<'h>>, &'static str> {
        if headers.is_empty() {
            // The usual request: no Candidates to set up and search.
            return Ok(None);
        }
        let mut found = Candidates::new(Encoding::Percent);
        for (slot, value) in headers {
            found.offer(*slot, Cow::Borrowed(*value))?;
        }
        Ok(found.finish())
    }

    fn read_tracestate<'h>(
        &self,
        headers: &RequestHeaders<'h>,
    ) -> Result<Option<RawContext<'h>>, &'static str> {
        if headers.tracestate.is_empty()
            || !tracecontext::is_valid_traceparent(&headers.traceparent)
        {
            return Ok(None);
        }
        let mut found = Candidates::new(Encoding::Raw);
        for (i, key) in self.keys.iter().enumerate() {
            match tracecontext::tracestate_member(&headers.tracestate, key.as_bytes()) {
                TracestateMember::Absent => {}
                TracestateMember::Value(value) => {
                    found.offer(Slot::Key(i), Cow::Borrowed(value))?
                }
                TracestateMember::Invalid => return Err("tracestate member repeated or invalid"),
            }
        }
        Ok(found.finish())
    }

    fn read_query<'h>(
        &self,
        path: Option<&'h [u8]>,
    ) -> Result<Option<RawContext<'h>>, &'static str> {
        let mut found = Candidates::new(Encoding::Percent);
        for (name, value) in query_params(path) {
            if name == self.query_param.as_bytes() {
                found.offer(Slot::Key(0), Cow::Borrowed(value))?;
            }
        }
        Ok(found.finish())
    }

    fn read_cookie<'h>(&self, lines: &[&'h [u8]]) -> Result<Option<RawContext<'h>>, &'static str> {
        let mut found = Candidates::new(Encoding::Percent);
        for (name, value) in cookies(lines) {
            if name == self.cookie_name.as_bytes() {
                found.offer(Slot::Key(0), Cow::Borrowed(value))?;
            }
        }
        Ok(found.finish())
    }

    /// The sandbox the request's host names, with the `preview-host` source.
    pub fn preview_sandbox(&self, headers: &RequestHeaders<'_>) -> Option<String> {
        if !self.sources.contains(&Source::PreviewHost) {
            return None;
        }
        self.preview_host.as_ref()?.sandbox(headers.authority?)
    }

    fn read_span_context(
        &self,
        lines: &[&[u8]],
    ) -> Result<Option<RawContext<'static>>, &'static str> {
        let Some(first) = lines.first() else {
            return Ok(None);
        };
        if lines.iter().any(|line| line != first) {
            return Err("several different x-ot-span-context headers");
        }
        if first.len() > MAX_SPAN_CONTEXT_LEN {
            return Err("x-ot-span-context longer than 8192 bytes");
        }
        let bytes = decode_base64(first).ok_or("x-ot-span-context is not base64")?;
        let carrier = BinaryCarrier::decode(bytes.as_slice())
            .map_err(|_| "x-ot-span-context is not a BinaryCarrier protobuf")?;
        let Some(ctx) = carrier.basic_ctx else {
            return Ok(None);
        };
        let mut found = Candidates::new(Encoding::Raw);
        for (name, value) in ctx.baggage_items {
            if let Some(slot) = self.slot(name.as_bytes()) {
                found.offer(slot, Cow::Owned(value.into_bytes()))?;
            }
        }
        Ok(found.finish())
    }
}

/// A path split as a URL parser does: `/p?a=1#f` -> (`/p`, `a=1`, `#f`). The
/// fragment starts at the first `#`, and the query at the first `?` before it.
fn split_path(path: &[u8]) -> (&[u8], Option<&[u8]>, &[u8]) {
    let (head, fragment) = match path.iter().position(|b| *b == b'#') {
        Some(at) => path.split_at(at),
        None => (path, &b""[..]),
    };
    match head.iter().position(|b| *b == b'?') {
        Some(at) => {
            let (base, query) = head.split_at(at);
            (base, query.get(1..), fragment)
        }
        None => (head, None, fragment),
    }
}

/// The `name=value` pairs of a path's query (`/p?a=1&b=2#f`), raw.
pub(crate) fn query_params(path: Option<&[u8]>) -> impl Iterator<Item = (&[u8], &[u8])> {
    let query = path.and_then(|p| split_path(p).1).unwrap_or_default();
    query
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = parts.next().unwrap_or_default();
            (name, parts.next().unwrap_or_default())
        })
}

/// The `name=value` pairs of `cookie` lines (`a=1; b="2"`), values unquoted.
pub(crate) fn cookies<'a: 'l, 'l>(
    lines: &'l [&'a [u8]],
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'l {
    lines
        .iter()
        .flat_map(|line| line.split(|b| *b == b';'))
        .map(crate::baggage::trim_ows)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = crate::baggage::trim_ows(parts.next().unwrap_or_default());
            let value = crate::baggage::trim_ows(parts.next().unwrap_or_default());
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            (name, value)
        })
}

/// The value of the first cookie named `name`.
pub(crate) fn cookie_value<'a>(lines: &[&'a [u8]], name: &str) -> Option<&'a [u8]> {
    cookies(lines)
        .find(|(n, _)| *n == name.as_bytes())
        .map(|(_, value)| value)
}

/// `cookie` lines without the cookies named in `names`, as one line;
/// `None` when none is named so.
pub(crate) fn without_cookies(lines: &[&[u8]], names: &[&str]) -> Option<HeaderEdit> {
    if names.is_empty() {
        return None;
    }
    let pairs: Vec<&[u8]> = lines
        .iter()
        .flat_map(|line| line.split(|b| *b == b';'))
        .map(crate::baggage::trim_ows)
        .filter(|pair| !pair.is_empty())
        .collect();
    let ours = |pair: &&[u8]| {
        let name = pair
            .split(|b| *b == b'=')
            .next()
            .map(crate::baggage::trim_ows);
        names.iter().any(|n| name == Some(n.as_bytes()))
    };
    if !pairs.iter().any(ours) {
        return None;
    }
    let kept: Vec<&[u8]> = pairs.into_iter().filter(|p| !ours(p)).collect();
    Some(if kept.is_empty() {
        HeaderEdit::Remove("cookie".to_owned())
    } else {
        HeaderEdit::Replace("cookie".to_owned(), kept.join(&b"; "[..]))
    })
}

/// `path` without the query parameters named `param`; `None` when it has none.
pub(crate) fn without_query_param(path: &[u8], param: &str) -> Option<Vec<u8>> {
    let (base, query, fragment) = split_path(path);
    let query = query?;
    let is_ours = |pair: &&[u8]| pair.splitn(2, |b| *b == b'=').next() == Some(param.as_bytes());
    let pairs: Vec<&[u8]> = query
        .split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .collect();
    if !pairs.iter().any(is_ours) {
        return None;
    }
    let kept: Vec<&[u8]> = pairs.into_iter().filter(|p| !is_ours(p)).collect();
    let mut out = base.to_vec();
    if !kept.is_empty() {
        out.push(b'?');
        out.extend(kept.join(&b'&'));
    }
    out.extend_from_slice(fragment);
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// Values are percent-encoded (W3C baggage, `ot-baggage-*`, `uberctx-*`).
    Percent,
    /// Values are used as they are.
    Raw,
}

/// Values found in one source, not yet decoded.
#[derive(Debug)]
struct RawContext<'a> {
    encoding: Encoding,
    key: Option<Cow<'a, [u8]>>,
    overrides: Option<Cow<'a, [u8]>>,
}

/// Collects one source's values; the lowest key index wins, and any name
/// seen twice with different values is an error, whichever name wins (so the
/// order of the members never changes the outcome).
struct Candidates<'a> {
    encoding: Encoding,
    /// The value of each routing key name (indexed like `ContextConfig::keys`).
    keys: [Option<Cow<'a, [u8]>>; MAX_KEYS],
    overrides: Option<Cow<'a, [u8]>>,
}

impl<'a> Candidates<'a> {
    fn new(encoding: Encoding) -> Self {
        Candidates {
            encoding,
            keys: std::array::from_fn(|_| None),
            overrides: None,
        }
    }

    fn offer(&mut self, slot: Slot, value: Cow<'a, [u8]>) -> Result<(), &'static str> {
        let (stored, conflict) = match slot {
            Slot::Key(i) => (
                self.keys
                    .get_mut(i)
                    .ok_or("routing key name out of range")?,
                "routing key given twice with different values",
            ),
            Slot::Overrides => (
                &mut self.overrides,
                "overrides given twice with different values",
            ),
        };
        match stored {
            Some(old) if *old != value => Err(conflict),
            Some(_) => Ok(()),
            None => {
                *stored = Some(value);
                Ok(())
            }
        }
    }

    fn finish(self) -> Option<RawContext<'a>> {
        let key = self.keys.into_iter().flatten().next();
        if key.is_none() && self.overrides.is_none() {
            return None;
        }
        Some(RawContext {
            encoding: self.encoding,
            key,
            overrides: self.overrides,
        })
    }
}

impl RawContext<'_> {
    fn decode(self) -> Result<(Option<String>, Option<Overrides>), &'static str> {
        let key = match self.key {
            Some(raw) => Some(self.encoding.decode_key(&raw)?),
            None => None,
        };
        let overrides = match self.overrides {
            Some(raw) => Some(self.encoding.decode_overrides(&raw)?),
            None => None,
        };
        Ok((key, overrides))
    }
}

impl Encoding {
    fn unescape<'v>(self, raw: &'v [u8]) -> Result<Cow<'v, [u8]>, &'static str> {
        match self {
            Encoding::Percent => decode_strict(raw).ok_or("invalid percent-encoding"),
            Encoding::Raw => Ok(Cow::Borrowed(raw)),
        }
    }

    fn decode_key(self, raw: &[u8]) -> Result<String, &'static str> {
        let key = self.unescape(raw)?;
        if !is_valid_routing_key(&key) {
            return Err("routing key is not 1-64 characters of A-Z a-z 0-9 - _");
        }
        // Valid routing keys are ASCII.
        String::from_utf8(key.into_owned()).map_err(|_| "routing key is not ASCII")
    }

    fn decode_overrides(self, raw: &[u8]) -> Result<Overrides, &'static str> {
        if raw.len() > MAX_OVERRIDES_LEN {
            return Err("overrides longer than 4096 bytes");
        }
        let text = self.unescape(raw)?;
        let bytes = decode_base64(&text).ok_or("overrides are not base64")?;
        let overrides = Overrides::decode(bytes.as_slice())
            .map_err(|_| "overrides are not an Overrides protobuf")?;
        if overrides.overrides.len() > MAX_OVERRIDES_ENTRIES {
            return Err("more than 64 overrides");
        }
        Ok(overrides)
    }
}

/// Base64 as tracers write it: standard or URL-safe alphabet, padded or not.
pub fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}
