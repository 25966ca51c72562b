#!/usr/bin/env python3
"""Parse a Prometheus text exposition (stdin) with the official Python client's parser.

Prints a JSON list of samples, each {"name": ..., "labels": {...}, "value": "<repr>"}; values
are strings so NaN and infinities survive JSON. Exits 1 (with the error) if the text does not
parse: an independent check of the bridge's escaping.
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    samples = []
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.append({"name": s.name, "labels": dict(s.labels), "value": repr(s.value)})
    except Exception as exc:  # the parser raises ValueError and friends
        print("parse error: %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
        return 1
    json.dump(samples, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
