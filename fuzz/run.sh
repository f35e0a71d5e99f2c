#!/usr/bin/env bash
# Coverage-guided fuzzing of one reader with libFuzzer (needs the nightly toolchain; cargo-fuzz is
# not needed). Usage: fuzz/run.sh safetensors|gguf|config SECONDS [extra libFuzzer flags]
# New inputs go to fuzz/corpus/TARGET, failing ones to fuzz/artifacts/TARGET; the committed seeds
# are crates/shrink-cli/tests/fuzz_corpus/TARGET. A single allocation above 256 MiB, an input
# taking over 10 s or a process above 2 GiB counts as a failure.
set -euo pipefail
cd "$(dirname "$0")"
t=${1:?target: safetensors, gguf or config}
secs=${2:-60}
shift 2 || true
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
cargo +nightly build --release --bins --target "$triple"
mkdir -p "corpus/$t" "artifacts/$t"
exec "target/$triple/release/$t" "corpus/$t" "../crates/shrink-cli/tests/fuzz_corpus/$t" \
  -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
  -malloc_limit_mb=256 -print_final_stats=1 "$@"
