#!/usr/bin/env python3
"""One pod's application: sends DogStatsD with the real Datadog client (`datadog` package) at a
load the test sets, until stdin closes.

Usage: pod_sender.py --host 127.0.0.1 --port 8125 --source 127.0.0.11   (UDP from that address)
       pod_sender.py --socket-path /path/dsd.socket [--container-id ID]  (unix datagram socket)

--source binds the client's UDP socket to that address before it connects, so the datagrams
come from the pod's IP, as they do from a pod on a node. --container-id is the client's own
`container_id=` argument: every line then ends with `|c:<ID>`.

stdin is JSON lines, each one a new load, applied at once:

  {"requests_per_second": 20, "queue_depth": 7}
      increment("requests", n) so that the counter grows by `requests_per_second` per second
      (whole counts, the remainder carried), and gauge("jobs.queue_depth", queue_depth), every
      --tick seconds; either key may be left out (that metric is then not sent);
  {"pause": true}
      send nothing until the next load (the pod went quiet).

Nothing is sent before the first line. Each applied line is acknowledged on stdout with one
JSON line: {"applied": <n>, "pid": <pid>, "datagrams": <sent so far>, "failed": <failed so far>}.
Every --report seconds (and at exit) the same counters are printed as {"datagrams": …}.
Exits 0 when stdin closes, 1 if the client failed to send a datagram, 2 on a bad line.
"""

import argparse
import json
import os
import queue
import sys
import threading
import time

# The client reads DD_* / DATADOG_* variables (agent address, constant tags, origin detection) at
# import and construction: keep the traffic deterministic.
for _key in list(os.environ):
    if _key.startswith(("DD_", "DATADOG_")):
        del os.environ[_key]

from bound_client import add_target_arguments, client_from_args  # noqa: E402


def read_commands(lines):
    """Reads stdin in a thread; None marks its end."""
    for raw in sys.stdin:
        raw = raw.strip()
        if raw:
            lines.put(raw)
    lines.put(None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_arguments(parser)
    parser.add_argument("--tick", type=float, default=0.1, help="seconds between sends")
    parser.add_argument("--report", type=float, default=5.0, help="seconds between reports")
    args = parser.parse_args()
    client = client_from_args(parser, args)

    counts = {"datagrams": 0, "failed": 0}
    xmit = getattr(client, "_xmit_packet", None)
    if xmit is not None:
        def counting_xmit(packet, is_telemetry, *rest, **kw):
            ok = xmit(packet, is_telemetry, *rest, **kw)
            counts["datagrams"] += 1
            if not ok:
                counts["failed"] += 1
            return ok

        client._xmit_packet = counting_xmit

    def say(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    lines = queue.Queue()
    threading.Thread(target=read_commands, args=(lines,), daemon=True).start()

    load = None  # (requests_per_second or None, queue_depth or None)
    carry = 0.0
    applied = 0
    last = time.monotonic()
    last_report = last
    while True:
        # Apply every waiting line; wait one tick for more.
        try:
            raw = lines.get(timeout=args.tick)
        except queue.Empty:
            raw = ""
        while raw is not None and raw != "":
            try:
                cmd = json.loads(raw)
                if cmd.get("pause"):
                    load = None
                else:
                    rps = cmd.get("requests_per_second")
                    depth = cmd.get("queue_depth")
                    load = (
                        None if rps is None else float(rps),
                        None if depth is None else depth,
                    )
            except (ValueError, TypeError, AttributeError) as exc:
                print("bad line %r: %s" % (raw, exc), file=sys.stderr)
                return 2
            carry = 0.0
            last = time.monotonic()
            applied += 1
            say({"applied": applied, "pid": os.getpid(), **counts})
            try:
                raw = lines.get_nowait()
            except queue.Empty:
                raw = ""
        if raw is None:
            break
        now = time.monotonic()
        if load is not None:
            rps, depth = load
            if rps is not None:
                carry += rps * (now - last)
                whole = int(carry)
                if whole > 0:
                    client.increment("requests", whole)
                    carry -= whole
            if depth is not None:
                client.gauge("jobs.queue_depth", depth)
        last = now
        if now - last_report >= args.report:
            last_report = now
            say(dict(counts))
        if counts["failed"]:
            print("the client failed to send %d datagram(s)" % counts["failed"], file=sys.stderr)
            say(dict(counts))
            return 1

    client.flush()
    client.close_socket()
    say(dict(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
