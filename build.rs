//! Link settings for the `phx-gateway` binary.
//!
//! On Linux with glibc the binary's relative relocations are packed (`DT_RELR`): the
//! table the loader reads at start-up shrinks from about 300 KiB to 8 KiB, and those pages
//! no longer stay resident in every process (docs/benchmarks.md, "Handing memory back:
//! fourth pass"). Needs glibc 2.36 or later where the binary runs (Debian 12, Ubuntu 22.10,
//! the image's runtime); an older loader refuses to start it, naming `GLIBC_ABI_DT_RELR`.
//! `PHX_GATEWAY_NO_RELR=1` at build time leaves the relocations unpacked.

fn main() {
    println!("cargo:rerun-if-env-changed=PHX_GATEWAY_NO_RELR");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let opted_out = std::env::var_os("PHX_GATEWAY_NO_RELR").is_some_and(|v| v != "0");
    if os == "linux" && env == "gnu" && !opted_out {
        println!("cargo:rustc-link-arg-bin=phx-gateway=-Wl,-z,pack-relative-relocs");
    }
}
