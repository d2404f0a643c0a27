#!/usr/bin/env python3
"""Parses a Prometheus text exposition (stdin) with prometheus_client's own parser and
prints every sample as JSON: [{"name", "labels", "value"}], plus each family's type.
Exits 1 with the parser's message when the text is not valid exposition format."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

try:
    families = list(text_string_to_metric_families(sys.stdin.read()))
except Exception as e:  # the parser raises ValueError and friends on bad input
    print(f"not valid Prometheus text: {e}", file=sys.stderr)
    sys.exit(1)
out = {"types": {}, "samples": []}
for f in families:
    out["types"][f.name] = f.type
    for s in f.samples:
        out["samples"].append({"name": s.name, "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout)
