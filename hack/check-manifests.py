#!/usr/bin/env python3
"""Render deploy/ and every overlay with `kubectl kustomize`, validate the output against the
real Kubernetes schemas (kubernetes-validate, strict) for the oldest and the newest supported
Kubernetes version, and make the assertions a reviewer of a node agent would make.

Run by `make deploy-check` (part of `make test`) with the repo's .venv python:

    .venv/bin/python hack/check-manifests.py [--kubectl kubectl] [--prepuller target/debug/prepuller]

Prints one line per rendered kustomization and every failure with what is wrong and why it
matters; ends with `deploy-check: N passed, M failed` and exits 1 on any failure.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import yaml

import kubernetes_validate
from kubernetes_validate import utils as kv_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")

# The oldest Kubernetes the manifests support, and the newest the installed kubernetes-validate
# knows (added below).
OLDEST_K8S = "1.29"

NAMESPACE = "prepuller"
SERVICE_ACCOUNT = "prepuller"
PULL_SECRET_DIR = "/etc/prepuller/pull-secrets"
# The one other host path allowed (components/disk-guard): the runtime's state directory, whose
# size the disk guard reads, read-only under PREPULLER_HOST_ROOT.
IMAGE_FS_PATHS = {"/var/lib/containerd", "/var/lib/containers/storage"}

# Everything the agent's service account may do (Node readiness, pull secrets). Anything else is a failure:
# a new permission must be a conscious change here, in review.
ALLOWED_RULES = {
    ("", "nodes"): {"get", "watch", "patch"},
    ("", "nodes/status"): {"patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "secrets"): {"get"},  # and only with resourceNames, checked below
    # The fleet pull budget's Leases, only in the agent's namespace (a Role), checked below.
    ("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "update"},
}

# Host paths the agent may read besides the CRI socket, each of one type and mounted read-only:
# the kubelet's credential-provider config file and plugin directory (components/credential-providers).
READONLY_HOST_PATHS = {"kubelet-credential-provider-config": "File", "kubelet-credential-provider-bin": "Directory"}

# Kinds that come from CRDs: kubernetes-validate has no schema for them; the assertions below
# check what matters about them.
CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


class Report:
    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, where, ok, message):
        """Counts one assertion; `message` says what is wrong when `ok` is false."""
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{where}: {message}")
        return ok


def kustomization_dirs():
    """deploy/ itself and every overlay: each directory below deploy/ with a kustomization.yaml,
    except the base (rendered through deploy/) and the components (not buildable alone)."""
    dirs = [DEPLOY]
    for parent, _, files in sorted(os.walk(DEPLOY)):
        rel = os.path.relpath(parent, DEPLOY).split(os.sep)
        if parent == DEPLOY or rel[0] in ("base", "components"):
            continue
        if "kustomization.yaml" in files:
            dirs.append(parent)
    return sorted(dirs)


def all_components_kustomization(tmp):
    """A kustomization with the base and every component at once, as an operator combining
    them would write: they must compose."""
    # kustomize takes only relative paths here.
    rel = lambda *p: os.path.relpath(os.path.join(DEPLOY, *p), tmp)
    comps = sorted(rel("components", c) for c in os.listdir(os.path.join(DEPLOY, "components")))
    with open(os.path.join(tmp, "kustomization.yaml"), "w") as f:
        yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                        "namespace": NAMESPACE, "resources": [rel("base")],
                        "components": comps}, f)
    return tmp


def render(kubectl, path):
    proc = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr.strip()
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return docs, None


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_schemas(report, where, docs, versions):
    notes = []
    for obj in docs:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in CRD_KINDS:
            notes.append(f"{obj['kind']} (CRD) by assertions only")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                report.check(where, True, "")
            except kv_utils.ValidationError as e:
                path = ".".join(str(p) for p in e.absolute_path) or "(root)"
                report.check(where, False, f"{name_of(obj)} is invalid for Kubernetes {version} at {path}: {e.message}")
            except kv_utils.SchemaNotFoundError as e:
                report.check(where, False, f"{name_of(obj)}: {e.message} (a CRD? add it to CRD_KINDS with assertions)")
    return notes


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def arg_value(args, flag):
    for a in args:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def check_daemonset(report, where, docs):
    c = lambda ok, msg: report.check(where, ok, msg)
    daemonsets = find(docs, "DaemonSet")
    if not c(len(daemonsets) == 1, f"expected exactly one DaemonSet, found {len(daemonsets)}"):
        return None
    ds = daemonsets[0]
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    meta = spec["template"].get("metadata", {})
    containers = pod.get("containers", [])
    if not c(len(containers) == 1, f"expected one container, found {len(containers)}"):
        return None
    ctr = containers[0]
    args = ctr.get("args", [])
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in ctr.get("volumeMounts", [])}

    c(ds["metadata"].get("namespace") == NAMESPACE, f"DaemonSet is in namespace {ds['metadata'].get('namespace')!r}, expected {NAMESPACE!r}")
    c(args[:1] == ["agent"], f"container args must start with `agent`, got {args[:1]}")

    # Scheduling: everywhere, first.
    c({"operator": "Exists"} in pod.get("tolerations", []),
      "tolerations must include `{operator: Exists}` (no key, no effect): the agent must run on startup-tainted, not-ready and cordoned nodes")
    c(pod.get("priorityClassName") == "system-node-critical",
      f"priorityClassName is {pod.get('priorityClassName')!r}, expected 'system-node-critical'")
    strategy = spec.get("updateStrategy", {})
    c(strategy.get("type") == "RollingUpdate" and strategy.get("rollingUpdate", {}).get("maxUnavailable") == "10%",
      f"updateStrategy must be RollingUpdate with maxUnavailable 10%, got {strategy}")
    c(pod.get("serviceAccountName") == SERVICE_ACCOUNT, f"serviceAccountName is {pod.get('serviceAccountName')!r}")
    for host_ns in ("hostNetwork", "hostPID", "hostIPC"):
        c(not pod.get(host_ns), f"{host_ns} is set: the agent needs none of the host's namespaces")

    # The runtime socket: a hostPath of type Socket, mounted where --runtime-endpoint points.
    host_paths = {n: v["hostPath"] for n, v in volumes.items() if "hostPath" in v}
    host_root = next((e.get("value") for e in ctr.get("env", []) if e["name"] == "PREPULLER_HOST_ROOT"), None)
    for n, hp in host_paths.items():
        if n in READONLY_HOST_PATHS:
            want = READONLY_HOST_PATHS[n]
            c(hp.get("type") == want,
              f"hostPath volume {n!r} ({hp.get('path')}) has type {hp.get('type')!r}, expected {want!r}: without it the kubelet creates an empty one on nodes that lack it")
            ms = [mm for mm in ctr.get("volumeMounts", []) if mm["name"] == n]
            c(ms and all(mm.get("readOnly") is True for mm in ms),
              f"hostPath volume {n!r} ({hp.get('path')}) must be mounted read-only: the agent only reads the kubelet's credential providers, got {ms}")
            continue
        if hp.get("path") in IMAGE_FS_PATHS and hp.get("type") == "Directory":
            mount = [mm for mm in ctr.get("volumeMounts", []) if mm["name"] == n]
            c(host_root is not None and len(mount) == 1
              and mount[0]["mountPath"] == host_root.rstrip("/") + hp["path"] and mount[0].get("readOnly") is True,
              f"the image filesystem hostPath {n!r} ({hp['path']}) must be mounted read-only at PREPULLER_HOST_ROOT + its path (the disk guard finds the runtime's mountpoint there), got env {host_root!r} and mounts {mount}")
            continue
        c(hp.get("type") == "Socket",
          f"hostPath volume {n!r} ({hp.get('path')}) has type {hp.get('type')!r}, expected 'Socket': the only host path the agent needs is the CRI socket, and without the type the kubelet creates an empty directory on nodes with another runtime")
    endpoint = arg_value(args, "--runtime-endpoint")
    if c(endpoint is not None and endpoint.startswith("unix://"), f"--runtime-endpoint must be a unix:// socket, got {endpoint!r}"):
        sock = endpoint[len("unix://"):]
        m = mounts.get(sock)
        if c(m is not None, f"--runtime-endpoint {endpoint} points at {sock}, but nothing is mounted there"):
            hp = host_paths.get(m["name"])
            c(hp is not None and hp.get("path") == sock and hp.get("type") == "Socket",
              f"the mount at {sock} must be a hostPath of type Socket with the same path, got volume {volumes.get(m['name'])}")

    # Identity, probes, metrics.
    env = {e["name"]: e for e in ctr.get("env", [])}
    c(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
      "env NODE_NAME must come from the downward API fieldRef spec.nodeName")
    c(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace",
      "env POD_NAMESPACE must come from the downward API fieldRef metadata.namespace (where the fleet Leases are)")
    listen = arg_value(args, "--listen") or "0.0.0.0:8080"
    listen_port = int(listen.rsplit(":", 1)[1])
    ports = {p.get("name"): p for p in ctr.get("ports", [])}
    c(ports.get("metrics", {}).get("containerPort") == listen_port,
      f"a container port named 'metrics' must expose --listen's port {listen_port}, got {ctr.get('ports')}")
    for probe_name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        probe = ctr.get(probe_name, {}).get("httpGet", {})
        c(probe.get("path") == path and probe.get("port") in ("metrics", listen_port),
          f"{probe_name} must be an httpGet of {path} on port 'metrics', got {ctr.get(probe_name)}")
    ann = meta.get("annotations", {})
    c(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path") == "/metrics"
      and ann.get("prometheus.io/port") == str(listen_port),
      f"pod annotations prometheus.io/scrape, /path (/metrics) and /port ({listen_port}) are expected, got {ann}")

    # Resources: small, and bounded.
    res = ctr.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            c(r in res.get(kind, {}), f"resources.{kind}.{r} must be set (a node agent must be bounded and schedulable)")

    # Security context.
    sc = ctr.get("securityContext", {})
    psc = pod.get("securityContext", {})
    c(sc.get("readOnlyRootFilesystem") is True, "securityContext.readOnlyRootFilesystem must be true")
    c(sc.get("allowPrivilegeEscalation") is False, "securityContext.allowPrivilegeEscalation must be false")
    c(not sc.get("privileged"), "the container must not be privileged")
    caps = sc.get("capabilities", {})
    c(caps.get("drop") == ["ALL"] and not caps.get("add"),
      f"capabilities must drop ALL and add none, got {caps}")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    c(seccomp == "RuntimeDefault", f"seccompProfile must be RuntimeDefault, got {seccomp!r}")
    c(sc.get("runAsUser", psc.get("runAsUser")) == 0,
      "runAsUser must be stated as 0 (the CRI socket is root-owned; the README explains what that exposes)")

    # Config: the whole ConfigMap as a directory (hot reload), and it exists.
    config_path = arg_value(args, "--config")
    m = mounts.get(config_path)
    if c(m is not None, f"--config {config_path} is not a volume mount"):
        c("subPath" not in m, f"the config mount must not use subPath: the kubelet never updates subPath mounts, so hot reload would not work")
        cm_name = volumes.get(m["name"], {}).get("configMap", {}).get("name")
        c(cm_name is not None and find(docs, "ConfigMap", cm_name),
          f"--config must be the mount of a ConfigMap in the same render, got volume {volumes.get(m['name'])}")

    # The gRPC socket needs a writable directory on a read-only root.
    api_socket = arg_value(args, "--api-socket") or "/run/prepuller/agent.sock"
    api_dir = os.path.dirname(api_socket)
    m = mounts.get(api_dir)
    c(m is not None and "emptyDir" in volumes.get(m["name"], {}) and not m.get("readOnly"),
      f"--api-socket {api_socket}: {api_dir} must be a writable emptyDir mount (the root filesystem is read-only)")

    # Pull secrets: read-only, one directory each below PULL_SECRET_DIR.
    for n, v in volumes.items():
        if "secret" not in v:
            continue
        secret = v["secret"]["secretName"]
        mount = [mm for mm in ctr.get("volumeMounts", []) if mm["name"] == n]
        c(mount and mount[0]["mountPath"] == f"{PULL_SECRET_DIR}/{secret}" and mount[0].get("readOnly") is True,
          f"secret volume {n!r} must be mounted read-only at {PULL_SECRET_DIR}/{secret} (the dockerConfigDir credential source), got {mount}")
    return ds


def check_rbac(report, where, docs):
    c = lambda ok, msg: report.check(where, ok, msg)
    for role in find(docs, "ClusterRole") + find(docs, "Role"):
        rn = name_of(role)
        for rule in role.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                c("*" not in rule.get(field, []), f"{rn}: wildcard in {field}: {rule}")
            c(not rule.get("nonResourceURLs"), f"{rn}: nonResourceURLs are not needed: {rule}")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    allowed = ALLOWED_RULES.get((group, resource))
                    verbs = set(rule.get("verbs", []))
                    c(allowed is not None and verbs <= allowed,
                      f"{rn}: {sorted(verbs)} on {group or 'core'}/{resource} is more than the agent needs (allowed: {sorted(allowed) if allowed else 'nothing'})")
                    if resource == "leases":
                        c(role["kind"] == "Role", f"{rn}: leases must be granted by a namespaced Role in the agent's namespace, never cluster-wide")
                    if resource == "secrets":
                        c(role["kind"] == "Role", f"{rn}: secrets must be granted by a namespaced Role, never cluster-wide")
                        c(not verbs & {"list", "watch"}, f"{rn}: list/watch of secrets reads every secret in the namespace")
                        c(bool(rule.get("resourceNames")),
                          f"{rn}: get on secrets must be limited to the named pull secrets with resourceNames")
    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        bn = name_of(binding)
        ref = binding["roleRef"]
        c(find(docs, ref["kind"], ref["name"]), f"{bn}: roleRef {ref['kind']}/{ref['name']} is not in the render")
        for s in binding.get("subjects", []):
            c(s.get("kind") == "ServiceAccount" and s.get("name") == SERVICE_ACCOUNT and s.get("namespace") == NAMESPACE,
              f"{bn}: subject {s} must be the {NAMESPACE}/{SERVICE_ACCOUNT} service account only")


def check_namespace(report, where, docs):
    c = lambda ok, msg: report.check(where, ok, msg)
    ns = find(docs, "Namespace", NAMESPACE)
    if c(len(ns) == 1, f"the render must create namespace {NAMESPACE}"):
        c(ns[0]["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "privileged",
          "namespace needs pod-security.kubernetes.io/enforce=privileged (hostPath is refused by baseline)")
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in docs:
        if obj["kind"] not in cluster_scoped:
            c(obj["metadata"].get("namespace") == NAMESPACE,
              f"{name_of(obj)} is in namespace {obj['metadata'].get('namespace')!r}, expected {NAMESPACE!r}")


def check_image_tag(report, where, ds):
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        version = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)
    image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
    report.check(where, image.endswith(f":{version}"),
                 f"the DaemonSet's image {image} must be tagged with Cargo.toml's version {version} (deploy/base/kustomization.yaml, images:)")


def check_podmonitors(report, where, docs, ds):
    for pm in find(docs, "PodMonitor"):
        labels = ds["spec"]["template"]["metadata"]["labels"]
        selector = pm["spec"].get("selector", {}).get("matchLabels", {})
        report.check(where, selector and all(labels.get(k) == v for k, v in selector.items()),
                     f"{name_of(pm)}: selector {selector} does not select the DaemonSet's pods ({labels})")
        ports = {p.get("name") for p in ds["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
        for ep in pm["spec"].get("podMetricsEndpoints", []):
            report.check(where, ep.get("port") in ports and ep.get("path", "/metrics") == "/metrics",
                         f"{name_of(pm)}: endpoint {ep} must scrape port 'metrics' at /metrics")


def check_prometheusrules(report, where, docs, ds):
    """The rules' own tests are `make alerts-check`; here: the shape the operator needs, and the
    job the alerts select is the one the PodMonitor gives the series."""
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    jobs = set()
    for pm in find(docs, "PodMonitor"):
        job_label = pm["spec"].get("jobLabel")
        # Without jobLabel the operator names the job NAMESPACE/NAME of the PodMonitor.
        jobs.add(pod_labels.get(job_label) if job_label else f"{pm['metadata'].get('namespace')}/{pm['metadata']['name']}")
    for pr in find(docs, "PrometheusRule"):
        groups = pr.get("spec", {}).get("groups", [])
        report.check(where, bool(groups) and all(g.get("name") and g.get("rules") for g in groups),
                     f"{name_of(pr)}: spec.groups must be named groups with rules")
        for g in groups:
            for r in g.get("rules", []):
                for job in re.findall(r'\bjob\s*=\s*"([^"]*)"', r.get("expr", "")):
                    report.check(where, job in jobs,
                                 f"{name_of(pr)}: {r.get('alert') or r.get('record')} selects job={job!r}, but the PodMonitor's series have job {sorted(jobs)}")


def check_configs(report, where, docs, ds, prepuller, notes):
    """Every ConfigMap the DaemonSet mounts must be a valid prepuller config: `prepuller check`
    on the directory the agent would see."""
    if not prepuller:
        notes.append("image sets not checked (no --prepuller)")
        return
    pod = ds["spec"]["template"]["spec"]
    for v in pod.get("volumes", []):
        if "configMap" not in v:
            continue
        cm = find(docs, "ConfigMap", v["configMap"]["name"])
        if not cm:
            continue
        name = cm[0]["metadata"]["name"]
        data = cm[0].get("data", {})
        ok, out = prepuller_check(prepuller, data)
        # The error's headline (the lines under it show where it is in the file).
        error = next((l for l in out.splitlines() if l.startswith("error: ")), out.splitlines()[-1] if out else "?")
        report.check(where, ok, f"ConfigMap {name} is not a valid prepuller config: {error}")
        if ok:
            notes.append(f"ConfigMap {name}: `prepuller check`: " + out.splitlines()[-1].split(": ", 1)[-1])


def check_credential_providers(report, where, docs, ds):
    """A `kubeletCredentialProviders` source must read what the DaemonSet mounts from the host:
    its config a hostPath file, its binDir a hostPath directory, both read-only."""
    pod = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    host_mounts = {m["mountPath"]: (volumes.get(m["name"], {}).get("hostPath"), m.get("readOnly"))
                   for m in pod["containers"][0].get("volumeMounts", [])}
    for cm in find(docs, "ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            try:
                doc = yaml.safe_load(text) or {}
            except yaml.YAMLError:
                continue  # `prepuller check` says what is wrong
            for entry in (doc.get("credentials") or []) if isinstance(doc, dict) else []:
                src = entry.get("kubeletCredentialProviders") if isinstance(entry, dict) else None
                if not isinstance(src, dict):
                    continue
                for field, want in (("config", "File"), ("binDir", "Directory")):
                    path = src.get(field)
                    hp, ro = host_mounts.get(path, (None, None))
                    report.check(where, hp is not None and hp.get("type") == want and ro is True,
                                 f"ConfigMap {name_of(cm)} {key}: kubeletCredentialProviders.{field} {path} is not a read-only hostPath mount of type {want} (the kubelet's own, from the node)")


def prepuller_check(prepuller, data):
    """`prepuller check` on a directory holding the ConfigMap's keys, as the agent sees it."""
    with tempfile.TemporaryDirectory() as d:
        for key, text in data.items():
            with open(os.path.join(d, key), "w") as f:
                f.write(text)
        proc = subprocess.run([prepuller, "check", "--config", d], capture_output=True, text=True)
        return proc.returncode == 0, (proc.stdout + proc.stderr).replace(d + "/", "").strip()


