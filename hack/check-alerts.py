#!/usr/bin/env python3
"""Check the alerts, recording rules and Grafana dashboard of deploy/components/metrics/ with
promtool, against the agent's metric names as the README documents them.

Run by `make alerts-check` (part of `make test`) with the repo's .venv python:

    .venv/bin/python hack/check-alerts.py [--promtool promtool]

1. The PrometheusRule's `spec` is a Prometheus rules file: extracted to a temp dir, it must pass
   `promtool check rules`, and every alert must have a summary and a description.
2. `promtool test rules` runs the unit tests in deploy/components/metrics/tests/ on it. Every
   alert must be tested both firing and not firing there, and the tests must not be vacuous:
   each alert's expression is replaced in turn by one that never fires and one that always
   fires, and the tests must then fail.
3. Every `expr` of dashboard.json (Grafana variables replaced by sample values) becomes a
   recording rule in a temp rules file that must pass `promtool check rules` (PromQL syntax).
4. Every metric name used by the rules and the dashboard is a metric of the README's table
   (or `up`, or a series the rules record).

Prints one line per step and every failure; exits 1 on any failure.
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENT = os.path.join(ROOT, "deploy", "components", "metrics")
RULE_FILE = os.path.join(COMPONENT, "prometheusrule.yaml")
TESTS_DIR = os.path.join(COMPONENT, "tests")
DASHBOARD = os.path.join(COMPONENT, "dashboard.json")
README = os.path.join(ROOT, "README.md")
# The name the unit tests' rule_files expect.
RULES_NAME = "prepuller.rules.yaml"

# Grafana's variables, replaced by a value of the right kind before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": "prepuller"}

# Words of PromQL that look like metric names: functions are told apart by their `(`, these are not.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
            "bool", "offset", "inf", "nan", "atan2"}

NEVER = "vector(1) == 2"   # an expression that never returns anything
ALWAYS = "vector(1)"       # one that always does


def readme_metrics():
    """The metric names of the README's metric table (`| \\`prepuller_...\\` | type | ...`), with
    the series names each type exposes."""
    names = set()
    for line in open(README):
        m = re.match(r"\|\s*`(prepuller_[a-z_]+)`\s*\|\s*(counter|gauge|histogram)\s*\|", line)
        if not m:
            continue
        name, kind = m.groups()
        names.add(name)
        if kind == "histogram":
            names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return names


def metric_names(expr):
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (inside {} or a by/without/on/ignoring/group_* list), or durations."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)   # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                                    # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                                   # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def promtool(args, cwd=None):
    proc = subprocess.run(args, capture_output=True, text=True, cwd=cwd)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def write_rules(path, spec):
    with open(path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False, width=1000)


def alerts_of(spec):
    return [r for g in spec["groups"] for r in g["rules"] if "alert" in r]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promtool", default="promtool")
    opts = parser.parse_args()
    if shutil.which(opts.promtool) is None:
        print(f"alerts-check: {opts.promtool} not found: `make setup` installs it (Debian package prometheus)")
        return 1
    failures = []
    fail = failures.append

    with open(RULE_FILE) as f:
        rule = yaml.safe_load(f)
    spec = rule["spec"]
    known = readme_metrics()
    recorded = {r["record"] for g in spec["groups"] for r in g["rules"] if "record" in r}
    if not known:
        fail("no metric table found in README.md")

    tmp = tempfile.TemporaryDirectory()
    rules_path = os.path.join(tmp.name, RULES_NAME)

    # 1. The rules as Prometheus loads them.
    write_rules(rules_path, spec)
    ok, out = promtool([opts.promtool, "check", "rules", rules_path])
    if not ok:
        fail(f"promtool check rules on the PrometheusRule's spec:\n{out}")
    alerts = alerts_of(spec)
    for a in alerts:
        ann = a.get("annotations", {})
        for key in ("summary", "description"):
            if not ann.get(key):
                fail(f"alert {a['alert']} has no {key} annotation")
    print(f"alerts-check: promtool check rules: {'ok' if ok else 'FAILED'}: {len(alerts)} alerts, "
          f"{len(recorded)} recording rules")

    # 2. The unit tests, and their coverage: every alert firing and not firing.
    tests = sorted(f for f in os.listdir(TESTS_DIR) if f.endswith(".yaml"))
    for t in tests:
        shutil.copy(os.path.join(TESTS_DIR, t), tmp.name)
    firing, quiet = set(), set()
    for t in tests:
        with open(os.path.join(TESTS_DIR, t)) as f:
            for case in yaml.safe_load(f).get("tests", []):
                for at in case.get("alert_rule_test", []):
                    (firing if at.get("exp_alerts") else quiet).add(at["alertname"])
    for a in alerts:
        for what, seen in (("firing", firing), ("not firing", quiet)):
            if a["alert"] not in seen:
                fail(f"alert {a['alert']} is never tested {what} in {os.path.relpath(TESTS_DIR, ROOT)}/")

    def run_tests():
        return promtool([opts.promtool, "test", "rules", *tests], cwd=tmp.name)

    ok, out = run_tests()
    if not ok:
        fail(f"promtool test rules:\n{out}")
    print(f"alerts-check: promtool test rules: {'ok' if ok else 'FAILED'}: {', '.join(tests)}")

    # The tests catch a broken expression: each alert never firing, then always firing.
    caught = 0
    for i, a in enumerate(alerts):
        for label, expr in (("never fires", NEVER), ("always fires", ALWAYS)):
            mutated = copy.deepcopy(spec)
            alerts_of(mutated)[i]["expr"] = expr
            write_rules(rules_path, mutated)
            broken_ok, _ = run_tests()
            if broken_ok:
                fail(f"the unit tests still pass with {a['alert']}'s expression replaced by one that {label} ({expr})")
            else:
                caught += 1
    write_rules(rules_path, spec)
    print(f"alerts-check: self-test: {caught}/{2 * len(alerts)} broken alert expressions caught by the unit tests")

    # 3. The dashboard's queries parse.
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    exprs.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"label_values\((.*),\s*\w+\)$", q or "")
        if m:
            exprs.append((f"variable {v['name']}", m.group(1)))
    if not exprs:
        fail("dashboard.json has no queries")
    dash_rules = []
    for n, (title, expr) in enumerate(exprs):
        e = expr
        for var, value in GRAFANA_VARS.items():
            e = e.replace(var, value)
        if "$" in e:
            fail(f"dashboard panel {title!r}: a Grafana variable the check does not know in {expr!r}")
        dash_rules.append({"record": f"dashboard:query_{n}", "expr": e})
    dash_path = os.path.join(tmp.name, "dashboard.rules.yaml")
    write_rules(dash_path, {"groups": [{"name": "dashboard", "rules": dash_rules}]})
    ok, out = promtool([opts.promtool, "check", "rules", dash_path])
    if not ok:
        fail(f"promtool check rules on the dashboard's queries (as recording rules {dash_path}):\n{out}")
    print(f"alerts-check: dashboard: {'ok' if ok else 'FAILED'}: {len(exprs)} queries parsed by promtool")

    # 4. Metric names: only what the agent exports (the README's table).
    allowed = known | recorded | {"up"}
    used = [("rule " + (r.get("alert") or r.get("record")), r["expr"])
            for g in spec["groups"] for r in g["rules"]] + [("dashboard " + t, e) for t, e in exprs]
    names = set()
    for where, expr in used:
        for name in metric_names(expr):
            names.add(name)
            if name not in allowed:
                fail(f"{where}: metric {name} is not in the README's metric table: {expr}")
    print(f"alerts-check: metric names: {len(names)} used, all in the README's table: "
          f"{', '.join(sorted(names))}" if names <= allowed else "alerts-check: metric names: FAILED")

    for f in failures:
        print(f"FAIL {f}")
    print(f"alerts-check: {'ok' if not failures else f'{len(failures)} failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
