#!/usr/bin/env python3
"""Parse an OpenMetrics 1.0 exposition (stdin) with the official Python client's strict parser.

Uses `prometheus_client.openmetrics.parser.text_string_to_metric_families`, which checks far
more than the text-format parser: `# EOF` last, no blank lines, counter samples ending in
`_total`, no clashing names, histogram buckets in order with `_count` equal to `+Inf`, no
negative or NaN counter-like samples, canonical `le` values…

Prints a JSON list of families, each {"name", "type", "samples": [{"name", "labels", "value"}]}
with values as strings so NaN and infinities survive JSON. Exits 1 (with the error) if the text
does not parse.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    families = []
    try:
        # Iterating drives the parser to the end: errors surface only as families are built.
        for family in text_string_to_metric_families(text):
            families.append({
                "name": family.name,
                "type": family.type,
                "samples": [
                    {"name": s.name, "labels": dict(s.labels), "value": repr(s.value)}
                    for s in family.samples
                ],
            })
    except Exception as exc:  # the parser raises ValueError and friends
        print("parse error: %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
        return 1
    json.dump(families, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
