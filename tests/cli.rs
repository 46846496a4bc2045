//! The command line: help text, config validation and fail-fast start-up.

use std::process::Command;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phx-gateway"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[test]
fn help_documents_the_environment_variables() {
    let out = bin().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
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
        let out = bin()
            .args(["--config", file, "config", "check"])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = std::env::temp_dir().join(format!("phx-gw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[http]\nprot = 1\n").expect("write");
    let out = bin()
        .arg("--config")
        .arg(&bad)
        .args(["config", "check"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("prot"),
        "the error names the unknown key"
    );

    let out = bin()
        .args(["config", "check"])
        .env("PHX_GATEWAY__HTTP__PORT", "not-a-port")
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad environment value fails fast"
    );
}