def check_render(report, where, docs, versions, prepuller):
    """Every check on one rendered kustomization; returns notes to print under its line."""
    notes = validate_schemas(report, where, docs, versions) if versions else []
    check_namespace(report, where, docs)
    check_rbac(report, where, docs)
    ds = check_daemonset(report, where, docs)
    if ds:
        check_image_tag(report, where, ds)
        check_podmonitors(report, where, docs, ds)
        check_prometheusrules(report, where, docs, ds)
        check_configs(report, where, docs, ds, prepuller, notes)
        check_credential_providers(report, where, docs, ds)
    return notes


def _daemonset(docs):
    return find(docs, "DaemonSet")[0]["spec"]["template"]["spec"]


def _container(docs):
    return _daemonset(docs)["containers"][0]


def _rule(docs, kind, name):
    return find(docs, kind, name)[0]["rules"]


# Mistakes a reviewer would reject, each with the words its failure must contain: the self-test
# applies each to the base and expects the checks to catch it, so that no check is vacuous.
MUTATIONS = [
    ("socket hostPath without type Socket", "expected 'Socket'",
     lambda d: _daemonset(d)["volumes"][0]["hostPath"].update(type="DirectoryOrCreate")),
    ("a second hostPath (the host's /var/lib)", "expected 'Socket'",
     lambda d: _daemonset(d)["volumes"].append({"name": "x", "hostPath": {"path": "/var/lib"}})),
    ("the image filesystem mounted writable", "must be mounted read-only at PREPULLER_HOST_ROOT",
     lambda d: (_daemonset(d)["volumes"].append({"name": "image-fs", "hostPath": {"path": "/var/lib/containerd", "type": "Directory"}}),
                _container(d)["volumeMounts"].append({"name": "image-fs", "mountPath": "/host/var/lib/containerd"}),
                _container(d)["env"].append({"name": "PREPULLER_HOST_ROOT", "value": "/host"}))),
    ("--runtime-endpoint not where the socket is mounted", "nothing is mounted there",
     lambda d: _container(d)["args"].__setitem__(2, "--runtime-endpoint=unix:///run/k3s/containerd/containerd.sock")),
    ("readinessProbe on /livez", "readinessProbe must be an httpGet of /readyz",
     lambda d: _container(d)["readinessProbe"]["httpGet"].update(path="/livez")),
    ("livenessProbe on /readyz (would restart cold nodes)", "livenessProbe must be an httpGet of /livez",
     lambda d: _container(d)["livenessProbe"]["httpGet"].update(path="/readyz")),
    ("metrics port renamed", "named 'metrics'",
     lambda d: _container(d)["ports"][0].update(name="http")),
    ("tolerations narrowed to NoSchedule", "operator: Exists",
     lambda d: _daemonset(d).update(tolerations=[{"operator": "Exists", "effect": "NoSchedule"}])),
    ("priority class dropped", "priorityClassName",
     lambda d: _daemonset(d).pop("priorityClassName")),
    ("writable root filesystem", "readOnlyRootFilesystem",
     lambda d: _container(d)["securityContext"].update(readOnlyRootFilesystem=False)),
    ("privilege escalation allowed", "allowPrivilegeEscalation",
     lambda d: _container(d)["securityContext"].pop("allowPrivilegeEscalation")),
    ("a capability added", "capabilities must drop ALL",
     lambda d: _container(d)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"])),
    ("privileged container", "must not be privileged",
     lambda d: _container(d)["securityContext"].update(privileged=True)),
    ("seccomp Unconfined", "seccompProfile must be RuntimeDefault",
     lambda d: [x.update(seccompProfile={"type": "Unconfined"}) for x in (_container(d)["securityContext"], _daemonset(d)["securityContext"])]),
    ("hostNetwork", "hostNetwork is set",
     lambda d: _daemonset(d).update(hostNetwork=True)),
    ("config mounted with subPath", "must not use subPath",
     lambda d: [m.update(subPath="redis-enterprise.yaml") for m in _container(d)["volumeMounts"] if m["name"] == "config"]),
    ("no memory limit", "resources.limits.memory",
     lambda d: _container(d)["resources"]["limits"].pop("memory")),
    ("NODE_NAME not from spec.nodeName", "NODE_NAME",
     lambda d: _container(d).update(env=[e for e in _container(d)["env"] if e["name"] != "NODE_NAME"])),
    ("wildcard verb on nodes", "wildcard in verbs",
     lambda d: _rule(d, "ClusterRole", "prepuller")[0].update(verbs=["*"])),
    ("list of nodes", "more than the agent needs",
     lambda d: _rule(d, "ClusterRole", "prepuller")[0]["verbs"].append("list")),
    ("cluster-wide get on secrets", "never cluster-wide",
     lambda d: _rule(d, "ClusterRole", "prepuller").append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["regcred"]})),
    ("list/watch of secrets", "list/watch of secrets",
     lambda d: _rule(d, "Role", "prepuller-pull-secrets")[0]["verbs"].extend(["list", "watch"])),
    ("get on every secret (resourceNames dropped)", "resourceNames",
     lambda d: _rule(d, "Role", "prepuller-pull-secrets")[0].pop("resourceNames")),
    ("cluster-wide leases", "never cluster-wide",
     lambda d: _rule(d, "ClusterRole", "prepuller").append({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]})),
    ("delete on leases", "more than the agent needs",
     lambda d: _rule(d, "Role", "prepuller-fleet")[0]["verbs"].append("delete")),
    ("POD_NAMESPACE not from metadata.namespace", "POD_NAMESPACE",
     lambda d: _container(d).update(env=[e for e in _container(d)["env"] if e["name"] != "POD_NAMESPACE"])),
    ("binding to the default service account", "service account only",
     lambda d: find(d, "ClusterRoleBinding")[0]["subjects"][0].update(name="default")),
    ("the kubelet's plugin directory mounted writable", "must be mounted read-only",
     lambda d: (_daemonset(d)["volumes"].append({"name": "kubelet-credential-provider-bin", "hostPath": {"path": "/etc/eks/image-credential-provider", "type": "Directory"}}),
                _container(d)["volumeMounts"].append({"name": "kubelet-credential-provider-bin", "mountPath": "/plugins"}))),
    ("a kubeletCredentialProviders source with nothing mounted", "is not a read-only hostPath mount",
     lambda d: find(d, "ConfigMap")[0]["data"].update({"plugins.yaml": "credentials:\n  - kubeletCredentialProviders: {config: /c.json, binDir: /bin}\nimages: []\n"})),
    ("image tag not the crate version", "Cargo.toml's version",
     lambda d: _container(d).update(image="registry.example.com/prepuller/prepuller:latest")),
]


