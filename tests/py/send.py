#!/usr/bin/env python3
"""Send DogStatsD traffic with the real Datadog client (`datadog` package).

Usage: send.py --host 127.0.0.1 --port 8125 [--source 127.0.0.11] < ops.json
       send.py --socket-path /path/to/dsd.socket < ops.json   (unix datagram socket)

--source binds the UDP socket to that address (a pod's IP); --container-id is the client's
own `container_id=` argument, which ends every line with `|c:<ID>`.

stdin is a JSON list of operations, each an object with an "op" and its arguments:

  {"op": "increment", "name": "a.b", "value": 1, "tags": ["env:prod"], "sample_rate": 1}
  {"op": "decrement" | "gauge" | "timing" | "histogram" | "distribution" | "set", ...same}
  {"op": "event", "title": "t", "text": "x", "alert_type": "error", "tags": [...],
   "aggregation_key": ..., "priority": ..., "source_type_name": ..., "hostname": ...}
  {"op": "service_check", "name": "c", "status": 0, "tags": [...], "message": ..., "hostname": ...}

Any op may carry "repeat": n to be sent n times. With "sample_rate" < 1 the client itself
drops samples at random (its own habit), so exact-value tests keep the rate at 1.

stdout is one JSON object: {"sent": [{"datagram": "...", "ok": true}, ...]}, the exact
datagrams the client handed to its socket. Exits 1 if the client reported a failed send,
2 on a bad operation.
"""

import argparse
import json
import os
import sys

# The client reads DD_* / DATADOG_* variables (agent address, constant tags such as env and
# service, origin detection) at import and construction: keep the traffic deterministic.
for _key in list(os.environ):
    if _key.startswith(("DD_", "DATADOG_")):
        del os.environ[_key]

from bound_client import add_target_arguments, client_from_args  # noqa: E402

METRIC_OPS = ("increment", "decrement", "gauge", "timing", "histogram", "distribution", "set")


def apply(client, op):
    kind = op.get("op")
    tags = op.get("tags")
    if kind in METRIC_OPS:
        name = op["name"]
        sample_rate = op.get("sample_rate")
        if kind in ("increment", "decrement"):
            value = op.get("value", 1)
        else:
            value = op["value"]
        getattr(client, kind)(name, value, tags=tags, sample_rate=sample_rate)
    elif kind == "event":
        extra = {
            k: op[k]
            for k in ("alert_type", "aggregation_key", "priority", "source_type_name",
                      "hostname", "date_happened")
            if k in op
        }
        client.event(op["title"], op.get("text", ""), tags=tags, **extra)
    elif kind == "service_check":
        extra = {k: op[k] for k in ("message", "hostname", "timestamp") if k in op}
        client.service_check(op["name"], op["status"], tags=tags, **extra)
    else:
        raise ValueError("unknown op: %r" % (op,))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_arguments(parser)
    args = parser.parse_args()
    client = client_from_args(parser, args)

    ops = json.load(sys.stdin)
    if not isinstance(ops, list):
        print("stdin must be a JSON list of operations", file=sys.stderr)
        return 2

    # Record what the client actually puts on the wire (and whether the send worked).
    sent = []
    xmit = getattr(client, "_xmit_packet", None)
    if xmit is not None:
        def recording_xmit(packet, is_telemetry, *rest, **kw):
            ok = xmit(packet, is_telemetry, *rest, **kw)
            sent.append({"datagram": packet, "ok": bool(ok)})
            return ok

        client._xmit_packet = recording_xmit

    try:
        for op in ops:
            for _ in range(int(op.get("repeat", 1))):
                apply(client, op)
    except (KeyError, ValueError, TypeError) as exc:
        print("bad operation: %s" % (exc,), file=sys.stderr)
        return 2
    client.flush()
    client.close_socket()

    json.dump({"sent": sent}, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    failed = [s["datagram"] for s in sent if not s["ok"]]
    if failed:
        print("the client failed to send: %r" % (failed,), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
