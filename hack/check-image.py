#!/usr/bin/env python3
"""Check the image `make image` built (an OCI layout) and that the Dockerfile describes the same
image: entrypoint, cmd, user, exposed port, OCI labels, the binary's path; then run the binary
from the image's own root filesystem (chroot) to prove its shared libraries are all there.

    python3 hack/check-image.py target/image/oci

Ends with `image-check: N passed, M failed`; exits 1 on any failure.
"""

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRYPOINT = ["/usr/local/bin/prepuller"]
CMD = ["agent", "--config", "/etc/prepuller/config"]
USER = "0:0"
REQUIRED_LABELS = [
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    "org.opencontainers.image.licenses",
]

passed = 0
failures = []


def check(ok, message):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(message)
    return ok


def cargo_field(name):
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(rf'^{name}\s*=\s*"([^"]*)"', f.read(), re.M).group(1)


def blob(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def dockerfile():
    """The final stage's ENTRYPOINT, CMD, USER, EXPOSE, LABELs, ARG defaults and COPY target."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages = re.split(r"^FROM ", text, flags=re.M)
    final = stages[-1]
    out = {"labels": {}, "args": {}}
    for line in final.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENTRYPOINT":
            out["entrypoint"] = json.loads(rest)
        elif word == "CMD":
            out["cmd"] = json.loads(rest)
        elif word == "USER":
            out["user"] = rest.strip()
        elif word == "EXPOSE":
            out["expose"] = rest.split()
        elif word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            out["args"][k.strip()] = v.strip()
        elif word == "LABEL":
            for item in shlex.split(rest):
                k, v = item.split("=", 1)
                out["labels"][k] = v
        elif word == "COPY":
            out["copy_to"] = rest.split()[-1]
    return out


def main():
    layout = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "image", "oci")
    version = cargo_field("version")

    index = read_json(os.path.join(layout, "index.json"))
    refs = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m for m in index["manifests"]}
    if not check(version in refs, f"the layout has no tag {version} (Cargo.toml's version); tags: {list(refs)}"):
        return report()
    manifest = read_json(blob(layout, refs[version]["digest"]))
    config = read_json(blob(layout, manifest["config"]["digest"]))
    cfg = config.get("config", {})

    check(config.get("os") == "linux", f"os is {config.get('os')!r}, expected linux")
    check(cfg.get("Entrypoint") == ENTRYPOINT, f"Entrypoint is {cfg.get('Entrypoint')}, expected {ENTRYPOINT}")
    check(cfg.get("Cmd") == CMD, f"Cmd is {cfg.get('Cmd')}, expected {CMD}")
    check(cfg.get("User") == USER, f"User is {cfg.get('User')!r}, expected {USER!r} (the CRI socket is root-owned)")
    check("8080/tcp" in (cfg.get("ExposedPorts") or {}), f"ExposedPorts {cfg.get('ExposedPorts')} lacks 8080/tcp")
    labels = cfg.get("Labels") or {}
    for label in REQUIRED_LABELS:
        check(labels.get(label), f"label {label} is missing")
    check(labels.get("org.opencontainers.image.version") == version,
          f"label version is {labels.get('org.opencontainers.image.version')!r}, expected {version!r}")
    check(labels.get("org.opencontainers.image.licenses") == cargo_field("license"), "label licenses differs from Cargo.toml")
    check(labels.get("org.opencontainers.image.description") == cargo_field("description"), "label description differs from Cargo.toml")
    check(re.fullmatch(r"[0-9a-f]{40}", labels.get("org.opencontainers.image.revision", "")),
          f"label revision {labels.get('org.opencontainers.image.revision')!r} is not a git commit")
    check(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels.get("org.opencontainers.image.created", "")),
          f"label created {labels.get('org.opencontainers.image.created')!r} is not an RFC 3339 UTC time")

    # The Dockerfile must describe the same image.
    df = dockerfile()
    check(df.get("entrypoint") == ENTRYPOINT, f"Dockerfile ENTRYPOINT {df.get('entrypoint')} differs from the image's {ENTRYPOINT}")
    check(df.get("cmd") == CMD, f"Dockerfile CMD {df.get('cmd')} differs from the image's {CMD}")
    check(df.get("user") == USER, f"Dockerfile USER {df.get('user')!r} differs from the image's {USER!r}")
    check(df.get("expose") == ["8080/tcp"], f"Dockerfile EXPOSE {df.get('expose')} differs from 8080/tcp")
    check(df.get("copy_to") == ENTRYPOINT[0], f"Dockerfile copies the binary to {df.get('copy_to')}, the entrypoint is {ENTRYPOINT[0]}")
    check(sorted(df["labels"]) == sorted(REQUIRED_LABELS), f"Dockerfile labels {sorted(df['labels'])} differ from {REQUIRED_LABELS}")
    check(df["args"].get("VERSION") == version, f"Dockerfile ARG VERSION={df['args'].get('VERSION')} differs from Cargo.toml's {version}")
    check(df["labels"].get("org.opencontainers.image.description") == cargo_field("description"),
          "Dockerfile description label differs from Cargo.toml's description")

    # The root filesystem: the binary runs from it, alone.
    with tempfile.TemporaryDirectory() as rootfs:
        for layer in manifest["layers"]:
            with tarfile.open(blob(layout, layer["digest"]), "r:*") as tar:
                # The "tar" filter where this Python has it (3.11.4+): no absolute paths or links out.
                kwargs = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
                tar.extractall(rootfs, **kwargs)
        binary = os.path.join(rootfs, ENTRYPOINT[0].lstrip("/"))
        check(os.access(binary, os.X_OK), f"{ENTRYPOINT[0]} is not an executable in the image")
        for path in ("etc/passwd", "etc/ssl/certs/ca-certificates.crt", "tmp"):
            check(os.path.exists(os.path.join(rootfs, path)), f"/{path} is missing from the image")
        if os.geteuid() == 0:
            proc = subprocess.run(["chroot", rootfs, ENTRYPOINT[0], "--version"], capture_output=True, text=True)
            check(proc.returncode == 0 and proc.stdout.strip() == f"prepuller {version}",
                  f"`prepuller --version` inside the image's root filesystem failed (a shared library missing?): "
                  f"exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()}")
            note = "ran --version in the image's rootfs"
        else:
            note = "not root: did not chroot into the image"
    size = sum(layer["size"] for layer in manifest["layers"])
    print(f"image-check: {layout}:{version}: {len(manifest['layers'])} layer(s), {size / 2**20:.1f} MiB compressed, "
          f"entrypoint {ENTRYPOINT[0]}, user {USER}; {note}")
    return report()


def report():
    for f in failures:
        print(f"FAIL image: {f}")
    print(f"image-check: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