def self_test(kubectl):
    """Applies every MUTATIONS entry to the rendered base; each must be caught."""
    import copy
    base, err = render(kubectl, DEPLOY)
    if base is None:
        print(f"deploy-check: self-test cannot render deploy/: {err}", file=sys.stderr)
        return 1
    clean = Report()
    check_render(clean, "deploy/", base, None, None)
    failures = list(clean.failures)
    for label, expected, mutate in MUTATIONS:
        docs = copy.deepcopy(base)
        mutate(docs)
        r = Report()
        check_render(r, "mutated", docs, None, None)
        if not any(expected in f for f in r.failures):
            failures.append(f"self-test: the checks did not catch: {label} (expected a failure containing {expected!r}; got {r.failures or 'none'})")
    for f in failures:
        print(f"FAIL {f}")
    caught = len(MUTATIONS) - sum(1 for f in failures if f.startswith("self-test"))
    print(f"deploy-check: self-test: {caught}/{len(MUTATIONS)} deliberate mistakes caught"
          + ("" if not failures else f", {len(failures)} problems"))
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", default=os.environ.get("KUBECTL", "kubectl"))
    parser.add_argument("--prepuller", help="a built prepuller binary, to `prepuller check` the image sets")
    opts = parser.parse_args()

    self_test_failed = self_test(opts.kubectl)
    versions = [OLDEST_K8S, kv_utils.major_minor(kv_utils.latest_version())]
    report = Report()
    combined = tempfile.TemporaryDirectory()
    for path in kustomization_dirs() + [all_components_kustomization(combined.name)]:
        where = os.path.relpath(path, ROOT) + "/" if path.startswith(ROOT) else "base + all components"
        before = (report.passed, len(report.failures))
        docs, err = render(opts.kubectl, path)
        if not report.check(where, docs is not None, f"`kubectl kustomize {path}` failed:\n    {err}"):
            print(f"deploy-check: {where:<28} FAILED to render")
            continue
        notes = check_render(report, where, docs, versions, opts.prepuller)
        passed, failed = report.passed - before[0], len(report.failures) - before[1]
        kinds = sorted({d["kind"] for d in docs})
        status = "ok" if failed == 0 else f"{failed} FAILED"
        print(f"deploy-check: {where:<28} {status}: {len(docs)} objects ({', '.join(kinds)}), "
              f"schemas {' and '.join(versions)}, {passed} checks passed")
        for n in notes:
            print(f"    {n}")

    for f in report.failures:
        print(f"FAIL {f}")
    print(f"deploy-check: {report.passed} passed, {len(report.failures) + self_test_failed} failed")
    return 1 if report.failures or self_test_failed else 0


if __name__ == "__main__":
    sys.exit(main())
