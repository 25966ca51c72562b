"""DogStatsD load for compose/compose.yaml, sent with the Datadog Python client.

Every second: the `requests` counter (a rate that follows a slow wave around
$REQUESTS_PER_SECOND), `request.latency` timings, and the `queue_depth` gauge of the
`orders` queue. The client reads DD_AGENT_HOST and DD_DOGSTATSD_PORT itself.
"""

import math
import os
import random
import time

from datadog import DogStatsd

RATE = float(os.environ.get("REQUESTS_PER_SECOND", "20"))
WAVE = float(os.environ.get("WAVE_SECONDS", "300"))


def main():
    # No client telemetry series; no container ID field (the bridge's static origin table
    # identifies this container by its address).
    statsd = DogStatsd(disable_telemetry=True, origin_detection_enabled=False)
    print(f"sending DogStatsD to {statsd.host}:{statsd.port}, about {RATE} requests/s")
    start = time.monotonic()
    while True:
        load = RATE * (1.0 + 0.8 * math.sin(2.0 * math.pi * (time.monotonic() - start) / WAVE))
        served = max(0, round(random.gauss(load, math.sqrt(max(load, 1.0)))))
        statsd.increment("requests", served, tags=["route:/checkout"])
        for _ in range(min(served, 20)):
            statsd.timing("request.latency", random.lognormvariate(3.5, 0.5), tags=["route:/checkout"])
        statsd.gauge("queue_depth", round(2.0 * load), tags=["queue:orders"])
        statsd.flush()
        time.sleep(1.0)


if __name__ == "__main__":
    main()
