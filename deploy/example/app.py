"""A stand-in web app for the autoscaling example: DogStatsD to the node's statsd-bridge.

The Deployment's pods share a load of about $TOTAL_REQUESTS_PER_SECOND requests a second,
which follows a slow wave ($WAVE_SECONDS long). Each pod counts its peers through the
headless Service $PEERS (one DNS address per ready pod) and takes its share, so adding
replicas lowers every pod's rate, as a load balancer would. Every second each pod sends,
over UDP to $DD_AGENT_HOST:$DD_DOGSTATSD_PORT (its node's IP, from the downward API):
  requests:<n>|c|#route:/checkout          the requests it served (a counter)
  request.latency:<ms>|ms|#route:/checkout  their latencies (a timer, up to 20 a second)
  queue_depth:<n>|g|#queue:orders           its share of the orders waiting (a gauge)
The bridge adds the pod's `namespace`, `pod` and `app` labels; the adapter serves
pods/requests_per_second and the external metric queue_depth{queue="orders"} from them.
Standard library only, so it runs in the plain python image.
"""

import math
import os
import random
import socket
import time

HOST = os.environ.get("DD_AGENT_HOST", "127.0.0.1")
PORT = int(os.environ.get("DD_DOGSTATSD_PORT", "8125"))
TOTAL = float(os.environ.get("TOTAL_REQUESTS_PER_SECOND", "30"))
WAVE = float(os.environ.get("WAVE_SECONDS", "900"))
PEERS = os.environ.get("PEERS", "")


def peer_count():
    """Ready pods behind the headless Service (1 when it can't be resolved)."""
    if not PEERS:
        return 1
    try:
        infos = socket.getaddrinfo(PEERS, None, socket.AF_UNSPEC, socket.SOCK_DGRAM)
    except OSError:
        return 1
    return max(1, len({info[4][0] for info in infos}))


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    peers, peers_checked = 1, -60.0
    print(f"sending DogStatsD to {HOST}:{PORT}; total load ~{TOTAL} requests/s", flush=True)
    while True:
        now = time.monotonic()
        if now - peers_checked >= 10.0:
            peers, peers_checked = peer_count(), now
        total = TOTAL * (1.0 + 0.8 * math.sin(2.0 * math.pi * (now - start) / WAVE))
        share = total / peers
        served = max(0, round(random.gauss(share, math.sqrt(max(share, 1.0)))))
        lines = [f"requests:{served}|c|#route:/checkout"]
        lines += [
            f"request.latency:{random.lognormvariate(3.5, 0.5):.1f}|ms|#route:/checkout"
            for _ in range(min(served, 20))
        ]
        # Orders pile up with the load: about two per request/s in all, split over the pods.
        lines.append(f"queue_depth:{2.0 * total / peers:.1f}|g|#queue:orders")
        try:
            sock.sendto("\n".join(lines).encode(), (HOST, PORT))
        except OSError as err:  # no bridge on this node yet: try again next second
            print(f"send failed: {err}", flush=True)
        time.sleep(1.0)


if __name__ == "__main__":
    main()
