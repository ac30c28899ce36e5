#!/usr/bin/env bash
# confab-relay beside coturn, on this machine, in one run, at the same streams, packet size
# and rate: CPU per 1,000 relayed packets per second, memory per stream, late or lost.
#
#   relay/benches/beside_coturn.sh [STREAMS...]      (default: 100 500)
#
# Environment: SECONDS_PER_RUN (default 20), CONFAB_RELAY (default
# target/release/confab-relay; build it first with `cargo build --release -p confab-relay`).
#
# A "stream" is one flow of 80-byte packets every 20 ms (50 packets/s), and a relayed packet
# is one that goes into the relay once and out once.
# - confab-relay: `confab-relay bench` — N circuits, each one stream, source to destination
#   (Noise on each leg, Yamux), so N streams relay 50 N packets/s.
# - coturn: Debian's turnserver (UDP, long-term credentials) with turnutils_uclient sending
#   to turnutils_peer, which echoes: each client's packet goes through the relay to the peer
#   and back, two relayed packets per message, so N/2 clients are N streams.
# The relay runs on core 0 and the load generator on core 1 when the machine has two.
set -euo pipefail
cd "$(dirname "$0")/../.."

STREAMS=("$@")
[ ${#STREAMS[@]} -gt 0 ] || STREAMS=(100 500)
SECS=${SECONDS_PER_RUN:-20}
RELAY=${CONFAB_RELAY:-target/release/confab-relay}
INTERVAL_MS=20
BYTES=80
PORT=34780
PEER_PORT=34790

if ! command -v turnserver >/dev/null || ! command -v turnutils_uclient >/dev/null; then
  echo "installing coturn" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends coturn >/dev/null
fi
[ -x "$RELAY" ] || { echo "no $RELAY: cargo build --release -p confab-relay" >&2; exit 2; }

if [ "$(nproc)" -ge 2 ]; then RCPU=0; LCPU=1; else RCPU=0; LCPU=0; fi
work=$(mktemp -d)
cleanup() {
  [ -n "${TURN_PID:-}" ] && kill "$TURN_PID" 2>/dev/null || true
  [ -n "${PEER_PID:-}" ] && kill "$PEER_PID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# utime + stime (clock ticks) and VmRSS (KiB) of a pid.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

# confab-relay at N streams: prints "cpu_per_1k_pps rss_per_stream_kib late_pct p99_ms".
confab_run() {
  local n=$1 row
  row=$(taskset -c "$LCPU" "$RELAY" bench --streams "$n" --seconds "$SECS" \
    --frame-ms "$INTERVAL_MS" --frame-bytes "$BYTES" --relay-cpus "$RCPU" | grep -E "^\| $n \|")
  # | streams | cpu % | idle -> loaded | per circuit KiB | received / expected | late % | p50 / p99 / max | loadgen |
  awk -F'|' -v secs="$SECS" '{
    cpu = $3 + 0; split($6, f, "/"); frames = f[1] + 0; late = $7 + 0; split($8, l, "/");
    per_pkt = cpu / 100 * secs / frames;
    printf "%.2f %.1f %.3f %.1f\n", per_pkt * 1000 * 100, $5 + 0, late, l[2] + 0
  }' <<<"$row"
}

# coturn at N streams (N/2 echoing clients): the same four figures (lost % and the mean
# round trip in place of late % and lateness p99, which uclient does not report).
coturn_run() {
  local n=$1 clients=$(( $1 / 2 )) msgs=$(( SECS * 1000 / INTERVAL_MS ))
  taskset -c "$RCPU" turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 \
    --listening-port=$PORT --min-port=40000 --max-port=60000 --lt-cred-mech \
    --user=bench:bench --realm=confab.bench --no-tls --no-dtls --no-cli \
    --allow-loopback-peers --total-quota=0 --user-quota=0 --log-file=stdout --simple-log \
    >"$work/turn.log" 2>&1 &
  TURN_PID=$!
  taskset -c "$LCPU" turnutils_peer -L 127.0.0.1 -p $PEER_PORT >"$work/peer.log" 2>&1 &
  PEER_PID=$!
  sleep 1
  local r0; r0=$(rss "$TURN_PID")
  taskset -c "$LCPU" turnutils_uclient -c -m "$clients" -l "$BYTES" -n "$msgs" \
    -z "$INTERVAL_MS" -u bench -w bench -e 127.0.0.1 -r $PEER_PORT -p $PORT 127.0.0.1 \
    >"$work/uclient.log" 2>&1 &
  # The relay's CPU ticks each second after the clients started, and its peak RSS.
  local uc=$! peak=$r0 ticks_at=()
  while kill -0 "$uc" 2>/dev/null; do
    ticks_at+=("$(ticks "$TURN_PID")")
    local now; now=$(rss "$TURN_PID"); [ "$now" -gt "$peak" ] && peak=$now
    sleep 1
  done
  wait "$uc" || true
  kill "$TURN_PID" "$PEER_PID" 2>/dev/null || true
  wait "$TURN_PID" "$PEER_PID" 2>/dev/null || true
  TURN_PID=; PEER_PID=
  # Steady state: from the second the clients have all started (uclient ramps them up) to
  # two seconds before the end; packets from uclient's per-second totals (each message
  # sent and each echo received passed the relay once).
  local lost rtt
  lost=$(grep -oE 'Total lost packets [0-9]+ \(([0-9.]+)%' "$work/uclient.log" | grep -oE '[0-9.]+%' | tr -d %)
  rtt=$(grep -oE 'Average round trip delay [0-9.]+' "$work/uclient.log" | grep -oE '[0-9.]+$')
  sed -nE 's/^([0-9]+): : start_mclient: msz=[0-9]+, tot_send_msgs=([0-9]+), tot_recv_msgs=([0-9]+).*/\1 \2 \3/p' \
    "$work/uclient.log" >"$work/progress"
  printf '%s\n' "${ticks_at[@]}" >"$work/ticks"
  awk -v hz="$hz" -v r0="$r0" -v peak="$peak" -v n="$n" -v lost="${lost:-nan}" \
    -v rtt="${rtt:-nan}" -v full=$(( clients * 1000 / INTERVAL_MS )) '
    FNR == NR { tick[FNR - 1] = $1; last_tick = FNR - 1; next }
    { at[$1] = $2 + $3; rate[$1] = $2; if ($1 > last) last = $1 }
    END {
      # first second at which a whole second of sending ran at the full rate
      a = -1
      for (s = 1; s <= last; s++) if (a < 0 && (s - 1) in at && rate[s] - rate[s - 1] >= 0.95 * full) a = s - 1
      b = last - 2; if (b > last_tick) b = last_tick
      if (a < 0 || b <= a) { printf "nan %.1f %s %s\n", (peak - r0) / n, lost, rtt; exit }
      per_pkt = ((tick[b] - tick[a]) / hz) / (at[b] - at[a])
      printf "%.2f %.1f %s %s\n", per_pkt * 1000 * 100, (peak - r0) / n, lost, rtt
    }' "$work/ticks" "$work/progress"
}

echo "confab-relay beside coturn $(turnserver --version 2>/dev/null | head -1): ${BYTES} B every ${INTERVAL_MS} ms per stream, ${SECS} s per run; relay on CPU $RCPU, load on CPU $LCPU"
echo
echo "| streams | relayed packets/s | confab-relay CPU % of a core per 1k packets/s | coturn | ratio | confab-relay RSS per stream (KiB) | coturn | confab-relay late (> ${INTERVAL_MS} ms) % / p99 ms | coturn lost % / mean RTT ms |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for n in "${STREAMS[@]}"; do
  read -r c_cpu c_rss c_late c_p99 < <(confab_run "$n")
  read -r t_cpu t_rss t_lost t_rtt < <(coturn_run "$n")
  ratio=$(awk -v a="$c_cpu" -v b="$t_cpu" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  echo "| $n | $(( n * 1000 / INTERVAL_MS )) | $c_cpu | $t_cpu | $ratio | $c_rss | $t_rss | $c_late / $c_p99 | $t_lost / $t_rtt |"
done
