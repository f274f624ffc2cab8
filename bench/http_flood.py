#!/usr/bin/env python3
"""A 2,000-connection flood on the agent's local API: each connection sends one inference
request and leaves a second half-sent; prints the agent's RSS before, during and after.
Usage: bench/http_flood.py AGENT_PID PORT N_CONNECTIONS (docs/benchmarks.md, issue 11)."""
import socket, sys, time, re, os, threading
pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1)) / 1024
print(f"before: {rss():.1f} MiB")
socks = []
body = b'{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[0.1,0.2,0.3,0.4]}]}'
for i in range(n):
    s = socket.socket(); s.setblocking(True)
    try:
        s.connect(("127.0.0.1", port))
        # a complete request, then a second one left half-sent
        s.sendall(b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        s.sendall(b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"[" * 5000)
    except OSError as e:
        pass
    socks.append(s)
time.sleep(2)
print(f"during ({n} connections open): {rss():.1f} MiB")
for s in socks: s.close()
time.sleep(3)
print(f"after close: {rss():.1f} MiB")
