//! Writes the checked-in seed corpora, `fuzz/corpus/<target>/<name>`:
//! small, real-world-shaped inputs, the binary ones made with `mint` and
//! prost. Deterministic; rerun after changing it:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus
//! ```
//!
//! It only (re)writes its own files. Crash reproducers copied in by hand
//! (`regression-*` written elsewhere) stay.

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use prost::Message as _;
use sandbox_router_fuzz::{fixture_table, MESSAGE_SEPARATOR};
use sandbox_router_proto::lightstep::{BasicTracerCarrier, BinaryCarrier};
use sandbox_router_proto::v1::{self as proto, r#override::Target, table_update::Kind};
use sandbox_router_proto::v1::{Override, Overrides};
use sandbox_router_routing::mint::{self, Carried};
use sandbox_router_routing::Source;

const TRACEPARENT: &str = mint::SAMPLE_TRACEPARENT;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    for (target, seeds) in [
        ("baggage", baggage()),
        ("tracestate", tracestate()),
        ("headers", headers()),
        ("ot_span_context", ot_span_context()),
        ("overrides", overrides()),
        ("table_update", table_update()),
        ("table_ops", table_ops()),
        ("header_map", header_map()),
        ("edge", edge()),
        ("plugin_config", plugin_config()),
    ] {
        let dir: PathBuf = root.join(target);
        fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            fs::write(dir.join(name), bytes)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", root.display());
    Ok(())
}

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn text(seeds: &[(&'static str, &str)]) -> Seeds {
    seeds
        .iter()
        .map(|(name, s)| (*name, s.as_bytes().to_vec()))
        .collect()
}

fn sample_overrides() -> Overrides {
    Overrides {
        overrides: vec![Override {
            service: "backend".into(),
            target: Some(Target::Sandbox("feature-x".into())),
            endpoint: "10.0.0.7:8080".into(),
        }],
    }
}

/// The header lines `mint` writes for `format`, as `name: value` lines.
fn minted(format: Source, key: Option<&str>, overrides: Option<&Overrides>) -> String {
    mint::headers(format, &Carried::default_names(key, overrides))
        .iter()
        .map(|(n, v)| format!("{n}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Only the values of minted lines (one kind of header), one per line.
fn minted_values(format: Source, key: Option<&str>, overrides: Option<&Overrides>) -> String {
    mint::headers(format, &Carried::default_names(key, overrides))
        .iter()
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn baggage() -> Seeds {
    let ovr = sample_overrides();
    let mut seeds = text(&[
        ("key-with-property", "sandbox-routing-key=abc;prop=1"),
        ("readme-key", "sandbox-routing-key=k7f3q9x2m4feature"),
        (
            "w3c-spec-example",
            "userId=alice,serverNode=DF%2028,isProduction=false",
        ),
        (
            "w3c-properties",
            "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue",
        ),
        (
            "otel-and-key",
            "user.id=amazing1,session.id=sess-1234, sandbox-routing-key = abc ;ttl=30",
        ),
        (
            "datadog",
            "_dd.p.dm=-4,_dd.p.tid=6571f3c900000000,sandbox-routing-key=zqgep4mzae0afgw5ifnhtxsi",
        ),
        ("percent-encoded-key", "sandbox-routing-key=k7f3%71x2m4feature"),
        ("bad-percent", "sandbox-routing-key=abc%zz"),
        ("alias", "sd-routing-key=abc"),
        ("two-lines", "a=1,b=2\nsandbox-routing-key=abc"),
        ("two-lines-ambiguous", "sandbox-routing-key=a\nsandbox-routing-key=b"),
        ("same-twice", "sandbox-routing-key=abc,sandbox-routing-key=abc"),
        ("no-value", "sandbox-routing-key"),
        ("quoted-value", "sandbox-routing-key=\"abc\""),
        ("ows-tabs", "\t sandbox-routing-key\t=\tabc\t ,"),
        ("empty-elements", ",, ,sandbox-routing-key=abc,,"),
        ("empty", ""),
    ]);
    seeds.push(("non-utf8", b"sandbox-routing-key=\xff\xfe,k\x80=1".to_vec()));
    seeds.push((
        "minted-key-and-overrides",
        minted_values(Source::Baggage, Some("abc"), Some(&ovr)).into_bytes(),
    ));
    // The limits: the key as the 65th member, and past 8192 bytes.
    let members: Vec<String> = (0..64).map(|i| format!("m{i}=v")).collect();
    seeds.push((
        "key-after-64-members",
        format!("{},sandbox-routing-key=abc", members.join(",")).into_bytes(),
    ));
    seeds.push((
        "key-after-8192-bytes",
        format!("filler={}\nsandbox-routing-key=abc", "x".repeat(8185)).into_bytes(),
    ));
    seeds.push((
        "key-at-8192-bytes",
        format!("f={},sandbox-routing-key=abc", "x".repeat(8192 - 26)).into_bytes(),
    ));
    seeds
}

fn tracestate() -> Seeds {
    text(&[
        (
            "congo-and-key",
            &format!("{TRACEPARENT}\ncongo=t61rcWkgMzE,sandbox-routing-key=k7f3q9x2m4feature"),
        ),
        (
            "w3c-spec-example",
            &format!("{TRACEPARENT}\nrojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ),
        (
            "two-lines",
            &format!("{TRACEPARENT}\ncongo=1\nsandbox-routing-key=abc"),
        ),
        (
            "alias-and-key",
            &format!("{TRACEPARENT}\nsd-routing-key=abc, sandbox-routing-key=k-1_A"),
        ),
        (
            "datadog",
            &format!("{TRACEPARENT}\ndd=s:1;o:rum;t.dm:-4,sandbox-routing-key=abc"),
        ),
        (
            "multi-tenant-key",
            &format!("{TRACEPARENT}\nfw529a3039@dt=1,sandbox-routing-key=abc"),
        ),
        (
            "future-version",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next\nsandbox-routing-key=abc",
        ),
        (
            "zero-trace-id",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01\nsandbox-routing-key=abc",
        ),
        (
            "two-traceparents",
            &format!("{TRACEPARENT}|{TRACEPARENT}\nsandbox-routing-key=abc"),
        ),
        ("no-traceparent", "\nsandbox-routing-key=abc"),
        (
            "ambiguous",
            &format!("{TRACEPARENT}\nsandbox-routing-key=a,sandbox-routing-key=b"),
        ),
        (
            "value-with-space",
            &format!("{TRACEPARENT}\nsandbox-routing-key=a b"),
        ),
        (
            "key-after-32-members",
            &format!(
                "{TRACEPARENT}\n{},sandbox-routing-key=abc",
                (0..32).map(|i| format!("v{i}=x")).collect::<Vec<_>>().join(",")
            ),
        ),
    ])
}

fn headers() -> Seeds {
    let ovr = sample_overrides();
    let authority = ":authority: backend";
    let mut seeds: Seeds = Vec::new();
    for (name, format) in [
        ("minted-baggage", Source::Baggage),
        ("minted-ot-baggage", Source::OtBaggage),
        ("minted-uberctx", Source::Uberctx),
        ("minted-tracestate", Source::Tracestate),
        ("minted-x-ot-span-context", Source::XOtSpanContext),
    ] {
        let lines = minted(format, Some("abc"), Some(&ovr));
        seeds.push((name, format!("{authority}\n{lines}").into_bytes()));
    }
    seeds.extend(text(&[
        (
            "no-context",
            ":authority: backend\n:path: /api/v1/users\n:method: GET\nuser-agent: curl/8.5.0\naccept: */*",
        ),
        (
            "readme-key-k8s-authority",
            ":authority: backend.default.svc.cluster.local:8080\nbaggage: sandbox-routing-key=k7f3q9x2m4feature",
        ),
        (
            "istio-cluster-name",
            ":authority: outbound|8080||users.svc.cluster.local\nuberctx-sandbox-routing-key: zqgep4mzae0afgw5ifnhtxsi",
        ),
        (
            "alias-ot-baggage",
            ":authority: frontend\not-baggage-sd-routing-key: k-1_A",
        ),
        (
            "spoofed-original-dst",
            ":authority: backend\nx-envoy-original-dst-host: 10.9.9.9:80\nx-sandbox-router-route: 1\nbaggage: sandbox-routing-key=abc",
        ),
        (
            "baggage-beats-tracestate",
            &format!(":authority: users\nbaggage: sandbox-routing-key=abc\ntraceparent: {TRACEPARENT}\ntracestate: sandbox-routing-key=zqgep4mzae0afgw5ifnhtxsi"),
        ),
        (
            "group-key-two-baggage-lines",
            ":authority: frontend:80\nbaggage: other=1\nbaggage: sandbox-routing-key=group-key",
        ),
        (
            "ipv6-authority",
            "host: [::1]:8080\n:authority: [fd00::1]:8080\nbaggage: sandbox-routing-key=abc",
        ),
    ]));
    seeds
}

fn carrier(items: &[(&str, String)]) -> Vec<u8> {
    BinaryCarrier {
        deprecated_text_ctx: Vec::new(),
        basic_ctx: Some(BasicTracerCarrier {
            trace_id: 0x4bf9_2f35_77b3_4da6,
            span_id: 0x00f0_67aa_0ba9_02b7,
            sampled: true,
            baggage_items: items
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }),
    }
    .encode_to_vec()
}

fn ot_span_context() -> Seeds {
    let ovr = sample_overrides();
    let overrides_text = mint::overrides_text(&ovr);
    let both = carrier(&[
        ("sandbox-routing-key", "abc".into()),
        ("sandbox-overrides", overrides_text.clone()),
        ("ot-baggage-other", "x".into()),
    ]);
    let key_only = carrier(&[("sandbox-routing-key", "k7f3q9x2m4feature".into())]);
    let bad_key = carrier(&[("sandbox-routing-key", "not a key".into())]);
    let no_baggage = carrier(&[]);
    let text_ctx = BinaryCarrier {
        deprecated_text_ctx: vec!["ot-tracer-traceid=1".into()],
        basic_ctx: None,
    }
    .encode_to_vec();
    vec![
        // The header value itself (base64 text), as mint writes it and variants.
        (
            "minted-key-and-overrides",
            minted_values(Source::XOtSpanContext, Some("abc"), Some(&ovr)).into_bytes(),
        ),
        (
            "minted-key",
            minted_values(Source::XOtSpanContext, Some("abc"), None).into_bytes(),
        ),
        ("url-safe-padded", URL_SAFE.encode(&both).into_bytes()),
        (
            "standard-unpadded",
            STANDARD
                .encode(&key_only)
                .trim_end_matches('=')
                .as_bytes()
                .to_vec(),
        ),
        ("not-base64", b"not base64!".to_vec()),
        // Carrier protobuf bytes: the target base64-encodes them itself.
        ("carrier-key-and-overrides", both),
        ("carrier-key", key_only),
        ("carrier-bad-key", bad_key),
        ("carrier-no-baggage", no_baggage),
        ("carrier-text-ctx", text_ctx),
    ]
}

fn overrides() -> Seeds {
    let one = |service: &str, target: Option<Target>, endpoint: &str| Override {
        service: service.into(),
        target,
        endpoint: endpoint.into(),
    };
    let sandbox = |s: &str| Some(Target::Sandbox(s.into()));
    let key = |k: &str| Some(Target::RoutingKey(k.into()));
    let seeds: Vec<(&'static str, Vec<Override>)> = vec![
        ("sandbox", vec![one("backend", sandbox("feature-x"), "")]),
        (
            "sandbox-and-endpoint",
            vec![one("backend", sandbox("sandbox-abc"), "10.0.0.2:8080")],
        ),
        (
            "key-target",
            vec![one("users", key("zqgep4mzae0afgw5ifnhtxsi"), "")],
        ),
        (
            "endpoint-only-registered",
            vec![one("users", None, "[fd00::1]:8080")],
        ),
        (
            "endpoint-only-unregistered",
            vec![one("backend", None, "10.9.9.9:80")],
        ),
        (
            "endpoint-of-another-sandbox",
            vec![one("backend", sandbox("feature-x"), "10.0.0.1:8080")],
        ),
        (
            "group",
            vec![
                one("backend", sandbox("both"), ""),
                one("frontend", sandbox("both"), "10.0.0.9:80"),
            ],
        ),
        ("bad-key", vec![one("backend", key("a b"), "")]),
        ("unknown-sandbox", vec![one("backend", sandbox("nope"), "")]),
        ("bad-endpoint", vec![one("backend", None, "backend:80")]),
        (
            "65-entries",
            (0..65)
                .map(|i| one(&format!("svc-{i}"), sandbox("feature-x"), ""))
                .collect(),
        ),
        ("empty", Vec::new()),
    ];
    seeds
        .into_iter()
        .map(|(name, overrides)| (name, Overrides { overrides }.encode_to_vec()))
        .collect()
}

fn entry(key: &str, sandbox: &str, service: &str, endpoints: &[&str]) -> proto::TableEntry {
    proto::TableEntry {
        routing_key: key.into(),
        sandbox: sandbox.into(),
        forks: vec![proto::Fork {
            service: service.into(),
            endpoints: endpoints.iter().map(|e| (*e).into()).collect(),
        }],
    }
}

fn snapshot(version: u64, entries: Vec<proto::TableEntry>) -> Vec<u8> {
    proto::TableUpdate {
        version,
        kind: Some(Kind::Snapshot(proto::RoutingTable { version, entries })),
    }
    .encode_to_vec()
}

fn delta(version: u64, base: u64, upserts: Vec<proto::TableEntry>, removed: &[&str]) -> Vec<u8> {
    proto::TableUpdate {
        version,
        kind: Some(Kind::Delta(proto::TableDelta {
            base_version: base,
            upserts,
            removed_keys: removed.iter().map(|k| (*k).to_owned()).collect(),
        })),
    }
    .encode_to_vec()
}

/// Messages joined by the separator `table_update` splits at; an empty
/// message restarts the singleton.
fn messages(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.join(MESSAGE_SEPARATOR)
}

fn table_update() -> Seeds {
    let fixture = proto::TableUpdate {
        version: 7,
        kind: Some(Kind::Snapshot(fixture_table())),
    }
    .encode_to_vec();
    let a = entry("ka", "feature-a", "backend", &["10.0.0.1:80"]);
    let b = entry(
        "kb",
        "feature-b",
        "users",
        &["10.0.0.2:80", "[fd00::1]:8080"],
    );
    vec![
        ("snapshot-fixture", fixture.clone()),
        (
            "snapshot-then-deltas",
            messages(&[
                snapshot(1, vec![a.clone()]),
                delta(2, 1, vec![b.clone()], &[]),
                delta(
                    3,
                    2,
                    vec![entry("ka", "feature-a", "users", &["10.0.0.3:80"])],
                    &[],
                ),
                delta(4, 3, vec![], &["kb"]),
            ]),
        ),
        (
            "rename-and-move",
            messages(&[
                snapshot(1, vec![a.clone(), b.clone()]),
                delta(
                    2,
                    1,
                    vec![entry("kc", "feature-a", "backend", &["10.0.0.4:80"])],
                    &["ka"],
                ),
            ]),
        ),
        (
            "delta-before-snapshot",
            messages(&[
                delta(2, 1, vec![a.clone()], &[]),
                snapshot(2, vec![a.clone()]),
            ]),
        ),
        (
            "wrong-base",
            messages(&[
                snapshot(1, vec![a.clone()]),
                delta(3, 2, vec![b.clone()], &[]),
            ]),
        ),
        (
            "refused-bad-endpoint",
            messages(&[
                snapshot(1, vec![a.clone()]),
                delta(2, 1, vec![entry("kb", "b", "users", &["backend:80"])], &[]),
                delta(
                    2,
                    1,
                    vec![entry("kb", "feature-a", "users", &["10.0.0.2:80"])],
                    &[],
                ),
            ]),
        ),
        (
            "restart-then-snapshot",
            messages(&[
                snapshot(5, vec![a.clone()]),
                Vec::new(),
                snapshot(6, vec![b.clone()]),
            ]),
        ),
        ("undecodable", messages(&[b"\xff\xfe".to_vec(), fixture])),
        ("empty-update", messages(&[b"\x08\x01".to_vec()])),
        // Found by fuzz/table_ops (fixed in routing/src/sync.rs).
        (
            "regression-empty-snapshot-index",
            messages(&[snapshot(1, vec![a.clone()]), snapshot(2, vec![])]),
        ),
        (
            "regression-repeated-endpoint",
            messages(&[
                snapshot(
                    1,
                    vec![entry(
                        "ka",
                        "a",
                        "backend",
                        &["[fd00::1]:80", "10.0.0.2:80", "[fd00:0::1]:80"],
                    )],
                ),
                delta(
                    2,
                    1,
                    vec![entry("kb", "b", "backend", &["10.0.0.2:80", "10.0.0.2:80"])],
                    &[],
                ),
            ]),
        ),
        (
            "regression-delta-key-twice",
            messages(&[
                snapshot(1, vec![]),
                delta(
                    2,
                    1,
                    vec![a.clone(), entry("ka", "other", "users", &["10.0.0.2:80"])],
                    &[],
                ),
            ]),
        ),
    ]
}

fn table_ops() -> Seeds {
    // `arbitrary` bytes have no natural form: a few fixed patterns to start
    // from (every byte string is a valid input).
    vec![
        ("zeros", vec![0; 64]),
        ("counting", (0..=255).collect()),
        ("ones", vec![1; 96]),
        (
            "mixed",
            b"\x00\x03\x00\x01\x02\x00\x01\x01\x01\x00\x02\x01\x01\x00\x00\x02\x01\x00\x01\x01"
                .repeat(4),
        ),
    ]
}

fn edge() -> Seeds {
    let ovr = sample_overrides();
    let outsider = ":source: 203.0.113.9:4444";
    let mut seeds: Seeds = Vec::new();
    for (name, format) in [
        ("untrusted-baggage", Source::Baggage),
        ("untrusted-ot-baggage", Source::OtBaggage),
        ("untrusted-uberctx", Source::Uberctx),
        ("untrusted-tracestate", Source::Tracestate),
        ("untrusted-x-ot-span-context", Source::XOtSpanContext),
    ] {
        let lines = minted(format, Some("abc"), Some(&ovr));
        seeds.push((
            name,
            format!(":authority: backend\n{outsider}\n{lines}").into_bytes(),
        ));
    }
    seeds.extend(text(&[
        (
            "baggage-others-kept",
            ":authority: backend\n:source: 203.0.113.9:4444\nbaggage: user.id=42, Sandbox-Routing-Key = abc ;p=1, session=x\nbaggage: sd-routing-key=k-1_A",
        ),
        (
            "tracestate-others-kept",
            &format!(":source: 198.51.100.1:80\ntraceparent: {TRACEPARENT}\ntracestate: congo=t61rcWkgMzE,sandbox-routing-key=abc,rojo=00f067aa0ba902b7"),
        ),
        (
            "trusted-cidr",
            ":authority: backend\n:source: 10.1.2.3:5555\nbaggage: sandbox-routing-key=abc",
        ),
        (
            "trusted-mapped-v6",
            ":authority: backend\n:source: [::ffff:10.1.2.3]:5555\nbaggage: sandbox-routing-key=abc",
        ),
        (
            "trusted-credential",
            ":authority: backend\nx-sandbox-router-credential: s3cret-credential\nbaggage: sandbox-routing-key=abc",
        ),
        (
            "wrong-credential",
            ":authority: backend\nx-sandbox-router-credential: guess\nuberctx-sandbox-routing-key: abc",
        ),
        ("no-context", ":authority: backend\n:source: 203.0.113.9:4444\nbaggage: user.id=42"),
    ]));
    seeds
}

/// The proxy-wasm header-map serialization, as Envoy writes it.
fn serialize_map(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = len(pairs.len()).to_vec();
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

fn header_map() -> Seeds {
    let request: &[(&str, &[u8])] = &[
        (":authority", b"backend"),
        (":path", b"/api"),
        (":method", b"GET"),
        (":scheme", b"http"),
        ("user-agent", b"curl/8.5.0"),
        ("x-forwarded-proto", b"http"),
        ("x-request-id", b"6f1c2a8e-3d4b-4c5d-9e6f-7a8b9c0d1e2f"),
    ];
    let mut routed = request.to_vec();
    routed.push(("baggage", b"sandbox-routing-key=abc;prop=1"));
    let mut spoofed = routed.clone();
    spoofed.push(("x-envoy-original-dst-host", b"10.9.9.9:80"));
    spoofed.push(("x-sandbox-router-route", b"1"));
    let minted = mint::headers(
        Source::XOtSpanContext,
        &Carried::default_names(Some("abc"), None),
    );
    let mut carrier: Vec<(&str, &[u8])> = vec![(":authority", b"backend")];
    carrier.extend(minted.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let good = serialize_map(&routed);
    let mut huge_count = good.clone();
    huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"\0\0extra");
    vec![
        ("no-context", serialize_map(request)),
        ("baggage", good.clone()),
        ("spoofed-internal", serialize_map(&spoofed)),
        ("x-ot-span-context", serialize_map(&carrier)),
        (
            "non-ascii",
            serialize_map(&[(":authority", b"backend"), ("x-caf\u{e9}", b"\xff\x00")]),
        ),
        ("empty-map", serialize_map(&[])),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("huge-count", huge_count),
        ("trailing-bytes", trailing),
        // Text lines, for the target's second run (serialized by the target).
        (
            "lines",
            b":authority: users\nuberctx-sandbox-routing-key: zqgep4mzae0afgw5ifnhtxsi".to_vec(),
        ),
    ]
}

fn plugin_config() -> Seeds {
    let shipped = include_str!("../../envoy-config/filter-config.json");
    let statik = include_str!("../../envoy-config/filter-config-static.json");
    text(&[
        ("filter-config", shipped),
        ("filter-config-static", statik),
        (
            "filter-config-static-filled",
            &statik.replace("${BACKEND_SANDBOX}", "10.0.0.7:8080"),
        ),
        ("empty", ""),
        ("empty-object", "{}"),
        (
            "cluster-name",
            r#"{"destination": {"from": "cluster_name", "strip_suffixes": [".default.svc.cluster.local"]}, "sources": ["uberctx", "baggage"], "overrides_key": ""}"#,
        ),
        (
            "table-ipv6",
            r#"{"table": {"version": 2, "entries": [{"routing_key": "abc", "forks": [{"service": "users", "endpoints": ["[fd00::1]:8080", "10.0.0.1:80"]}]}]}}"#,
        ),
        (
            "bad-endpoint",
            r#"{"table": {"entries": [{"routing_key": "abc", "forks": [{"service": "b", "endpoints": ["backend:80"]}]}]}}"#,
        ),
        (
            "nine-keys",
            r#"{"keys": ["a","b","c","d","e","f","g","h","i"]}"#,
        ),
        ("unknown-field", r#"{"marker": "x"}"#),
        (
            "sync",
            r#"{"control_cluster": "sandbox_router_control", "node_id": "sidecar-1", "token": "t0k3n", "initial_backoff_ms": 100, "max_backoff_ms": 5000}"#,
        ),
        (
            "sync-bad-backoff",
            r#"{"initial_backoff_ms": 10, "max_backoff_ms": 5}"#,
        ),
        // Known bug, reported (see KNOWN_MARKER_COLLISION in plugin_config.rs).
        (
            "regression-marker-span-context",
            r#"{"marker_header": "x-ot-span-context"}"#,
        ),
        (
            "regression-marker-ot-baggage",
            r#"{"marker_header": "ot-baggage-sandbox-routing-key"}"#,
        ),
        (
            "regression-marker-uberctx",
            r#"{"marker_header": "uberctx-sandbox-overrides"}"#,
        ),
        (
            "regression-default-overrides-key-in-keys",
            r#"{"keys": ["sandbox-routing-key", "sandbox-overrides"]}"#,
        ),
        // Reported: the error names no field.
        ("regression-empty-field-name", r#"{"": 1}"#),
    ])
}
