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
    assert_eq!(stdout.matches("[ok,").count(), 12, "{stdout}");
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
}
