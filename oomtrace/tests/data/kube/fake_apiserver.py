#!/usr/bin/env python3
"""A stand-in for the few Kubernetes API endpoints `oomtrace --kube` uses.

    GET   /api/v1/pods?fieldSelector=spec.nodeName%3D<node>&limit=500   -> PodList
    GET   /api/v1/pods?fieldSelector=...&watch=true&resourceVersion=...  -> watch stream (held open)
    POST  /apis/events.k8s.io/v1/namespaces/{ns}/events                   -> 201 + the created Event
    PATCH /apis/events.k8s.io/v1/namespaces/{ns}/events/{name}            -> 200 + the patched Event
          (application/merge-patch+json)

Response shapes follow the API server's: a list has kind/apiVersion/metadata
(resourceVersion) and items without kind/apiVersion; a watch is a chunked
stream of {"type", "object"} lines; a create echoes the object with uid,
resourceVersion and creationTimestamp set; unknown paths get a Status 404.

Events are validated as the API server validates events.k8s.io/v1
(pkg/apis/core/validation/events.go): on create, eventTime, type,
reportingController, reportingInstance (<= 128), action (<= 128), reason
(<= 128) are required, note <= 1024 bytes, series (if any) count >= 2 with a
lastObservedTime, the deprecated* fields unset, the namespace that of the
path and of `regarding`; on update only `series` may change. A violation is
a 422 Invalid Status, a second create of a name 409 AlreadyExists, a patch
of an unknown Event 404.

Usage: fake_apiserver.py PODS_JSON EVENTS_OUT REQUESTS_OUT [WATCH_EVENTS]
Prints the port it listens on (127.0.0.1) on stdout, then serves until killed.
With WATCH_EVENTS, a pod watch streams the lines appended to that file (each
a watch event, {"type": "MODIFIED", "object": {...}}, the object with
kind, apiVersion and a metadata.resourceVersion above the list's 1000) whose
resourceVersion is above the one the watch asked for, as they are appended:
how a test makes the kubelet change a pod. Without it a watch stays quiet.
Every request is appended to REQUESTS_OUT ("METHOD PATH?QUERY"), every
accepted Event write to EVENTS_OUT as {"verb", "path", "body", "object"} (one
JSON per line; `object` is the stored Event after the write).
"""

