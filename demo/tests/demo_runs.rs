//! `make demo` runs to the end with every request answered where expected
//! (the demo checks each answer and exits non-zero otherwise).

#[test]
fn demo_runs_and_every_request_lands_where_expected() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-router-demo"))
        .output()
        .expect("demo starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
    // The two-hop route created with the CLI, and the route group.
    assert!(
        stdout.contains("-> frontend/baseline -> backend/backend-v2  [ok]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-> frontend/frontend-v2 -> backend/backend-v2  [ok]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Table version 3; 2 proxies connected."),
        "{stdout}"
    );
    // The gRPC hop: unary and server-streaming, to the sandbox and the baseline.
    assert!(
        stdout.contains("-> frontend/baseline -> backend/backend-v2 (x3)  [ok]"),
        "{stdout}"
    );
    // The message hop: each job processed by exactly the right worker.
    assert!(
        stdout.contains("job-1 processed by\n    -> worker/worker-v2  [ok]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("job-2 processed by\n    -> worker/baseline  [ok]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("worker.baseline    processed=1 skipped.sandboxed=1"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("[ok]").count(), 20, "{stdout}");
}
