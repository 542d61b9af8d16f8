#!/usr/bin/env bash
# A 2-node fleet on this machine against a single node, side by side, at the
# same load: each with its own redis-server on a free port.
#   1. publish throughput into Redis from one node (its Unix feed, batched);
#   2. publish-to-receive latency at 1,000 msg/s, clients on node B and the
#      feed on node A (so every message crosses Redis), against a single
#      node with both (ringcast bench's p50/p99);
#   3. server CPU per delivery of the delivering node, against the single
#      node's.
#
#   benches/fleet.sh          # ~2 minutes; results in target/fleet-bench/
#
# Environment: CONNS (1000), RATE (1000), STEP (20s), BURST (200000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONNS=${CONNS:-1000}
RATE=${RATE:-1000}
STEP=${STEP:-20s}
BURST=${BURST:-200000}
OUT=target/fleet-bench
mkdir -p "$OUT"
cargo build --release --quiet --bins
BIN=$PWD/target/release/ringcast
command -v redis-server >/dev/null || { echo "fleet.sh: needs redis-server (apt-get install redis-server)"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

start_redis() { # port
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --daemonize no > "$OUT/redis-$1.log" 2>&1 &
  pids+=($!)
  until redis-cli -p "$1" ping >/dev/null 2>&1; do sleep 0.05; done
}

# start_node NAME [args...]: a node in $OUT/NAME; sets NODE_PID and NODE_PORT.
start_node() {
  local name=$1; shift
  mkdir -p "$OUT/$name"
  NODE_PORT=$(free_port)
  (cd "$OUT/$name" && exec "$BIN" serve --listen "127.0.0.1:$NODE_PORT" --udp off --unix "$PWD/feed.sock" "$@") \
    > "$OUT/$name.log" 2>&1 &
  NODE_PID=$!
  pids+=($NODE_PID)
  until curl -sf "http://127.0.0.1:$NODE_PORT/healthz" >/dev/null 2>&1; do sleep 0.05; done
}

bench() { # label url feed server-pid
  "$BIN" bench --url "$2" --channel bench --feed "$3" --connections "$CONNS" --rate "$RATE" \
    --duration "$STEP" --max-p99 1s --server-pid "$4" --json 2> "$OUT/$1.log" | tail -n 1 > "$OUT/$1.json" || true
  grep -E '^rate' "$OUT/$1.log" | tail -n 1 | sed "s/^/$1: /"
}

# 1. Throughput into Redis: BURST lines into node A's Unix feed at once.
R1=$(free_port); start_redis "$R1"
start_node a --redis "redis://127.0.0.1:$R1/0"; A_PID=$NODE_PID
R1=$R1 python3 - "$OUT/a/feed.sock" "$BURST" <<'PY' > "$OUT/burst.txt"
import socket, sys, time, subprocess
path, n = sys.argv[1], int(sys.argv[2])
lines = b"".join(b'{"channel":"burst","data":{"i":%d,"pad":"0123456789abcdef0123456789abcdef"}}\n' % i for i in range(n))
s = socket.socket(socket.AF_UNIX); s.connect(path)
t0 = time.time(); s.sendall(lines)
while True:
    out = subprocess.run(["redis-cli", "-p", __import__("os").environ["R1"], "GET", "ringcast:{burst}:seq"], capture_output=True, text=True).stdout.strip()
    if out == str(n): break
    time.sleep(0.01)
dt = time.time() - t0
print(f"{n} messages into Redis in {dt:.2f} s: {n/dt:,.0f} msg/s")
PY
echo "publish throughput (one node, batched): $(cat "$OUT/burst.txt")"
kill "$A_PID"; wait "$A_PID" 2>/dev/null || true

# 2 and 3. The same load on a single node, then across a 2-node fleet.
start_node single; S_PID=$NODE_PID; S_PORT=$NODE_PORT
bench single "ws://127.0.0.1:$S_PORT/ws?channels=bench" "unix:$OUT/single/feed.sock" "$S_PID"
kill "$S_PID"; wait "$S_PID" 2>/dev/null || true

R2=$(free_port); start_redis "$R2"
start_node fleet-a --redis "redis://127.0.0.1:$R2/0"; FA_PID=$NODE_PID
start_node fleet-b --redis "redis://127.0.0.1:$R2/0"; FB_PID=$NODE_PID; FB_PORT=$NODE_PORT
bench fleet "ws://127.0.0.1:$FB_PORT/ws?channels=bench" "unix:$OUT/fleet-a/feed.sock" "$FB_PID"
echo "fleet node A (feed side) CPU: $(ps -o times= -p "$FA_PID") s over the run"
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def last(name):
    try:
        d = json.load(open(os.path.join(out, name + ".json")))
    except Exception:
        return None
    steps = d.get("steps") or [d]
    return steps[-1]
s, f = last("single"), last("fleet")
if not s or not f:
    sys.exit("no results")
rows = [
    ("p50 latency (ms)", lambda d: d["latency_us"]["p50"] / 1000),
    ("p99 latency (ms)", lambda d: d["latency_us"]["p99"] / 1000),
    ("server CPU per delivery (ns)", lambda d: d["server_cpu_ns_per_delivery"]),
    ("delivery ratio", lambda d: d["ratio"]),
    ("gaps + dups", lambda d: d["gaps"] + d["dups"]),
]
for label, get in rows:
    a, b = get(s), get(f)
    extra = ""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
        extra = f"  fleet/single {b / a:.2f}x" + (f", +{b - a:.2f}" if "ms" in label else "")
    print(f"{label:32} single {a}  fleet {b}{extra}")
PY
