//! The `sandbox-router` CLI against the real control service: what it prints,
//! its JSON output, its exit codes, and that the headers it mints are read by
//! the filter's own logic (`explain`) exactly as intended.

// Test code: a failed expectation should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;

use testbed::ControlService;

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-router");

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", text(output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn create_prints_the_key_and_headers_and_json_output_is_parseable() {
    let control = ControlService::start(Path::new(BIN), None).await.unwrap();
    let out = control
        .cli(&[
            "sandbox",
            "create",
            "feature-x",
            "--fork",
            "backend=10.0.0.7:8080",
            "--label",
            "team=a",
            "--ttl",
            "2h",
        ])
        .unwrap();
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    let key = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("routing key: "))
        .unwrap()
        .to_owned();
    assert_eq!(key.len(), 24);
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{key}"
    );
    for line in [
        format!("baggage: sandbox-routing-key={key}"),
        format!("ot-baggage-sandbox-routing-key: {key}"),
        format!("uberctx-sandbox-routing-key: {key}"),
        format!("tracestate: sandbox-routing-key={key}"),
        format!("curl -H 'baggage: sandbox-routing-key={key}'"),
    ] {
        assert!(printed.contains(&line), "missing {line:?} in\n{printed}");
    }
    assert!(
        printed.contains("expires in 1h59m") || printed.contains("expires in 2h00m"),
        "{printed}"
    );

    let got = json(
        &control
            .cli(&["--output", "json", "sandbox", "get", "feature-x"])
            .unwrap(),
    );
    assert_eq!(got["routing_key"], key.as_str());
    assert_eq!(got["forks"]["backend"][0], "10.0.0.7:8080");
    assert_eq!(got["labels"]["team"], "a");
    let list = json(
        &control
            .cli(&["--output", "json", "sandbox", "list"])
            .unwrap(),
    );
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn exit_codes_say_refused_or_unreachable() {
    let control = ControlService::start(Path::new(BIN), None).await.unwrap();
    let refused = control
        .cli(&[
            "sandbox",
            "create",
            "Bad_Name",
            "--fork",
            "backend=10.0.0.7:8080",
        ])
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("400 Bad Request: name: must be a DNS label"),
        "{}",
        text(&refused)
    );
    let missing = control.cli(&["sandbox", "get", "nope"]).unwrap();
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    let bad_fork = control
        .cli(&["sandbox", "create", "x", "--fork", "backend"])
        .unwrap();
    assert_eq!(bad_fork.status.code(), Some(1), "{}", text(&bad_fork));
    let usage = control.cli(&["sandbox", "create"]).unwrap();
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage));

    let unreachable = std::process::Command::new(BIN)
        .args(["--server", "http://127.0.0.1:1", "sandbox", "list"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3), "{}", text(&unreachable));
    assert!(
        text(&unreachable).contains("cannot reach the control service"),
        "{}",
        text(&unreachable)
    );
}

