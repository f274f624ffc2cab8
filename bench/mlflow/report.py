"""Markdown tables from the JSON lines run.sh collected (medians over rounds).

usage: python report.py RESULTS.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict

SERVERS = [
    ("fleetml", "fleetml"),
    ("mlflow-default", "stock default (uvicorn, 4 workers)"),
    ("mlflow-gunicorn", "stock gunicorn (2 workers)"),
    ("mlflow-uvicorn-1w", "stock uvicorn 1 worker (diagnostic)"),
]
TESTS = [
    ("fluent mlflow.log_metric", "log_metric, fluent (calls/s)", "calls_per_s"),
    ("MlflowClient.log_metric", "log_metric, MlflowClient (calls/s)", "calls_per_s"),
    ("MlflowClient.log_batch 10 metrics/call", "log_batch 10 metrics (calls/s)", "calls_per_s"),
    ("MlflowClient.log_batch 100 metrics/call", "log_batch 100 metrics (calls/s)", "calls_per_s"),
    ("MlflowClient.log_batch 1000 metrics/call", "log_batch 1000 metrics (calls/s)", "calls_per_s"),
    ("MlflowClient.log_batch 1000 metrics/call", "log_batch 1000 metrics (metrics/s)", "values_per_s"),
    ("raw requests keep-alive POST log-metric", "raw POST log-metric, keep-alive (req/s)", "calls_per_s"),
    ("raw requests new-connection POST log-metric", "raw POST log-metric, new connection (req/s)", "calls_per_s"),
]


def fmt(x):
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def main(path):
    global SERVERS
    rows = [json.loads(line) for line in open(path) if line.strip()]
    present = {r["server"] for r in rows}
    SERVERS = [s for s in SERVERS if s[0] in present or s[0] in ("fleetml", "mlflow-default", "mlflow-gunicorn")]
    by = defaultdict(list)
    for r in rows:
        by[(r["server"], r["test"])].append(r)

    def med(server, test, field):
        vals = [r[field] for r in by.get((server, test), [])]
        return statistics.median(vals) if vals else None

    def spread(server, test, field):
        vals = [r[field] for r in by.get((server, test), [])]
        return f"{fmt(min(vals))}–{fmt(max(vals))}" if vals else "n/a"

    rounds = {s: len({r["round"] for r in rows if r["server"] == s}) for s, _ in SERVERS}
    print(f"Medians over rounds (rounds completed: "
          + ", ".join(f"{s} {rounds[s]}" for s, _ in SERVERS) + "); same client, same machine, same run.\n")
    ratio = lambda a, b: f"{a / b:.1f}×" if a and b else "n/a"
    extra = SERVERS[3:]
    print("| test | " + " | ".join(label for _, label in SERVERS[:3]) + " | fleetml / stock default | fleetml / stock gunicorn |"
          + "".join(f" {label} | fleetml / {s} |" for s, label in extra))
    print("|---|" + "---:|" * (5 + 2 * len(extra)))
    for test, label, field in TESTS:
        f, d, g = (med(s, test, field) for s, _ in SERVERS[:3])
        cells = [fmt(f), fmt(d), fmt(g), ratio(f, d), ratio(f, g)]
        for s, _ in extra:
            x = med(s, test, field)
            cells += [fmt(x), ratio(f, x)]
        print(f"| {label} | " + " | ".join(cells) + " |")

    fs = []
    for s, _ in SERVERS:
        vals = sorted({(r["round"], r.get("fsync_p50_ms")) for r in rows if r["server"] == s and r.get("fsync_p50_ms") is not None})
        if vals:
            fs.append(f"{s} " + "/".join(f"{v:.1f}" for _, v in vals))
    if fs:
        print("\nfsync p50 (ms) of a 4 KiB append in the server's folder just before each pass, rounds 1/2/3: " + "; ".join(fs) + ".")
    print("\nRange over rounds (min–max), same tests:\n")
    print("| test | " + " | ".join(s for s, _ in SERVERS) + " |")
    print("|---|" + "---:|" * len(SERVERS))
    for test, label, field in TESTS:
        print(f"| {label} | " + " | ".join(spread(s, test, field) for s, _ in SERVERS) + " |")

    print("\nMedian latency per call, p50 / p99 (ms):\n")
    print("| test | " + " | ".join(s for s, _ in SERVERS) + " |")
    print("|---|" + "---:|" * len(SERVERS))
    for test, label, field in TESTS:
        if field != "calls_per_s":
            continue
        cells = []
        for s, _ in SERVERS:
            p50, p99 = med(s, test, "median_ms"), med(s, test, "p99_ms")
            cells.append("n/a" if p50 is None else f"{p50:.2f} / {p99:.2f}")
        print(f"| {label.split(' (')[0]} | " + " | ".join(cells) + " |")

    print("\nCPU while each test ran, median over rounds, % of one core (server = its whole process tree; "
          "client = the Python process; 2 cores = 200%):\n")
    print("| test | " + " | ".join(f"{s} server / client" for s, _ in SERVERS) + " |")
    print("|---|" + "---:|" * len(SERVERS))
    for test, label, field in TESTS:
        if field != "calls_per_s":
            continue
        cells = []
        for s, _ in SERVERS:
            sc, cc = med(s, test, "server_cpu_pct"), med(s, test, "client_cpu_pct")
            cells.append("n/a" if sc is None else f"{sc:.0f}% / {cc:.0f}%")
        print(f"| {label.split(' (')[0]} | " + " | ".join(cells) + " |")

    # What bounds fleetml's figure
    fl = med("fleetml", "fluent mlflow.log_metric", "calls_per_s")
    cl = med("fleetml", "MlflowClient.log_metric", "calls_per_s")
    raw = med("fleetml", "raw requests keep-alive POST log-metric", "calls_per_s")
    rawnew = med("fleetml", "raw requests new-connection POST log-metric", "calls_per_s")
    scpu = med("fleetml", "MlflowClient.log_metric", "server_cpu_pct")
    ccpu = med("fleetml", "MlflowClient.log_metric", "client_cpu_pct")
    fscpu = med("fleetml", "fluent mlflow.log_metric", "server_cpu_pct")
    fccpu = med("fleetml", "fluent mlflow.log_metric", "client_cpu_pct")
    rscpu = med("fleetml", "raw requests keep-alive POST log-metric", "server_cpu_pct")
    rccpu = med("fleetml", "raw requests keep-alive POST log-metric", "client_cpu_pct")
    p50 = med("fleetml", "MlflowClient.log_metric", "median_ms")
    rp50 = med("fleetml", "raw requests keep-alive POST log-metric", "median_ms")
    if None not in (fl, cl, raw, scpu, ccpu):
        print("\nWhat bounds fleetml's figure (medians):\n")
        print(f"- log_metric through the MLflow client: {fmt(fl)} calls/s fluent, {fmt(cl)} calls/s MlflowClient "
              f"(p50 {p50:.2f} ms); raw keep-alive POST of the same request to fleetml: {fmt(raw)} req/s "
              f"(p50 {rp50:.2f} ms), {raw / cl:.1f}× the MlflowClient rate; new-connection POST {fmt(rawnew)} req/s.")
        print(f"- CPU during MlflowClient.log_metric: fleetml {scpu:.0f}% of one core, Python client {ccpu:.0f}%. "
              f"Fluent: fleetml {fscpu:.0f}%, client {fccpu:.0f}%. Raw keep-alive: fleetml {rscpu:.0f}%, client {rccpu:.0f}%.")


if __name__ == "__main__":
    main(sys.argv[1])
