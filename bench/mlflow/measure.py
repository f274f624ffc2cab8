"""Run one pass of the peer bench against one server and annotate each JSON line it prints with
the CPU the server (its whole process tree) and the client used while that test ran.

usage: python measure.py --server-pid PID --tag TAG --round R --n N --uri URI --out FILE.jsonl
                         --client-python PY --peer PEER_SCRIPT [--log FILE]

The peer script prints one line as each test ends, so the interval between two lines (the first
one: between client.py's "#imported" marker, printed once mlflow is imported, and the first
JSON line) is one test plus a little set-up (set_experiment/start_run or create_run, a few
requests). Per interval we record:
  interval_s      wall time of the interval
  server_cpu_pct  (utime+stime of every process under PID) / interval, in % of one core
  client_cpu_pct  the same for the Python client process
  server_rss_mb   summed VmRSS of the server tree when the line arrived
  load1           1-minute load average when the line arrived
  fsync_p50_ms    median of 20 fsyncs of a 4 KiB append in --probe-dir (the server's folder), taken
                  just before the client starts: the stock server's SQLite commits wait on fsync,
                  and on this shared machine its latency swings with other disk traffic
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TCK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); ppid is field 4, utime 14, stime 15
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree(root):
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid, _ = stat(name)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def ticks(pids):
    total = 0
    for pid in pids:
        try:
            total += stat(pid)[1]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return round(total / 1024, 1)


def fsync_probe(folder, n=20):
    path = os.path.join(folder, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    lat = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fsync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return round(lat[n // 2] * 1000, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--uri", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--client-python", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("--probe-dir", default=tempfile.gettempdir())
    a = ap.parse_args()

    raw = tempfile.NamedTemporaryFile(prefix="bench_raw_", suffix=".jsonl", delete=False).name
    env = dict(os.environ, BENCH_OUT=raw)
    server_pids = tree(a.server_pid)
    fsync_ms = fsync_probe(a.probe_dir)
    print(f"  fsync p50 in {a.probe_dir}: {fsync_ms} ms", flush=True)
    with open(a.log, "a") as log:
        t_prev = time.monotonic()
        s_prev = ticks(server_pids)
        proc = subprocess.Popen(
            [a.client_python, os.path.join(HERE, "client.py"), a.peer, a.uri, a.tag, str(a.n)],
            stdout=subprocess.PIPE, stderr=log, env=env, text=True,
        )
        c_prev = 0
        lines = 0
        with open(a.out, "a") as out:
            for line in proc.stdout:
                now = time.monotonic()
                s_now = ticks(server_pids)
                try:
                    c_now = stat(proc.pid)[1]
                except FileNotFoundError:
                    c_now = c_prev
                line = line.strip()
                if line == "#imported":  # client imports done: the first test's interval starts here
                    t_prev, s_prev, c_prev = now, s_now, c_now
                    continue
                if not line.startswith("{"):
                    print(line, file=log)
                    continue
                rec = json.loads(line)
                dt = now - t_prev
                rec.update(
                    round=a.round, n=a.n, interval_s=round(dt, 2),
                    server_cpu_pct=round(100 * (s_now - s_prev) / TCK / dt, 1),
                    client_cpu_pct=round(100 * (c_now - c_prev) / TCK / dt, 1),
                    server_rss_mb=rss_mb(server_pids),
                    load1=float(open("/proc/loadavg").read().split()[0]),
                    fsync_p50_ms=fsync_ms,
                )
                out.write(json.dumps(rec) + "\n")
                out.flush()
                print(
                    f"  r{a.round} {a.tag:16} {rec['test']:45} {rec['calls_per_s']:>9} calls/s "
                    f"{rec['values_per_s']:>10} values/s  p50 {rec['median_ms']} ms  "
                    f"({dt:.1f} s, server {rec['server_cpu_pct']}% cpu, client {rec['client_cpu_pct']}%)",
                    flush=True,
                )
                t_prev, s_prev, c_prev = now, s_now, c_now
                lines += 1
        rc = proc.wait()
    os.unlink(raw)
    if rc != 0 or lines != 7:
        print(f"  !! {a.tag} round {a.round}: client exited {rc} after {lines}/7 tests (see {a.log})", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
