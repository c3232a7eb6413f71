#!/usr/bin/env bash
# airlock's fuzz targets (fuzz/: cargo-fuzz and libFuzzer). See FUZZING.md.
#
#   scripts/fuzz.sh smoke [SECONDS]      every target for SECONDS (default 5)
#                                        from its committed corpus, on an
#                                        unoptimised build (CI runs this)
#   scripts/fuzz.sh run TARGET [ARGS..]  one target; ARGS go to libFuzzer
#                                        (e.g. -runs=1000000); new inputs
#                                        land in target/fuzz/corpus/TARGET
#   scripts/fuzz.sh merge TARGET         add what a run found that covers
#                                        more to the committed corpus
#   scripts/fuzz.sh list                 the targets
#
# The project's own pinned compiler builds the targets: cargo-fuzz's few
# unstable flags are let through with RUSTC_BOOTSTRAP=1, so no second
# toolchain is fetched (a fresh machine has only the pinned one). No
# sanitizer: airlock's code is safe Rust, and what the targets look for
# (panics, hangs, unbounded allocation, a secret in the output) needs none.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cargo_fuzz_version=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
    cargo install --locked --quiet cargo-fuzz --version "$cargo_fuzz_version"
fi
# The `http` and `mcp_stdio` targets serve the example actions: built
# here, in the project's own target directory, before that is pointed
# elsewhere.
case "${1:-}" in
smoke | run | merge) bash scripts/build-components.sh ;;
esac
components="${CARGO_TARGET_DIR:-$root/target}"
case $components in
/*) ;;
*) components="$root/$components" ;;
esac
export AIRLOCK_FUZZ_COMPONENTS="$components/wasm32-wasip2/release"
export RUSTC_BOOTSTRAP=1
# One target directory for the project (target/), the fuzz builds in their
# own corner of it: instrumented artifacts never mix with the others.
export CARGO_TARGET_DIR="$root/target/fuzz/build"
# Long runs want speed: optimised, with debug assertions and overflow
# checks. cargo-fuzz compiles with one codegen unit unless told otherwise:
# on two cores that made this build take 14 minutes (9 with 16).
build=(--sanitizer none --release --debug-assertions --codegen-units 16 --fuzz-dir fuzz)
# The smoke in CI wants a cheap build: unoptimised, 4.5 minutes here.
smoke_build=(--sanitizer none --dev --fuzz-dir fuzz)
# What each run may use: a hang or an allocation past these is a finding.
limits=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024)

targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^airlock-fuzz$'
}

dict_args() {
    if [ -f "fuzz/dicts/$1.dict" ]; then
        echo "-dict=fuzz/dicts/$1.dict"
    fi
}

case "${1:-}" in
list)
    targets
    ;;
smoke)
    seconds=${2:-5}
    # Its own directory, removed when the smoke is done (3 GB that CI's
    # disk has no room to keep beside the test build), unless
    # AIRLOCK_FUZZ_KEEP_BUILD=1.
    export CARGO_TARGET_DIR="$root/target/fuzz/smoke"
    if [ "${AIRLOCK_FUZZ_KEEP_BUILD:-0}" != 1 ]; then
        trap 'rm -rf "$root/target/fuzz/smoke"' EXIT
    fi
    cargo fuzz build "${smoke_build[@]}"
    for t in $(targets); do
        # A target whose corpus is not committed yet starts from nothing.
        mkdir -p "fuzz/corpus/$t"
        found=$(mktemp -d)
        out=$(mktemp)
        # New inputs go to a scratch directory; the committed corpus is
        # only read.
        set +e
        # shellcheck disable=SC2046
        cargo fuzz run "${smoke_build[@]}" "$t" "$found" "fuzz/corpus/$t" -- \
            "${limits[@]}" $(dict_args "$t") -max_total_time="$seconds" -print_final_stats=1 >"$out" 2>&1
        status=$?
        set -e
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out")
        echo "fuzz smoke: $t: ${runs:-?} inputs in ${seconds}s, exit $status"
        rm -rf "$found"
        if [ "$status" -ne 0 ]; then
            tail -n 60 "$out" >&2
            rm -f "$out"
            echo "fuzz smoke: $t FAILED; the input is under fuzz/artifacts/$t" >&2
            exit 1
        fi
        rm -f "$out"
    done
    ;;
run)
    t=${2:?usage: scripts/fuzz.sh run TARGET [LIBFUZZER ARGS]}
    shift 2
    mkdir -p "target/fuzz/corpus/$t" "fuzz/corpus/$t"
    cargo fuzz build "${build[@]}" "$t"
    # shellcheck disable=SC2046
    cargo fuzz run "${build[@]}" "$t" "target/fuzz/corpus/$t" "fuzz/corpus/$t" -- \
        "${limits[@]}" $(dict_args "$t") -print_final_stats=1 "$@"
    ;;
merge)
    t=${2:?usage: scripts/fuzz.sh merge TARGET}
    cargo fuzz build "${build[@]}" "$t"
    cargo fuzz run "${build[@]}" "$t" "fuzz/corpus/$t" "target/fuzz/corpus/$t" -- "${limits[@]}" -merge=1
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
