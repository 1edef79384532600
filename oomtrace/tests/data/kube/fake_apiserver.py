#!/usr/bin/env python3
"""A stand-in for the few Kubernetes API endpoints `oomtrace --kube` uses.

    GET  /api/v1/pods?fieldSelector=spec.nodeName%3D<node>&limit=500   -> PodList
    GET  /api/v1/pods?fieldSelector=...&watch=true&resourceVersion=...  -> watch stream (held open)
    POST /api/v1/namespaces/{ns}/events                                 -> 201 + the created Event

Response shapes follow the API server's: a list has kind/apiVersion/metadata
(resourceVersion) and items without kind/apiVersion; a watch is a chunked
stream of {"type", "object"} lines; a create echoes the object with uid,
resourceVersion and creationTimestamp set; unknown paths get a Status 404.

Usage: fake_apiserver.py PODS_JSON EVENTS_OUT REQUESTS_OUT
Prints the port it listens on (127.0.0.1) on stdout, then serves until killed.
Every request is appended to REQUESTS_OUT ("METHOD PATH?QUERY"), every Event
POST body to EVENTS_OUT as {"path": ..., "body": ...} (one JSON per line).
"""

import datetime
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PODS_FILE, EVENTS_OUT, REQUESTS_OUT = sys.argv[1:4]
LOCK = threading.Lock()
RESOURCE_VERSION = 1000


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def append(path, line):
    with LOCK, open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def status(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {},
        "code": code,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        append(REQUESTS_OUT, f"GET {self.path}")
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path != "/api/v1/pods":
            self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        with open(PODS_FILE, encoding="utf-8") as f:
            pods = json.load(f)
        node = None
        for sel in query.get("fieldSelector", []):
            for term in sel.split(","):
                key, _, value = term.partition("=")
                if key == "spec.nodeName":
                    node = value
        items = [p for p in pods if node is None or p.get("spec", {}).get("nodeName") == node]
        for p in items:
            p.pop("kind", None)
            p.pop("apiVersion", None)
        if query.get("watch", ["false"])[0] in ("true", "1"):
            self.watch(int(query.get("timeoutSeconds", ["290"])[0]))
            return
        self.send_json(
            200,
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(RESOURCE_VERSION)},
                "items": items,
            },
        )

    def watch(self, timeout):
        """Nothing changes: hold the stream open with no events, like a quiet node."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        deadline = time.monotonic() + min(timeout, 290)
        try:
            while time.monotonic() < deadline:
                time.sleep(0.5)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def do_POST(self):
        append(REQUESTS_OUT, f"POST {self.path}")
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if len(parts) != 5 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "events":
            self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        try:
            body = json.loads(raw)
        except ValueError as e:
            self.send_json(400, status(400, "BadRequest", f"invalid JSON: {e}"))
            return
        append(EVENTS_OUT, json.dumps({"path": url.path, "body": body}))
        created = dict(body)
        md = dict(created.get("metadata", {}))
        md.setdefault("namespace", parts[3])
        md["uid"] = str(uuid.uuid4())
        md["resourceVersion"] = str(RESOURCE_VERSION + 1)
        md["creationTimestamp"] = now()
        created["metadata"] = md
        self.send_json(201, created)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
