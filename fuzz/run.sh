#!/usr/bin/env bash
# Builds and runs every fuzz target (or the ones named) for SECONDS each, one
# after the other, one job each, on the stable toolchain (`--sanitizer none`).
# Prints the executions per target and the total; exits non-zero if any
# target found a crash, leaving the input in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Seeds are read from fuzz/corpus/<target> (checked in, never written);
# what the fuzzer adds goes to fuzz/grown/<target> (ignored by git), so a
# later run starts from it. See fuzz/README.md.
set -uo pipefail

usage() {
    echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2
    exit 2
}
[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || usage
seconds=$1
shift

cd "$(dirname "$0")/.." || exit 2
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 2

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

logs=fuzz/target/logs
mkdir -p "$logs"
echo "== building the fuzz targets ($(rustc --version))"
if ! cargo fuzz build --fuzz-dir fuzz --sanitizer none >"$logs/build.log" 2>&1; then
    cat "$logs/build.log" >&2
    exit 1
fi
echo "== running ${#targets[@]} targets for ${seconds} s each"
total=0
failed=()
for target in "${targets[@]}"; do
    grown=fuzz/grown/$target
    mkdir -p "$grown" "fuzz/corpus/$target"
    dict=()
    case $target in
        baggage | tracestate | headers | edge) dict=(-dict=fuzz/dict/headers.dict) ;;
        plugin_config) dict=(-dict=fuzz/dict/plugin_config.dict) ;;
    esac
    log=$logs/$target.log
    # The first corpus directory receives new inputs: the grown one.
    cargo fuzz run --fuzz-dir fuzz --sanitizer none "$target" "$grown" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
    status=$?
    runs=$(awk '/stat::number_of_executed_units:/ { print $2 }' "$log" | tail -n 1)
    runs=${runs:-0}
    total=$((total + runs))
    if [[ $status -eq 0 ]]; then
        printf '  %-16s %12d executions in %d s\n' "$target" "$runs" "$seconds"
    else
        failed+=("$target")
        printf '  %-16s %12d executions, FAILED (exit %d)\n' "$target" "$runs" "$status"
        grep -E -A3 "panicked at" "$log" | grep -v "^stack backtrace" | head -n 8 | sed 's/^/      /'
        grep -E "ERROR: libFuzzer|Test unit written to" "$log" | head -n 3 | sed 's/^/      /'
        echo "      full log: $log"
    fi
done
printf '  %-16s %12d executions\n' "total" "$total"

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== crash in: ${failed[*]} (inputs in fuzz/artifacts/<target>/;" \
        "reproduce: cargo fuzz run --fuzz-dir fuzz -s none TARGET fuzz/artifacts/TARGET/crash-...)" >&2
    exit 1
fi
