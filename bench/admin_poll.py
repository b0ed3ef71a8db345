#!/usr/bin/env python3
"""Polls the bridge's admin API every second while a benchmark runs, and summarises.

Each tick (PERIOD seconds, default 1) asks, one call after the other, on a new connection each:
  transfers      GET /api/v1/transfers            (the full list: default limit 1000)
  status         GET /api/v1/status               )
  transfers_200  GET /api/v1/transfers?limit=200  ) what the status page asks every 2 s
  sessions       GET /api/v1/sessions?limit=200   )
  bans           GET /api/v1/bans                 )
and records each call's latency (request sent to last body byte), body size and X-Total-Count.
A tick that overruns the period starts the next one at once; ticks are not made up.

Runs until SIGTERM or SIGINT, then prints one summary line per call and one for the page's
refresh (the four page calls of a tick, back to back: an upper bound of what the page waits,
since it sends the last three at once), and writes every sample to RAW if given.

Usage: ADMIN_TOKEN=... bench/admin_poll.py HOST:PORT [RAW]   (PERIOD=seconds, optional)
Only the standard library.
"""

import http.client
import json
import os
import signal
import sys
import time

CALLS = [
    ("transfers", "/api/v1/transfers"),
    ("status", "/api/v1/status"),
    ("transfers_200", "/api/v1/transfers?limit=200"),
    ("sessions", "/api/v1/sessions?limit=200"),
    ("bans", "/api/v1/bans"),
]
PAGE = ("status", "transfers_200", "sessions", "bans")
TIMEOUT = 10.0


class Stop(Exception):
    pass


def stop(_signum, _frame):
    raise Stop()


def call(host, port, path, token):
    """One GET on a fresh connection: (status, latency_s, body_bytes, total or None, rows or None)."""
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        latency = time.perf_counter() - started
        total = resp.getheader("X-Total-Count")
    finally:
        conn.close()
    rows = None
    if resp.status == 200:
        data = json.loads(body)
        rows = len(data) if isinstance(data, list) else None
    return resp.status, latency, len(body), int(total) if total is not None else None, rows


def quantile(values, q):
    """Nearest-rank quantile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return ordered[int(rank) - 1]


def ms(seconds):
    return f"{seconds * 1000:.1f}"


def summarise(samples, ticks, errors, started):
    cpu = os.times()
    lines = [
        f"admin poll: {ticks} ticks over {time.monotonic() - started:.0f} s, {errors} failed calls,"
        f" poller CPU {cpu.user + cpu.system:.1f} s"
    ]
    for name, _ in CALLS:
        mine = [s for s in samples if s["call"] == name and s["status"] == 200]
        if not mine:
            lines.append(f"admin poll {name}: no successful call")
            continue
        latencies = [s["latency"] for s in mine]
        line = (
            f"admin poll {name}: polls={len(mine)} p50_ms={ms(quantile(latencies, 0.5))}"
            f" p95_ms={ms(quantile(latencies, 0.95))} max_ms={ms(max(latencies))}"
            f" max_bytes={max(s['bytes'] for s in mine)}"
        )
        counted = [s for s in mine if s["total"] is not None]
        if counted:
            # The largest X-Total-Count seen, and the answer's size and latency at that poll.
            peak = max(counted, key=lambda s: (s["total"], s["bytes"]))
            line += (
                f" max_total={peak['total']} rows_at_max={peak['rows']}"
                f" bytes_at_max={peak['bytes']} ms_at_max={ms(peak['latency'])}"
            )
            # Latency while at least 90 % of that many were listed.
            busy = [s["latency"] for s in counted if s["total"] >= 0.9 * peak["total"]]
            if peak["total"] and busy:
                line += (
                    f" busy_polls={len(busy)} busy_p50_ms={ms(quantile(busy, 0.5))}"
                    f" busy_p95_ms={ms(quantile(busy, 0.95))}"
                )
        lines.append(line)
    refreshes = []
    for tick in range(ticks):
        page = [s for s in samples if s["tick"] == tick and s["call"] in PAGE]
        if len(page) == len(PAGE) and all(s["status"] == 200 for s in page):
            refreshes.append(sum(s["latency"] for s in page))
    if refreshes:
        lines.append(
            f"admin poll page_refresh: refreshes={len(refreshes)} p50_ms={ms(quantile(refreshes, 0.5))}"
            f" p95_ms={ms(quantile(refreshes, 0.95))} max_ms={ms(max(refreshes))}"
        )
    return "\n".join(lines)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: ADMIN_TOKEN=... admin_poll.py HOST:PORT [RAW]")
    host, _, port = sys.argv[1].rpartition(":")
    raw = sys.argv[2] if len(sys.argv) == 3 else None
    token = os.environ.get("ADMIN_TOKEN", "")
    period = float(os.environ.get("PERIOD", "1"))
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    samples, ticks, errors = [], 0, 0
    started = time.monotonic()
    next_tick = started
    try:
        while True:
            now = time.monotonic()
            if now < next_tick:
                time.sleep(next_tick - now)
            for name, path in CALLS:
                at = time.time()
                try:
                    status, latency, size, total, rows = call(host, int(port), path, token)
                except (OSError, http.client.HTTPException, ValueError) as e:
                    errors += 1
                    samples.append({"tick": ticks, "call": name, "at": at, "status": 0,
                                    "error": str(e), "latency": 0.0, "bytes": 0,
                                    "total": None, "rows": None})
                    continue
                if status != 200:
                    errors += 1
                samples.append({"tick": ticks, "call": name, "at": at, "status": status,
                                "latency": latency, "bytes": size, "total": total, "rows": rows})
            ticks += 1
            next_tick = max(next_tick + period, time.monotonic())
    except Stop:
        pass
    if raw:
        with open(raw, "w") as out:
            for s in samples:
                out.write(json.dumps(s) + "\n")
    print(summarise(samples, ticks, errors, started), flush=True)


if __name__ == "__main__":
    main()
