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

#[test]
fn config_check_knows_the_three_redis_topologies() {
    let ok: &[&[(&str, &str)]] = &[
        &[(
            "PHX_GATEWAY__REDIS__CLUSTER_URLS",
            "redis://10.0.0.1:7000,redis://10.0.0.2:7000",
        )],
        &[
            (
                "PHX_GATEWAY__REDIS__SENTINEL_URLS",
                "redis://10.0.0.1:26379,rediss://user:pw@10.0.0.2:26379",
            ),
            ("PHX_GATEWAY__REDIS__SENTINEL_MASTER", "mymaster"),
        ],
        &[("PHX_GATEWAY__REDIS__URL", "rediss://10.0.0.1:6380")],
    ];
    for env in ok {
        let out = run_gateway(&["config", "check"], env);
        assert_eq!(out.code, Some(0), "{env:?}: {}", out.stderr);
    }
    let bad: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("PHX_GATEWAY__REDIS__URL", "redis://10.0.0.1:6379"),
                ("PHX_GATEWAY__REDIS__CLUSTER_URLS", "redis://10.0.0.1:7000"),
            ],
            "only one of",
        ),
        (
            &[(
                "PHX_GATEWAY__REDIS__SENTINEL_URLS",
                "redis://10.0.0.1:26379",
            )],
            "sentinel_master",
        ),
        (
            &[("PHX_GATEWAY__REDIS__CLUSTER_URLS", "redis://a:1,http://b:2")],
            "redis.cluster_urls must start with redis://",
        ),
        (
            &[("PHX_GATEWAY__REDIS__SENTINEL_MASTER", "mymaster")],
            "redis.sentinel_urls is not",
        ),
    ];
    for (env, says) in bad {
        let out = run_gateway(&["config", "check"], env);
        assert_eq!(out.code, Some(2), "{env:?} must be refused");
        assert!(out.stderr.contains(says), "{env:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains("pw@"),
            "no credentials in the error: {}",
            out.stderr
        );
    }
}

/// The binary's relative relocations are packed (build.rs): on glibc, the loader's table
/// is about 8 KiB rather than 300 KiB of pages kept resident in every process.
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn the_binary_packs_its_relative_relocations() {
    if std::env::var_os("PHX_GATEWAY_NO_RELR").is_some_and(|v| v != "0") {
        return;
    }
    let out = std::process::Command::new("readelf")
        .args(["--dynamic", "--wide", env!("CARGO_BIN_EXE_phx-gateway")])
        .output()
        .expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf failed: {out:?}");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(
        dynamic.contains("(RELR)"),
        "no DT_RELR entry in the gateway's dynamic section:\n{dynamic}"
    );
}
