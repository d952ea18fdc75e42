#!/usr/bin/env bash
# Long fuzzing campaign: each target given (default: all) in turn, one
# process each, niced, until RUNS executions or SECONDS_MAX seconds,
# whichever first. The corpus grows in fuzz/runs/<target>/ (seeded from
# fuzz/corpus/<target>/), the log goes to fuzz/runs/<target>.log, a crash to
# fuzz/artifacts/<target>/. Re-running continues from the grown corpus.
set -uo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
RUNS=${RUNS:-10000000}
SECONDS_MAX=${SECONDS_MAX:-1800}
cargo fuzz build || exit 1
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || mapfile -t targets < <(cargo fuzz list)
for t in "${targets[@]}"; do
  mkdir -p "runs/$t"
  seeds=()
  [[ -d corpus/$t ]] && seeds=("corpus/$t")
  echo "campaign: $t (up to $RUNS runs or $SECONDS_MAX s), log in fuzz/runs/$t.log"
  start=$(date +%s)
  nice -n 10 cargo fuzz run "$t" "runs/$t" "${seeds[@]}" -- \
    -runs="$RUNS" -max_total_time="$SECONDS_MAX" -print_final_stats=1 >"runs/$t.log" 2>&1
  rc=$?
  echo "campaign: $t finished with status $rc after $(( $(date +%s) - start )) s"
  grep -E "^#[0-9]+.*(DONE|pulse|NEW|REDUCE)" "runs/$t.log" | tail -n 1
  grep -E "^stat::" "runs/$t.log"
done
