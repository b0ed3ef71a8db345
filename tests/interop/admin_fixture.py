#!/usr/bin/env python3
"""Stand-in for the bridge's admin API, for developing src/admin/page.html without the Rust server.

Serves the page at / (re-read on every request, with the CSP the bridge sends) and canned,
slowly changing JSON for /api/v1/... behind a bearer token (401 otherwise). The actions
(close a session, retry a dead letter, lift a ban, reload) change the canned state.

    python3 tests/interop/admin_fixture.py --port 9180 --token secret [--hostile] [--no-outbox] [--shared] [--unready] [--delay S]
    open http://127.0.0.1:9180/#token=secret

--token '' accepts requests without a token (like the admin on loopback with none configured).
POST /_fixture/errors toggles 503 answers on every API path (to see the page's error banner);
POST /_fixture/reload-fails toggles a 422 answer to POST /api/v1/reload.
"""
import argparse
import copy
import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = os.path.join(HERE, "..", "..", "src", "admin", "page.html")
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HOSTILE = "<img src=x onerror=alert(1)>.mp4"

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=9180)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--token", default="secret")
parser.add_argument("--page", default=PAGE, help="the HTML file served at /")
parser.add_argument("--hostile", action="store_true", help="add an upload whose file name is HTML")
parser.add_argument("--no-outbox", action="store_true", help="no completion API configured")
parser.add_argument("--shared", action="store_true", help="PostgreSQL shared state")
parser.add_argument("--unready", action="store_true", help="the S3 check fails")
parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each API answer")
args = parser.parse_args()

START = time.time()
LOCK = threading.Lock()
FLAGS = {"errors": False, "reload_fails": False}


