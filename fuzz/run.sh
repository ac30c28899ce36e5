#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 300) each, one after the other, and prints a
# line per target: executions, paths found, crashes and hangs. Needs `cargo install cargo-afl`.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-300}
targets=(room_frame control media_frame ticket video_message video_reassembly
         room_state_machine relay_config export)
[ -d seeds/room_frame ] || cargo run --release --quiet --bin seeds
cargo afl build --release --quiet
export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
for t in "${targets[@]}"; do
  rm -rf "out/$t"; mkdir -p out
  cargo afl fuzz -V "$secs" -i "seeds/$t" -o "out/$t" "target/release/$t" >"out/$t.log" 2>&1 || true
  stats="out/$t/default/fuzzer_stats"
  get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats" 2>/dev/null; }
  echo "$t: execs $(get execs_done), paths $(get corpus_count), crashes $(get saved_crashes), hangs $(get saved_hangs)"
done
