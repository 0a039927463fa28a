#!/usr/bin/env python3
"""Fails when a dev-dependency changes what the shipped binary links.

Cargo unifies the features of a crate over everything one build needs, so a dev-dependency
(reqwest with rustls + ring, say) can switch a feature on in the test binaries that the release
binary lacks: the tests then pass on code the release cannot run. This compares the features of
every crate the `prepuller` binary depends on, resolved without dev-dependencies (what
`cargo build --release` links) and with them (what `cargo test` links).

A difference is an error unless it is listed in ALLOWED with the reason it is harmless.
"""
import subprocess
import sys

# crate -> features that only test builds may add. Each adds API only (no behaviour of code the
# binary already runs changes), so library code that used it would not compile in the release
# build that `make image` makes: it cannot hide a release bug. A crypto provider, a root store,
# compression or a protocol switch changes behaviour and must never be listed here.
ALLOWED = {
    "tokio": {"test-util"},  # the paused clock of the virtual-time tests
    "getrandom": {"std"},  # std::error::Error impls
    "hyper-util": {"client-proxy"},  # proxy connectors reqwest offers; kube's client has its own
    "syn": {"fold"},  # proc-macro internals
    "sync_wrapper": {"futures", "futures-core"},  # Stream impls
    "tower": {"timeout"},  # the Timeout layer (the library sets its own timeouts)
    "tower-http": {"follow-redirect", "futures-util"},  # reqwest's redirect layer
    "zerocopy": {"default"},
    # This package through its own dev-dependency (Cargo.toml): `test-util` compiles the
    # in-memory runtime (`runtime::fake`), a module nothing in the binary names; `default` is
    # empty.
    "prepuller": {"default", "test-util"},
}


def features(edges: str) -> dict[str, set[str]]:
    out = subprocess.run(
        ["cargo", "tree", "--locked", "-e", edges, "--prefix", "none", "--format", "{p}", "-p", "prepuller"],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"cargo tree failed:\n{out.stderr}")
    out = out.stdout
    # Lines look like `rustls feature "ring"` or `rustls v0.23.1` (crates without a feature).
    result: dict[str, set[str]] = {}
    for line in out.splitlines():
        line = line.removesuffix(" (*)").removesuffix(" (command-line)").strip()
        if ' feature "' in line:
            name, feature = line.split(' feature "', 1)
            result.setdefault(name, set()).add(feature.rstrip('"'))
        elif line:
            result.setdefault(line.split(" ")[0], set())
    return result


def main() -> int:
    shipped = features("no-dev,features")
    tested = features("features")
    problems = []
    for name, have in sorted(shipped.items()):
        extra = tested.get(name, set()) - have - ALLOWED.get(name, set())
        if extra:
            problems.append(f"  {name}: {', '.join(sorted(extra))}")
    if problems:
        print(
            "error: dev-dependencies switch on features of crates the release binary links;\n"
            "the tests would run code the shipped binary does not have. Enable these in\n"
            "[dependencies] (deliberately) or drop them from the dev-dependency:\n" + "\n".join(problems),
            file=sys.stderr,
        )
        return 1
    print(f"release features: dev-dependencies change no feature of the {len(shipped)} crates the binary links (beyond the API-only ones allowed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
