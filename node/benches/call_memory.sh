#!/bin/bash
# usage: node/benches/call_memory.sh SECONDS TAG (after cargo build --release)
# — a 3-person call of `confab call` processes without --output; prints each node's max_rss_kb
set -e
S=$1; T=$2; B=${CONFAB:-target/release/confab}; W=${TMPDIR:-/tmp}/confab-mem-$T; rm -rf $W; mkdir -p $W
for i in 0 1 2; do $B --data-dir $W/n$i init --name p$i >/dev/null; done
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
TICKET=$($B --data-dir $W/n0 room create --listen /ip4/127.0.0.1/tcp/$PORT)
for i in 0 1 2; do
  L=""; [ $i -gt 0 ] && L="--listen /ip4/127.0.0.1/tcp/0"
  $B --data-dir $W/n$i call "$TICKET" --json --signal $i --duration $S $L > $W/r$i.json 2>$W/log$i &
done
wait
for i in 0 1 2; do python3 -c "import json;r=json.load(open('$W/r$i.json'));print('$T', $i, r['max_rss_kb'], r['frames_captured'], [x['frames_received'] for x in r['received']])"; done
