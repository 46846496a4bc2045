#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a bounded time, starting from the
# committed seed corpus in fuzz/corpus/<target>/. Exits non-zero if any target crashes
# (panic, sanitizer report, timeout, or the allocation limits below); the crashing input is
# left in fuzz/artifacts/<target>/.
#
#   FUZZ_SECONDS=30      time per target (default 30)
#   FUZZ_TARGETS="a b"   only these targets (default: all of `cargo fuzz list`)
#   FUZZ_RSS_MB=2048     libFuzzer -rss_limit_mb
#   FUZZ_MALLOC_MB=512   libFuzzer -malloc_limit_mb (largest single allocation)
#   FUZZ_SANITIZER=none  cargo-fuzz sanitizer (default address; CI uses none: the targets are
#                        safe Rust, where panics and the allocation limits are what matter,
#                        and the uninstrumented build takes half the time)
#   FUZZ_KEEP_CORPUS=1   also write new interesting inputs into fuzz/corpus/<target>/
#                        (off by default so that the committed corpus stays small; see
#                        fuzz/README.md for minimising it before committing)
#
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz if it
# is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

secs=${FUZZ_SECONDS:-30}
rss_mb=${FUZZ_RSS_MB:-2048}
malloc_mb=${FUZZ_MALLOC_MB:-512}
sanitizer=${FUZZ_SANITIZER:-address}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: a nightly toolchain is required: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

# Build every target in one cargo invocation; the runs below then only re-check freshness.
cargo +nightly fuzz build --fuzz-dir fuzz -s "$sanitizer" >&2

work=$(mktemp -d "${TMPDIR:-/tmp}/phx-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=()
summary=()
for t in "${targets[@]}"; do
  seeds="$root/fuzz/corpus/$t"
  mkdir -p "$seeds" "$work/$t"
  # libFuzzer writes new inputs into the first corpus directory only.
  if [[ "${FUZZ_KEEP_CORPUS:-0}" == 1 ]]; then
    dirs=("$seeds")
  else
    dirs=("$work/$t" "$seeds")
  fi
  echo "=== $t: ${secs}s" >&2
  log="$work/$t.log"
  set +e
  cargo +nightly fuzz run --fuzz-dir fuzz -s "$sanitizer" "$t" "${dirs[@]}" -- \
    -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" \
    -print_final_stats=1 2>&1 | tee "$log" >&2
  rc=${PIPESTATUS[0]}
  set -e
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
  if [[ $rc -ne 0 ]]; then
    failed+=("$t")
    summary+=("$t: FAILED (exit $rc), see fuzz/artifacts/$t/")
  else
    summary+=("$t: ${done_line:-no final stats line}")
  fi
done

echo >&2
echo "=== summary (${secs}s per target)" >&2
printf '%s\n' "${summary[@]}" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz.sh: crashes in: ${failed[*]}" >&2
  exit 1
fi
