#!/usr/bin/env python3
"""Tiny HTTP logging proxy used to capture MLflow client <-> server traffic.

Usage: python logproxy.py LISTEN_PORT UPSTREAM_PORT LOGFILE

Every request/response pair is appended to LOGFILE as one JSON line:
{"method", "path", "req_headers" (subset), "req_body", "status", "resp_headers" (subset), "resp_body"}
Bodies that are not UTF-8 text are logged as "<N bytes binary>". Only talks to 127.0.0.1.
"""

import http.client
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN, UPSTREAM, LOGFILE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
_lock = threading.Lock()
_KEEP_REQ = ("content-type", "authorization", "user-agent", "content-length", "transfer-encoding")
_KEEP_RESP = ("content-type", "content-length")


def _show(body: bytes, limit: int = 4000):
    if not body:
        return ""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(body)} bytes binary>"
    if len(text) > limit:
        return text[:limit] + f"...<{len(text)} chars>"
    return text


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
            return out
        n = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(n) if n else b""

    def _proxy(self):
        body = self._read_body()
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "transfer-encoding", "content-length", "connection")
        }
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=120)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        rbody = resp.read()
        conn.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() in ("transfer-encoding", "connection", "content-length"):
                continue
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(rbody)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(rbody)
        rec = {
            "method": self.command,
            "path": self.path,
            "req_headers": {k: v for k, v in self.headers.items() if k.lower() in _KEEP_REQ},
            "req_body": _show(body),
            "status": resp.status,
            "resp_headers": {k: v for k, v in resp.getheaders() if k.lower() in _KEEP_RESP},
            "resp_body": _show(rbody),
        }
        with _lock, open(LOGFILE, "a") as f:
            f.write(json.dumps(rec) + "\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _proxy


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", LISTEN), Handler).serve_forever()
