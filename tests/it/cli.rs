//! The command line: help text, config validation and fail-fast start-up.

use crate::support::process::run_gateway;

#[test]
fn help_documents_the_environment_variables() {
    let out = run_gateway(&["--help"], &[]);
    assert_eq!(out.code, Some(0));
    let text = out.stdout;
    for needle in [
        "PHX_GATEWAY__HTTP__PORT",
        "--config",
        "serve",
        "config",
        "RUST_LOG",
    ] {
        assert!(
            text.contains(needle),
            "--help should mention {needle}:\n{text}"
        );
    }
}

#[test]
fn config_check_accepts_the_shipped_files_and_rejects_bad_ones() {
    for file in ["config/gateway.toml", "config/bench.toml"] {
        let out = run_gateway(&["--config", file, "config", "check"], &[]);
        assert_eq!(out.code, Some(0), "{file}: {}", out.stderr);
    }
    let out = run_gateway(
        &[
            "--config",
            "tests/fixtures/unknown-key.toml",
            "config",
            "check",
        ],
        &[],
    );
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("prot"),
        "the error names the unknown key"
    );

    let out = run_gateway(
        &["config", "check"],
        &[("PHX_GATEWAY__HTTP__PORT", "not-a-port")],
    );
    assert_eq!(out.code, Some(2), "a bad environment value fails fast");
}
