#!/usr/bin/env python3
"""The consumer side of scripts/bench-consume (standard library only).

  consumer.py end   API TOKEN            prints the cursor after every event visible now
  consumer.py read  API TOKEN AFTER STOP_FILE
                                          read /v1/events from AFTER until STOP_FILE exists
                                          and a page is done; prints events read, events/s,
                                          and how long after STOP_FILE appeared it was done
  consumer.py delay GATEWAY API TOKEN N RATE OUT
                                          post N envelope events at RATE/s while a long poll
                                          (wait=10) reads them; prints 202->seen p50/p99 in ms
                                          and writes "eventId seen_epoch" lines to OUT
"""
import http.client
import json
import os
import sys
import threading
import time
from datetime import datetime


def get_page(conn, token, after, limit, wait):
    conn.request("GET", f"/v1/events?after={after}&limit={limit}&wait={wait}",
                 headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"api answered {r.status}: {body[:300]!r}")
    return json.loads(body)


def connect(addr):
    host, port = addr.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=60)


def skip_to_end(conn, token):
    """The cursor after every event visible now."""
    after = "start"
    while True:
        p = get_page(conn, token, after, 1000, 0)
        after = p["next"]
        if p["done"]:
            return after


def end(api, token):
    print(skip_to_end(connect(api), token))


def read(api, token, after, stop_file):
    conn = connect(api)
    n, started, stop_seen = 0, time.time(), None
    while True:
        p = get_page(conn, token, after, 1000, 1)
        n += len(p["data"])
        after = p["next"]
        if stop_seen is None and os.path.exists(stop_file):
            stop_seen = time.time()
        if stop_seen is not None and p["done"]:
            break
    now = time.time()
    cpu = time.process_time()
    print(f"read {n} events in {now - started:.1f} s ({n / (now - started):.0f} events/s), done "
          f"{now - stop_seen:.1f} s after the drain; this Python consumer itself used {cpu:.1f} s of CPU "
          f"({cpu / (now - started):.2f} of a core)")


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def delay(gateway, api, token, count, rate, out):
    conn = connect(api)
    after = skip_to_end(conn, token)
    posted, seen, stored = {}, {}, {}
    run = f"d{int(time.time())}"

    def sender():
        g = connect(gateway)
        for i in range(count):
            eid = f"{run}_{i}"
            body = json.dumps({"provider": "stripe", "eventId": eid,
                               "timestamp": "2026-11-22T21:35:25.123Z", "data": {"i": i}})
            t0 = time.time()
            g.request("POST", "/webhooks/stripe", body=body, headers={"Content-Type": "application/json"})
            r = g.getresponse()
            r.read()
            if r.status == 202:
                posted[eid] = time.time()
            time.sleep(max(0.0, 1.0 / rate - (time.time() - t0)))

    t = threading.Thread(target=sender)
    t.start()
    deadline = time.time() + count / rate + 30
    while len(seen) < count and time.time() < deadline:
        p = get_page(conn, token, after, 1000, 10)
        now = time.time()
        for e in p["data"]:
            if e["eventId"].startswith(run):
                seen[e["eventId"]] = now
                stored[e["eventId"]] = datetime.fromisoformat(e["storedAt"].replace("Z", "+00:00")).timestamp()
        after = p["next"]
    t.join()
    d202 = [(seen[k] - posted[k]) * 1000 for k in seen if k in posted]
    print(f"posted {len(posted)} (202), seen {len(seen)}")
    print(f"202 -> seen      p50 {percentile(d202, 0.5):7.1f} ms   p99 {percentile(d202, 0.99):7.1f} ms")
    with open(out, "w") as f:
        for k, t in seen.items():
            f.write(f"{k} {t:.6f}\n")


def commit_delays(seen_file, commits_file):
    """p50/p99 of commit -> seen from "eventId seen" and "eventId commit" lines."""
    seen = dict(line.split() for line in open(seen_file))
    d = [(float(seen[k]) - float(c)) * 1000 for k, c in (l.split() for l in open(commits_file)) if k in seen]
    print(f"commit -> seen   p50 {percentile(d, 0.5):7.1f} ms   p99 {percentile(d, 0.99):7.1f} ms"
          f"   ({len(d)} events; pg_xact_commit_timestamp)")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "end":
        end(sys.argv[2], sys.argv[3])
    elif mode == "read":
        read(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif mode == "delay":
        delay(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), sys.argv[7])
    elif mode == "commits":
        commit_delays(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