#[tokio::test]
async fn minted_headers_explain_as_routed_in_every_format() {
    let control = ControlService::start(Path::new(BIN), None).await.unwrap();
    let created = json(
        &control
            .cli(&[
                "--output",
                "json",
                "sandbox",
                "create",
                "feature-x",
                "--fork",
                "backend=10.0.0.7:8080",
            ])
            .unwrap(),
    );
    let key = created["routing_key"].as_str().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("baggage", vec![key]),
        ("ot-baggage", vec![key]),
        ("uberctx", vec![key]),
        ("tracestate", vec![key]),
        ("x-ot-span-context", vec![key]),
        ("baggage", vec!["--override", "backend=feature-x"]),
        (
            "x-ot-span-context",
            vec!["--override", "backend=feature-x@10.0.0.7:8080"],
        ),
        ("uberctx", vec!["--override", "backend=@10.0.0.7:8080"]),
    ];
    for (format, args) in cases {
        let mut header_args = vec!["--output", "json", "header", "--format", format];
        header_args.extend(&args);
        let minted = json(&control.cli(&header_args).unwrap());
        let mut explain_args = vec![
            "--output".to_owned(),
            "json".into(),
            "explain".into(),
            "--service".into(),
            "backend".into(),
        ];
        for h in minted["headers"].as_array().unwrap() {
            explain_args.push("-H".into());
            explain_args.push(format!(
                "{}: {}",
                h["name"].as_str().unwrap(),
                h["value"].as_str().unwrap()
            ));
        }
        let refs: Vec<&str> = explain_args.iter().map(String::as_str).collect();
        let explained = json(&control.cli(&refs).unwrap());
        assert_eq!(
            explained["decision"]["route"], "10.0.0.7:8080",
            "{format} {args:?}: {explained}"
        );
    }

    // And a miss says why.
    let out = control
        .cli(&[
            "explain",
            "--service",
            "users",
            "-H",
            &format!("baggage: sandbox-routing-key={key}"),
        ])
        .unwrap();
    let printed = text(&out);
    assert!(
        printed.contains("decision:        baseline (no_fork_for_service)"),
        "{printed}"
    );
    let unregistered = control
        .cli(&["header", "--override", "backend=@10.6.6.6:80"])
        .unwrap();
    let line = String::from_utf8_lossy(&unregistered.stdout)
        .trim()
        .to_owned();
    let out = control
        .cli(&["explain", "--service", "backend", "-H", &line])
        .unwrap();
    assert!(
        text(&out).contains("baseline (unregistered_endpoint)"),
        "{}",
        text(&out)
    );
}

/// What a sandboxed workload or a tester needs besides headers: the preview
/// URL, a cookie, and the query for a webhook URL, when `serve` is told the
/// edge offers them. A workload reads its own key from the JSON output.
#[tokio::test]
async fn sandboxes_show_their_preview_url_cookie_and_webhook_query() {
    let plain = ControlService::start(Path::new(BIN), None).await.unwrap();
    let out = plain
        .cli(&["sandbox", "create", "a", "--fork", "backend=10.0.0.7:8080"])
        .unwrap();
    assert!(!text(&out).contains("preview:"), "{}", text(&out));
    let got = json(
        &plain
            .cli(&["--output", "json", "sandbox", "get", "a"])
            .unwrap(),
    );
    assert_eq!(got.get("access"), None);

    let control = ControlService::start_with_args(
        Path::new(BIN),
        None,
        &[
            "--preview-host",
            "{sandbox}.preview.example.com",
            "--preview-cookie",
            "sandbox-routing-key",
            "--query-param",
            "sandbox-routing-key",
        ],
    )
    .await
    .unwrap();
    let out = control
        .cli(&[
            "sandbox",
            "create",
            "backend-v2",
            "--fork",
            "backend=10.0.0.7:8080",
        ])
        .unwrap();
    let printed = text(&out);
    let key = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("routing key: "))
        .unwrap()
        .to_owned();
    for line in [
        "preview:     https://backend-v2.preview.example.com/".to_owned(),
        format!("cookie:      document.cookie = \"sandbox-routing-key={key}; Path=/\""),
        format!("webhooks:    add ?sandbox-routing-key={key} to the callback URL"),
    ] {
        assert!(printed.contains(&line), "missing {line:?} in\n{printed}");
    }
    // A workload builds its callback URL from `sandbox get NAME --output json`.
    let got = json(
        &control
            .cli(&["--output", "json", "sandbox", "get", "backend-v2"])
            .unwrap(),
    );
    assert_eq!(got["routing_key"], key.as_str());
    assert_eq!(got["access"]["query"], format!("sandbox-routing-key={key}"));
    assert_eq!(
        got["access"]["preview_url"],
        "https://backend-v2.preview.example.com/"
    );
    let list = json(
        &control
            .cli(&["--output", "json", "sandbox", "list"])
            .unwrap(),
    );
    assert_eq!(list["items"][0]["access"], got["access"]);
    let group = json(
        &control
            .cli(&[
                "--output",
                "json",
                "group",
                "create",
                "both",
                "--member",
                "backend-v2",
            ])
            .unwrap(),
    );
    assert_eq!(
        group["access"]["preview_url"],
        "https://both.preview.example.com/"
    );

    // A pattern without {sandbox} is refused at start.
    let refused = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--preview-host",
            "preview.example.com",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("--preview-host"),
        "{}",
        text(&refused)
    );
}
