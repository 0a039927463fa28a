# prepuller: `make demo` runs the whole thing on a local sandbox, `make test` runs every check.

SANDBOX ?= .sandbox
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests and the demo start as real processes.
APT_PACKAGES := containerd docker-registry protobuf-compiler skopeo umoci nginx apache2-utils
# The commands those packages provide, checked to decide whether setup has work to do.
NEEDED_COMMANDS := containerd ctr docker-registry protoc skopeo umoci nginx htpasswd

.PHONY: setup test demo demo-down build lint

## setup: install what the build, the tests and the demo need (apt packages, rustfmt, clippy)
setup:
	@missing=""; for c in $(NEEDED_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages (missing:$$missing)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi
	@for comp in rustfmt clippy; do \
		rustup component list --installed 2>/dev/null | grep -q "^$$comp" || rustup component add $$comp; \
	done

build: setup
	$(CARGO) build --all-targets

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## test: formatting, clippy, unit tests and the integration tests on real containerd + registry
test: lint
	$(CARGO) test --all-targets

## demo: start a sandbox (containerd + registry in ./$(SANDBOX)), seed it, run `prepuller pull` twice
demo: setup
	$(CARGO) build --bin prepuller --example sandbox
	$(CARGO) run -q --example sandbox -- up --dir $(SANDBOX)
	@echo; echo "== prepuller check: what the demo config declares"
	./target/debug/prepuller check --config $(SANDBOX)/images.yaml
	@echo; echo "== prepuller pull: pulls what is missing"
	./target/debug/prepuller pull --config $(SANDBOX)/images.yaml --runtime-endpoint "$$(cat $(SANDBOX)/endpoint)"
	@echo; echo "== prepuller pull again: present images are skipped; only the :latest (Always) entry is pulled again"
	./target/debug/prepuller pull --config $(SANDBOX)/images.yaml --runtime-endpoint "$$(cat $(SANDBOX)/endpoint)"
	@echo; echo "The sandbox is still running. Try:"
	@echo "  ctr -a $(SANDBOX)/containerd/containerd.sock -n k8s.io images ls"
	@echo "  make demo-down    # stop it (the sandbox folder stays; add PURGE=1 to delete it)"

demo-down:
	$(CARGO) run -q --example sandbox -- down --dir $(SANDBOX) $(if $(PURGE),--purge,)