import datetime
import json
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PODS_FILE, EVENTS_OUT, REQUESTS_OUT = sys.argv[1:4]
WATCH_EVENTS = sys.argv[4] if len(sys.argv) > 4 else None
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
            since = int(query.get("resourceVersion", ["0"])[0] or 0)
            self.watch(int(query.get("timeoutSeconds", ["290"])[0]), since)
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

    def watch(self, timeout, since):
        """Streams the WATCH_EVENTS newer than `since` as they are appended;
        without them nothing changes, like a quiet node."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        deadline = time.monotonic() + min(timeout, 290)
        sent = since
        try:
            while time.monotonic() < deadline:
                for event in watch_events():
                    version = int(event["object"]["metadata"]["resourceVersion"])
                    if version > sent:
                        body = (json.dumps(event) + "\n").encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
                        self.wfile.flush()
                        sent = version
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def read_body(self):
        length = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(length)

    def events_path(self):
        """(namespace, name or None) of an events.k8s.io/v1 path, else None."""
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) < 6 or parts[:4] != ["apis", "events.k8s.io", "v1", "namespaces"] or parts[5] != "events":
            return None
        if len(parts) == 6:
            return parts[4], None
        if len(parts) == 7:
            return parts[4], parts[6]
        return None

    def invalid(self, name, causes):
        body = status(422, "Invalid", f'Event.events.k8s.io "{name}" is invalid: ' + "; ".join(causes))
        self.send_json(422, body)

    def do_POST(self):
        append(REQUESTS_OUT, f"POST {self.path}")
        raw = self.read_body()
        where = self.events_path()
        if where is None or where[1] is not None:
            self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        ns = where[0]
        try:
            body = json.loads(raw)
        except ValueError as e:
            self.send_json(400, status(400, "BadRequest", f"invalid JSON: {e}"))
            return
        name = body.get("metadata", {}).get("name", "")
        causes = validate_create(body, ns)
        if causes:
            self.invalid(name, causes)
            return
        with LOCK:
            if (ns, name) in EVENTS:
                self.send_json(409, status(409, "AlreadyExists", f'events.events.k8s.io "{name}" already exists'))
                return
            created = json.loads(json.dumps(body))
            md = created.setdefault("metadata", {})
            md.setdefault("namespace", ns)
            md["uid"] = str(uuid.uuid4())
            md["resourceVersion"] = next_version()
            md["creationTimestamp"] = now()
            created["kind"] = "Event"
            created["apiVersion"] = "events.k8s.io/v1"
            EVENTS[(ns, name)] = created
        append(EVENTS_OUT, json.dumps({"verb": "create", "path": urlsplit(self.path).path, "body": body, "object": created}))
        self.send_json(201, created)

    def do_PATCH(self):
        append(REQUESTS_OUT, f"PATCH {self.path}")
        raw = self.read_body()
        where = self.events_path()
        if where is None or where[1] is None:
            self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        ns, name = where
        kind = self.headers.get("Content-Type", "")
        if not kind.startswith("application/merge-patch+json"):
            self.send_json(415, status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {kind}"))
            return
        try:
            patch = json.loads(raw)
        except ValueError as e:
            self.send_json(400, status(400, "BadRequest", f"invalid JSON: {e}"))
            return
        with LOCK:
            old = EVENTS.get((ns, name))
            if old is None:
                self.send_json(404, status(404, "NotFound", f'events.events.k8s.io "{name}" not found'))
                return
            new = merge_patch(json.loads(json.dumps(old)), patch)
            causes = validate_update(new, old)
            if causes:
                self.invalid(name, causes)
                return
            new["metadata"]["resourceVersion"] = next_version()
            EVENTS[(ns, name)] = new
        append(EVENTS_OUT, json.dumps({"verb": "patch", "path": urlsplit(self.path).path, "body": patch, "object": new}))
        self.send_json(200, new)


def watch_events():
    """The watch events appended to WATCH_EVENTS so far (complete lines)."""
    if WATCH_EVENTS is None:
        return []
    try:
        with open(WATCH_EVENTS, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


EVENTS = {}
VERSION = [RESOURCE_VERSION + 1]
QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def next_version():
    VERSION[0] += 1
    return str(VERSION[0])


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = merge_patch(target.get(k), v)
    return target


def validate_series(ev):
    causes = []
    series = ev.get("series")
    if series is not None:
        if int(series.get("count", 0)) < 2:
            causes.append("series.count: Invalid value: should be at least 2")
        if not series.get("lastObservedTime"):
            causes.append("series.lastObservedTime: Required value")
    return causes


def validate_create(ev, ns):
    causes = validate_series(ev)
    md = ev.get("metadata", {})
    name = md.get("name", "")
    if not name or len(name) > 253 or not SUBDOMAIN.match(name):
        causes.append(f"metadata.name: Invalid value: {name!r}: a DNS-1123 subdomain of at most 253 characters")
    if md.get("namespace", ns) != ns:
        causes.append("metadata.namespace: Invalid value: does not match the namespace of the request")
    if (ev.get("regarding") or {}).get("namespace", "") != ns:
        causes.append("involvedObject.namespace: Invalid value: does not match event.namespace")
    if not ev.get("eventTime"):
        causes.append("eventTime: Required value")
    if ev.get("type") not in ("Normal", "Warning"):
        causes.append(f"type: Invalid value: has invalid value: {ev.get('type')}")
    for gone in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount", "deprecatedSource"):
        if ev.get(gone):
            causes.append(f"{gone}: Invalid value: needs to be unset")
    rc = ev.get("reportingController", "")
    if not rc:
        causes.append("reportingController: Required value")
    elif not QUALIFIED.match(rc):
        causes.append(f"reportingController: Invalid value: {rc!r}: not a qualified name")
    for field, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128)):
        value = ev.get(field, "")
        if not value:
            causes.append(f"{field}: Required value")
        elif len(value) > limit:
            causes.append(f"{field}: Invalid value: can have at most {limit} characters")
    if len(ev.get("note", "").encode()) > 1024:
        causes.append("note: Invalid value: can have at most 1024 characters")
    return causes


def validate_update(new, old):
    causes = validate_series(new) if new.get("series") != old.get("series") else []
    for field in set(old) | set(new):
        if field in ("series", "metadata"):
            continue
        if new.get(field) != old.get(field):
            causes.append(f"{field}: Invalid value: field is immutable")
    for field in ("name", "namespace", "uid", "creationTimestamp"):
        if new.get("metadata", {}).get(field) != old["metadata"].get(field):
            causes.append(f"metadata.{field}: Invalid value: field is immutable")
    return causes


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
