"""The report of `just bench-load` (benches/load.sh): reads the runs' CSV files in OUT,
prints the tables and writes them into docs/benchmarks.md between the bench-load
markers. Runs on its own over the files of an earlier run too:

    python3 benches/load_report.py OUT DOC RSS_KIB READY_MS ROUNDS DURATION CONNS OPEN_LOAD [SHARED_CONNS]
"""
import csv, statistics, sys, platform, subprocess, datetime
out, doc, rss, ready, rounds, duration, conns, open_load = sys.argv[1:9]
conns_shared = sys.argv[9] if len(sys.argv) > 9 else "16"
rows = list(csv.DictReader(open(f"{out}/runs.csv")))
by = {}
for r in rows:
    by.setdefault(r["target"], {})[int(r["round"])] = r
def median(runs, t, k):
    return statistics.median(float(r[k]) for r in runs[t].values())
def med(t, k):
    return median(by, t, k)
def per_round(runs, t, base, k):
    return [float(runs[t][n][k]) / float(runs[base][n][k]) for n in runs[t] if n in runs[base]]
def spread(rs):
    """median of per-round ratios, with their quartiles: how much the rounds agree"""
    m = statistics.median(rs)
    if len(rs) < 4:
        return f"{m:.2f}"
    q1, _, q3 = statistics.quantiles(rs, n=4)
    return f"{m:.2f} ({q1:.2f}–{q3:.2f})"
names = {
    "raw-default": "raw Pingora, default release build, system allocator",
    "raw-same": "raw Pingora, Tollgate's profile (fat LTO, mimalloc)",
    "nginx": "nginx reverse proxy (1 worker, upstream keep-alive)",
    "tg-plain": "Tollgate, one plain route (shipped build: release + PGO)",
    "tg-release": "Tollgate, one plain route, release build without PGO",
    "tg-policies": "Tollgate, key_auth + rate_limit + request_headers",
    "tg-10k": "Tollgate, 10,000 routes",
}
lines = ["| target | req/s (median) | vs raw Pingora default (quartiles) | CPU µs/req | vs raw default CPU (quartiles) | p50 µs | p99 µs | errors |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
for t in names:
    if t not in by:
        continue
    lines.append(f"| {names[t]} | {med(t, 'rps'):,.0f} | {spread(per_round(by, t, 'raw-default', 'rps'))} | "
                 f"{med(t, 'cpu_us_per_req'):.1f} | "
                 f"{spread(per_round(by, t, 'raw-default', 'cpu_us_per_req'))} | "
                 f"{med(t, 'p50_us'):,.0f} | {med(t, 'p99_us'):,.0f} | "
                 f"{sum(int(r['errors']) for r in by[t].values())} |")
if "tg-10k" in by and "tg-plain" in by:
    lines.append("")
    lines.append(f"10,000 routes vs one route: {spread(per_round(by, 'tg-10k', 'tg-plain', 'rps'))} "
                 "of the req/s (median of per-round ratios, quartiles).")
shared = {}
try:
    for r in csv.DictReader(open(f"{out}/shared.csv")):
        shared.setdefault(r["target"], {})[int(r["round"])] = r
except FileNotFoundError:  # a run from before the shared-core rounds
    pass
if "raw-default" in shared:
    lines += ["",
              "Shared core: every target flat out at once (wrk, "
              f"{conns_shared} connections each), the scheduler splitting the proxy core "
              "between them; requests served and CPU per request over the same seconds:",
              "",
              "| target | req/s (median) | vs raw Pingora default (quartiles) | CPU µs/req | vs raw default CPU (quartiles) |",
              "|---|---:|---:|---:|---:|"]
    for t in names:
        if t not in shared:
            continue
        lines.append(f"| {names[t]} | {median(shared, t, 'requests') / float(duration):,.0f} | "
                     f"{spread(per_round(shared, t, 'raw-default', 'requests'))} | "
                     f"{median(shared, t, 'cpu_us_per_req'):.1f} | "
                     f"{spread(per_round(shared, t, 'raw-default', 'cpu_us_per_req'))} |")
    if "tg-10k" in shared and "tg-plain" in shared:
        lines.append("")
        lines.append("10,000 routes vs one route, shared core: "
                     f"{spread(per_round(shared, 'tg-10k', 'tg-plain', 'requests'))} of the requests, "
                     f"{spread(per_round(shared, 'tg-10k', 'tg-plain', 'cpu_us_per_req'))} of the CPU per request.")
opened = {}
for r in csv.DictReader(open(f"{out}/open.csv")):
    opened.setdefault(r["target"], {})[int(r["round"])] = r
if "raw-default" in opened:
    def omed(t, k):
        return median(opened, t, k)
    rate = int(next(iter(opened["raw-default"].values()))["rate"])
    lines += ["",
              f"Open loop: {rate:,} requests/s to each of the {len(opened)} targets at once, their "
              f"requests interleaved ({rate * len(opened):,} in all: {open_load} of raw Pingora "
              "default's median req/s above), latency counted from each request's due time "
              "(`benches/open_loop.rs`):",
              "",
              "| target | p50 µs | p50 vs raw default | p90 µs | p99 µs | p99 vs raw default (quartiles) | p99.9 µs | max µs | generator late p99 µs | errors |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in names:
        if t not in opened:
            continue
        lines.append(f"| {names[t]} | {omed(t, 'p50_us'):,.0f} | "
                     f"{spread(per_round(opened, t, 'raw-default', 'p50_us'))} | {omed(t, 'p90_us'):,.0f} | "
                     f"{omed(t, 'p99_us'):,.0f} | {spread(per_round(opened, t, 'raw-default', 'p99_us'))} | "
                     f"{omed(t, 'p999_us'):,.0f} | "
                     f"{omed(t, 'max_us'):,.0f} | {omed(t, 'late_p99_us'):,.0f} | "
                     f"{sum(int(r['errors']) for r in opened[t].values())} |")
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
lines += ["",
          f"Memory: Tollgate started with 10,000 routes and 100,000 consumers (API keys): "
          f"RSS {int(rss) / 1024:.0f} MiB, listening {int(ready) / 1000:.1f} s after start.",
          "",
          f"Run: {datetime.date.today()}, `just bench-load` (ROUNDS={rounds}, DURATION={duration} s, "
          f"CONNS={conns}, SHARED_CONNS={conns_shared}, OPEN_LOAD={open_load}, wrk -t1 HTTP/1.1 keep-alive), {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
          f"kernel {platform.release()}. Ratios are medians of per-round ratios (targets of one "
          "round run seconds apart)."]
table = "\n".join(lines)
open(f"{out}/summary.md", "w").write(table + "\n")
print(table)
text = open(doc).read()
begin, end = "<!-- bench-load:begin -->", "<!-- bench-load:end -->"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    open(doc, "w").write(f"{head}{begin}\n{table}\n{end}{tail}")
    print(f"written to {doc}", file=sys.stderr)
