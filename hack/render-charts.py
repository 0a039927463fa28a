#!/usr/bin/env python3
"""Renders a chart with Helm's own engine (helm-python-sdk: Helm v4's Go library) and prints the
manifests as `helm template` would: `render-charts.py CHART_DIR [VALUES_FILE...]`.

tests/images.rs runs it on the fixture charts of tests/fixtures/charts/ to check that
`prepuller images --values` composes each image as the chart's templates do. The values files are
the user's (`helm -f`): the chart's own values.yaml is Helm's to apply, as on an install.
"""
import sys

import helm_python as helm


def merge_maps(a, b):
    """helm's pkg/cli/values/options.go mergeMaps: maps merged key by key, b winning; anything
    else (lists too) replaced whole. This is how `helm -f a.yaml -f b.yaml` merges the files."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_maps(out[k], v)
        else:
            out[k] = v
    return out


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    values = {}
    for path in argv[2:]:
        with open(path, encoding="utf-8") as f:
            values = merge_maps(values, helm.values_from_yaml(f.read()))
    with helm.Chart.load(argv[1]) as chart:
        manifests = chart.render(values=values, name="fixture", namespace="fixtures")
    for name in sorted(manifests):
        text = manifests[name]
        if name.endswith("NOTES.txt") or not text.strip():
            continue
        sys.stdout.write(f"---\n# Source: {name}\n{text.rstrip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
