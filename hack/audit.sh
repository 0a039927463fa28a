#!/usr/bin/env bash
# The dependency audit of `make lint`: Cargo.lock against the RustSec advisory database.
# - The offline snapshot in $1 (../shared/advisory-db) where it is: these machines and CI cannot
#   fetch the live database (its SNAPSHOT.md says which commit it is).
# - Else the live database, fetched by cargo-audit.
# - Else a notice and exit 0: nothing could be read, so nothing was checked.
# Fails on any vulnerability, and (--deny warnings) on unmaintained, unsound or yanked crates
# unless .cargo/audit.toml allows them, each with its reason.
set -uo pipefail
db=${1:-}
if [ -n "$db" ] && [ -d "$db/crates" ]; then
	audit() { cargo audit --db "$db" --no-fetch --stale --deny warnings "$@"; }
	# First a lock file with a known vulnerability and an unmaintained crate: it must be refused.
	canary=$(audit -f hack/fixtures/audit-canary.lock 2>&1)
	for id in RUSTSEC-2021-0003 RUSTSEC-2025-0012; do
		if ! grep -q "$id" <<<"$canary"; then
			echo "audit: the snapshot in $db did not report $id for hack/fixtures/audit-canary.lock: it cannot be read as cargo-audit expects" >&2
			exit 1
		fi
	done
	echo "audit: Cargo.lock against the advisory snapshot in $db (the canary lock file was refused, as it must be)"
	audit
	exit $?
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo audit --deny warnings 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ] && grep -qiE "couldn't fetch|error fetching|failed to fetch|unable to (fetch|clone)" "$out"; then
	echo "audit: skipped, no advisory database could be read (no snapshot at '${db:-(none)}', and fetching failed)"
	exit 0
fi
exit "$rc"