def ts(offset_seconds=0.0):
    t = datetime.now(timezone.utc) + timedelta(seconds=offset_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def uid(n):
    return f"0193a4c2-7b1e-7{n:03x}-9f3a-4c5d6e7f{n:04x}"


# Running uploads: (n, user, protocol, path, client, age s, rate B/s, expected bytes or None)
UPLOADS = [
    (1, "alice", "ftps", "/incoming/match-final.mxf", "203.0.113.7:51234", 312, 6.2 * 2**20, None),
    (2, "camera-7", "sftp", "/cam7/2026-11-30/clip-0042.mov", "198.51.100.23:40022", 95, 3.1 * 2**20, 900 * 2**20),
    (3, "camera-7", "sftp", "/cam7/2026-11-30/clip-0043.mov", "198.51.100.23:40031", 21, 2.4 * 2**20, 640 * 2**20),
    (4, "newsdesk", "ftp", "/drops/interview-raw.mp4", "192.0.2.41:61002", 4, 1.3 * 2**20, None),
]
SESSIONS = [
    (1, "alice", "ftps", "203.0.113.7:51230", 330, 1),
    (2, "camera-7", "sftp", "198.51.100.23:40020", 4210, 2),
    (4, "newsdesk", "ftp", "192.0.2.41:61000", 9, 1),
    (5, "archive-bot", "sftp", "[2001:db8::17]:53344", 1800, 0),
    (6, None, "ftp", "192.0.2.99:50123", 3, 0),
]
STATE = {
    "sessions": {uid(100 + s[0]): s for s in SESSIONS},
    "dead": [{
        "id": uid(301), "state": "dead", "key": "camera-7/cam7/2026-11-30/clip-0031.mov", "attempts": 1, "step": 0,
        "last_error": 'HTTP 400 from https://api.example.com/v1/uploads: {"error":"unknown channel"}',
        "created_at": ts(-2400), "updated_at": ts(-2399), "next_attempt_at": None,
    }],
    "pending": [
        {"id": uid(311), "state": "pending", "key": "alice/incoming/promo-30s.mov", "attempts": 2, "step": 0,
         "last_error": "HTTP 503 from https://api.example.com/v1/uploads: upstream unavailable",
         "created_at": ts(-75), "updated_at": ts(-15), "next_attempt_at": ts(25)},
        {"id": uid(312), "state": "pending", "key": "newsdesk/drops/vox-pop-3.mp4", "attempts": 0, "step": 0,
         "last_error": None, "created_at": ts(-2), "updated_at": ts(-2), "next_attempt_at": ts(0)},
    ],
    "delivered": [
        {"id": uid(320 + i), "state": "delivered", "key": k, "attempts": a, "step": 1 if i == 0 else 0,
         "last_error": None, "created_at": ts(-60 * (i + 1) - 5), "updated_at": ts(-60 * (i + 1)), "next_attempt_at": None}
        for i, (k, a) in enumerate([
            ("alice/incoming/match-highlights.mxf", 1), ("camera-7/cam7/2026-11-30/clip-0041.mov", 1),
            ("camera-7/cam7/2026-11-30/clip-0040.mov", 2), ("newsdesk/drops/presser-0930.mp4", 1),
            ("archive-bot/2026/11/29/nightly.tar", 1)])
    ],
    "delivered_total": 120,
    "bans": {"198.51.100.4": (1740, 2, 0)},
}
if args.hostile:
    UPLOADS.append((5, "mallory", "ftp", "/" + HOSTILE, "192.0.2.66:50001", 7, 512 * 1024, None))
    STATE["sessions"][uid(105)] = (105, "mallory", "ftp", "192.0.2.66:50000", 8, 1)
    STATE["bans"]["2001:db8::66"] = (600, 1, 0)
    STATE["dead"].append(dict(STATE["dead"][0], id=uid(302), key="mallory/" + HOSTILE,
                              last_error="HTTP 400: <script>alert(2)</script>"))


def transfers():
    now = time.time() - START
    out = []
    for n, user, proto, path, client, age, rate, expected in UPLOADS:
        elapsed = age + now
        got = int(rate * elapsed)
        if expected is not None:
            got = min(got, expected - 1)
        out.append({
            "id": uid(n), "session_id": uid(100 + n), "username": user, "protocol": proto, "path": path,
            "key": user + path, "remote_addr": client, "bytes": got, "rate_bytes_per_second": rate,
            "started_at": ts(-elapsed), "elapsed_seconds": round(elapsed, 1),
        })
    return out


def sessions():
    now = time.time() - START
    return [{"id": sid, "protocol": p, "username": u, "remote_addr": a, "started_at": ts(-(age + now)),
             "uploads": up, "replica": "bridge-7f9c-abc"} for sid, (_, u, p, a, age, up) in STATE["sessions"].items()]


def bans():
    now = time.time() - START
    return [{"address": a, "until": ts(left - now), "seconds_left": max(0, int(left - now)), "bans": b, "failures": f}
            for a, (left, b, f) in STATE["bans"].items()]


def status():
    tr = transfers()
    return {
        "replica": "bridge-7f9c-abc", "version": "0.9.0", "started_at": ts(-(3 * 86400 + 4 * 3600 + 754)),
        "ready": not args.unready,
        "checks": {"listeners": {"ok": True}, "event_log": {"ok": True},
                   "s3": {"ok": False, "error": "PUT probe to bucket media-ingest: connection refused (os error 111)"}
                   if args.unready else {"ok": True},
                   "outbox": {"ok": True}, "state": {"ok": True}},
        "state_backend": "postgres" if args.shared else "sqlite", "shared": args.shared,
        "outbox": {"enabled": not args.no_outbox, "pending": len(STATE["pending"]), "dead": len(STATE["dead"]),
                   "delivered": STATE["delivered_total"],
                   "oldest_pending_at": STATE["pending"][0]["created_at"] if STATE["pending"] else None},
        "transfers": {"count": len(tr), "bytes": sum(t["bytes"] for t in tr),
                      "rate_bytes_per_second": sum(t["rate_bytes_per_second"] for t in tr)},
        "sessions": {"count": len(STATE["sessions"])},
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, code, body, ctype="application/json", total=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if total is not None:
            self.send_header("X-Total-Count", str(total))
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(data)

    def route(self, method):
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        if method == "GET" and path == "/":
            with open(args.page, "rb") as f:
                return self.send(200, f.read(), "text/html; charset=utf-8")
        if method == "POST" and path == "/_fixture/errors":
            FLAGS["errors"] = not FLAGS["errors"]
            return self.send(200, FLAGS)
        if method == "POST" and path == "/_fixture/reload-fails":
            FLAGS["reload_fails"] = not FLAGS["reload_fails"]
            return self.send(200, FLAGS)
        if not path.startswith("/api/v1/"):
            return self.send(404, {"error": "not found"})
        if args.token and self.headers.get("Authorization") != "Bearer " + args.token:
            return self.send(401, {"error": "missing or wrong bearer token"})
        if args.delay:
            time.sleep(args.delay)
        if FLAGS["errors"]:
            return self.send(503, {"error": "state database unavailable (fixture)"})
        parts = [unquote(p) for p in path[len("/api/v1/"):].split("/")]
        limit = int(query.get("limit", ["100"])[0])
        with LOCK:
            if method == "GET" and parts == ["status"]:
                return self.send(200, status())
            if method == "GET" and parts == ["transfers"]:
                rows = transfers()
                return self.send(200, rows[:limit], total=len(rows))
            if method == "GET" and parts == ["sessions"]:
                rows = sessions()
                return self.send(200, rows[:limit], total=len(rows))
            if method == "GET" and parts == ["bans"]:
                rows = bans()
                return self.send(200, rows[:limit], total=len(rows))
            if method == "GET" and parts == ["outbox"]:
                if args.no_outbox:
                    return self.send(404, {"error": "no outbox: notify.url is not set"})
                st = query.get("state", ["pending"])[0]
                if st not in ("pending", "dead", "delivered"):
                    return self.send(400, {"error": f"unknown state {st!r}"})
                rows = STATE[st]
                total = STATE["delivered_total"] if st == "delivered" else len(rows)
                return self.send(200, rows[:limit], total=total)
            if method == "DELETE" and len(parts) == 2 and parts[0] == "sessions":
                if STATE["sessions"].pop(parts[1], None) is None:
                    return self.send(404, {"error": f"no session {parts[1]} on this replica"})
                return self.send(200, {"id": parts[1], "closed": True})
            if method == "POST" and len(parts) == 3 and parts[0] == "outbox" and parts[2] == "retry":
                entry = next((e for e in STATE["dead"] if e["id"] == parts[1]), None)
                if entry is None:
                    return self.send(404, {"error": f"no dead letter {parts[1]}"})
                STATE["dead"].remove(entry)
                STATE["pending"].append(dict(entry, state="pending", next_attempt_at=ts(), updated_at=ts()))
                return self.send(200, {"id": parts[1], "state": "pending"})
            if method == "DELETE" and len(parts) == 2 and parts[0] == "bans":
                if STATE["bans"].pop(parts[1], None) is None:
                    return self.send(404, {"error": f"{parts[1]} is not banned"})
                return self.send(200, {"address": parts[1], "lifted": True})
            if method == "POST" and parts == ["reload"]:
                if FLAGS["reload_fails"]:
                    return self.send(422, {"error": "config: [notify] url: relative URL without a base"})
                return self.send(200, {"reloaded": True})
        return self.send(404, {"error": f"no route {method} {path}"})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def log_message(self, *a):
        pass


ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
