"""Prints the comparison table from benches/compare.sh's JSON results."""
import json
import os
import sys

out, servers = sys.argv[1], sys.argv[2:]


def load(server, scenario):
    path = os.path.join(out, f"{server}-{scenario}.json")
    try:
        with open(path) as f:
            return json.loads(f.read().strip() or "null")
    except (OSError, ValueError):
        return None


def step(server, scenario, which="last"):
    d = load(server, scenario)
    if not d:
        return None
    if which == "max":
        return d.get("max_sustained")
    return d["steps"][-1] if d.get("steps") else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}{unit}"
    return f"{v:,.0f}{unit}"


rows = []


def row(label, values, ratio_to="floor", lower_is_better=True):
    cells = [fmt(v) for v in values]
    base = values[servers.index(ratio_to)] if ratio_to in servers else None
    ratios = []
    for s, v in zip(servers, values):
        if s == ratio_to or v is None or not base:
            continue
        ratios.append(f"{s}/{ratio_to} {v / base:.2f}x")
    rows.append((label, cells, ", ".join(ratios)))


def get(d, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k)
    return d


low = [step(s, "low") for s in servers]
row("low rate: server ns per delivery", [get(x, "server_cpu_ns_per_delivery") for x in low])
row("low rate: its CPU's busy ns per delivery", [get(x, "server_core_busy_ns_per_delivery") for x in low])
row("low rate: of which softirq", [get(x, "server_core_softirq_ns_per_delivery") for x in low])
row("low rate: p99 latency (us)", [get(x, "latency_us", "p99") for x in low])
# The two drivers against each other, side by side.
if "ringcast" in servers and "ringcast-epoll" in servers:
    row("epoll vs io_uring: low-rate ns per delivery", [get(x, "server_cpu_ns_per_delivery") for x in low], ratio_to="ringcast")
    row("epoll vs io_uring: low-rate core busy ns", [get(x, "server_core_busy_ns_per_delivery") for x in low], ratio_to="ringcast")
s1 = [step(s, "s1", "max") for s in servers]
row("S1 max sustained deliveries/s", [get(x, "deliveries_per_sec") for x in s1], ratio_to="tokio", lower_is_better=False)
row("S1 ns per delivery at that rate", [get(x, "server_cpu_ns_per_delivery") for x in s1])
half = [step(s, "half") for s in servers]
row("half of ringcast's max: p99 (us)", [get(x, "latency_us", "p99") for x in half])
row("half: server ns per delivery", [get(x, "server_cpu_ns_per_delivery") for x in half])
row("half: delivery ratio (%)", [(get(x, "ratio") or 0) * 100 if x else None for x in half])
s2 = [step(s, "s2") for s in servers]
row("S2 (+100 slow): fast-client ratio (%)", [(get(x, "ratio") or 0) * 100 if x else None for x in s2])
row("S2: gaps seen by fast clients", [get(x, "gaps") for x in s2])
row("S2: slow clients cut", [get(x, "slow_cut") for x in s2])
row("S2: server RSS (MiB)", [(get(x, "server_rss_bytes") or 0) / 2**20 if x else None for x in s2])
s3 = [load(s, "s3") for s in servers]
row("S3: server RSS per idle connection (B)", [get(x, "server_rss_per_connection") for x in s3])
s4 = [step(s, "s4", "max") for s in servers]
row("S4 (100 x 60 KB): MB/s sustained", [(get(x, "deliveries_per_sec") or 0) * 60000 / 1e6 if x else None for x in s4], ratio_to="tokio", lower_is_better=False)

# Compression and SSE: each ringcast server against itself, on plain
# WebSocket clients (json) vs compressed ones (deflate) vs event streams (sse),
# and the same plain load with the status page open in five tabs (status).
for s in servers:
    plain = step(s, "json")
    for other in ["deflate", "sse", "status"]:
        alt = step(s, other)
        if not plain or not alt:
            continue
        for label, key in [("ns per delivery", "server_cpu_ns_per_delivery"),
                           ("core busy ns per delivery", "server_core_busy_ns_per_delivery"),
                           ("bytes on the wire per delivery", "wire_bytes_per_delivery")]:
            a, b = get(plain, key), get(alt, key)
            ratio = f"{other}/plain {b / a:.2f}x" if a and b else ""
            rows.append((f"{s} 1 KiB JSON: {label}, plain / {other}",
                         [fmt(a) + " / " + fmt(b) if x == s else "" for x in servers], ratio))

width = max(len(r[0]) for r in rows)
print()
print(f"{'':{width}}  " + "  ".join(f"{s:>12}" for s in servers) + "  ratios")
for label, cells, ratios in rows:
    print(f"{label:{width}}  " + "  ".join(f"{c:>12}" for c in cells) + "  " + ratios)
