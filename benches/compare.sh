#!/usr/bin/env bash
# Runs the same fan-out scenarios against ringcast (on its io_uring driver,
# and as ringcast-epoll on its epoll driver) and the two baselines
# (examples/tokio_broadcast.rs, examples/floor.rs), each server pinned to
# one CPU and the load generator (`ringcast bench`) to another, and prints a
# table with the figures and their ratios. CPU per delivery is given twice:
# the server process's own time, and the whole busy time of its CPU (kernel
# work there included: softirq, kernel threads). Results: target/compare/*.json.
#
#   benches/compare.sh                 # everything (~35 minutes on 2 cores)
#   SERVERS="ringcast ringcast-epoll" SCENARIOS="low s3" benches/compare.sh
#   SERVERS=ringcast SCENARIOS="json deflate sse" benches/compare.sh  # compression, SSE
#   SERVERS=ringcast SCENARIOS="json status" benches/compare.sh  # status page open
#
# Environment: SERVER_CPU (0), BENCH_CPU (1), CONNS (10000), STEP (10s),
# S1_RATES, S1_P99 (1s; see the README on why not 50ms at 10,000 clients).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SERVERS=${SERVERS:-"floor ringcast ringcast-epoll tokio"}
SCENARIOS=${SCENARIOS:-"low s1 half s2 s3 s4 json deflate sse"}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
CONNS=${CONNS:-10000}
STEP=${STEP:-10s}
S1_RATES=${S1_RATES:-"5,10,20,40,80,120,160,200,240,280,320,400,480,560,640,720,800,880,960,1040"}
S4_RATES=${S4_RATES:-"100,150,200,250,300,350,400,500"}
JSON_RATE=${JSON_RATE:-20}
RINGCAST_ARGS=""
S1_P99=${S1_P99:-1s}
OUT=target/compare
PORT=18300
UDP=19300
mkdir -p "$OUT"

cargo build --release --quiet --bins --examples
BIN=target/release

start_server() {
  local name=$1 cmd
  case $name in
    ringcast) cmd=($BIN/ringcast serve --unix off --shards 1 --io io-uring $RINGCAST_ARGS) ;;
    ringcast-epoll) cmd=($BIN/ringcast serve --unix off --shards 1 --io epoll $RINGCAST_ARGS) ;;
    tokio) cmd=($BIN/examples/tokio_broadcast) ;;
    floor) cmd=($BIN/examples/floor) ;;
  esac
  # taskset execs the server: $! is the server's own PID.
  taskset -c "$SERVER_CPU" "${cmd[@]}" --listen 127.0.0.1:$PORT --udp 127.0.0.1:$UDP \
    > "$OUT/$name.server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "compare.sh: $name did not start; see $OUT/$name.server.log" >&2
  exit 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  # Wait until the port is free again for the next server.
  while (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do sleep 0.1; done
}

# bench NAME SCENARIO [bench args...]: runs against a fresh server.
bench() {
  local name=$1 scenario=$2
  shift 2
  start_server "$name"
  echo "== $name $scenario: $*" >&2
  taskset -c "$BENCH_CPU" $BIN/ringcast bench \
    --url "ws://127.0.0.1:$PORT/ws?channels=bench" --feed udp:127.0.0.1:$UDP \
    --server-pid "$SERVER_PID" --server-cpu "$SERVER_CPU" --json "$@" 2> "$OUT/$name-$scenario.log" \
    | tail -n 1 > "$OUT/$name-$scenario.json" || true
  grep -E '^rate|RSS' "$OUT/$name-$scenario.log" >&2 || true
  stop_server
}

max_rate() { # ringcast's max sustained S1 rate, for the half-rate scenarios
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); m=d.get("max_sustained"); print(int(m["rate"]) if m else 10)' "$OUT/ringcast-s1.json"
}

for scenario in $SCENARIOS; do
  for name in $SERVERS; do
    case $scenario in
      # Low rate: CPU per delivery when every delivery is its own send.
      low) bench "$name" low --connections "$CONNS" --rate 5 --duration 20s ;;
      # S1: rising rate until the ratio drops under 99.9% or p99 passes S1_P99.
      s1) bench "$name" s1 --connections "$CONNS" --rate "$S1_RATES" --duration "$STEP" --sweep --max-p99 "$S1_P99" ;;
      # Half of ringcast's max sustained rate: latency at the same load.
      half) bench "$name" half --connections "$CONNS" --rate $(( $(max_rate) / 2 )) --duration "$STEP" --max-p99 "$S1_P99" ;;
      # S2: the same, with 100 clients that stop reading. ringcast runs with
      # a 256 KiB high-water mark and 64 KiB socket send buffers, so the cut
      # happens within the step (with the defaults a stuck socket first fills
      # ~4 MiB of autotuned kernel buffer, then 4 MiB of queue: minutes at
      # this rate); the baselines have no such limit.
      s2) RINGCAST_ARGS="--high-water 256KiB --send-buffer 64KiB" bench "$name" s2 --connections "$CONNS" --slow 100 --size 512 \
            --rate $(( $(max_rate) / 2 )) --duration 20s --max-p99 "$S1_P99" ;;
      # S3: ~19,000 idle connections: server memory per connection.
      s3) bench "$name" s3 --connections 19000 --rate 0 --duration 3s ;;
      # S3 with every client on permessage-deflate.
      s3-deflate) bench "$name" s3-deflate --connections 19000 --rate 0 --duration 3s --compression ;;
      # S4: 100 clients, big messages (60,000 bytes: what fits in a datagram).
      s4) bench "$name" s4 --connections 100 --size 60000 --rate "$S4_RATES" --duration "$STEP" --sweep --max-p99 "$S1_P99" ;;
      # Compression, side by side on ringcast: 1 KiB JSON-like messages to
      # clients that do not offer permessage-deflate (json), then to clients
      # that all do (deflate: each message compressed once for all of them).
      # status: json again, with the status page open in five tabs (five
      # pollers of /status.json, once a second each, as the page does).
      json | deflate | sse | status)
        case $name in ringcast*) ;; *) continue ;; esac
        flags=()
        [ "$scenario" = deflate ] && flags=(--compression)
        [ "$scenario" = sse ] && flags=(--transport sse)
        pollers=()
        if [ "$scenario" = status ]; then
          for _ in 1 2 3 4 5; do
            (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$PORT/status.json" || true; done) &
            pollers+=($!)
          done
        fi
        bench "$name" "$scenario" --connections "$CONNS" --size 1024 --rate "$JSON_RATE" \
          --duration 20s --max-p99 "$S1_P99" "${flags[@]}"
        [ ${#pollers[@]} -eq 0 ] || kill "${pollers[@]}" 2>/dev/null || true ;;
    esac
  done
done

python3 benches/compare_table.py "$OUT" $SERVERS
