"""Wait until a freshly started server has settled: its whole process tree below LIMIT % of one
core over a WINDOW-second window, or MAX seconds have passed. Prints the wait and the last window.

Why: `mlflow server` 3.17 also starts a huey job consumer, which imports mlflow and registers its
periodic tasks 20-40 s after the HTTP server answers; measured at once, the first test would
share the two cores with that start-up. Applied to every server alike.

usage: python settle.py PID [LIMIT=5] [WINDOW=2] [MAX=90]
"""
import sys
import time

from measure import ticks, tree, TCK

pid = int(sys.argv[1])
limit = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
window = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
maximum = float(sys.argv[4]) if len(sys.argv) > 4 else 90.0
start = time.monotonic()
while True:
    pids = tree(pid)
    t0, c0 = time.monotonic(), ticks(pids)
    time.sleep(window)
    pct = 100 * (ticks(pids) - c0) / TCK / (time.monotonic() - t0)
    waited = time.monotonic() - start
    if pct < limit or waited > maximum:
        print(f"settled after {waited:.0f} s (last {window:.0f} s: {pct:.1f}% cpu)"
              + ("" if pct < limit else " -- gave up waiting"))
        break
