# prepuller: `make demo` runs the whole thing on a local sandbox, `make test` runs every check.

SANDBOX ?= .sandbox
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests and the demo start as real processes (tmux: the terminal tests).
APT_PACKAGES := containerd docker-registry protobuf-compiler skopeo umoci nginx apache2-utils curl prometheus tmux
# The commands those packages provide, checked to decide whether setup has work to do.
NEEDED_COMMANDS := containerd ctr docker-registry protoc skopeo umoci nginx htpasswd curl promtool tmux

.PHONY: setup test demo demo-down build lint audit bench deploy-check alerts-check image image-check acceptance fuzz fuzz-smoke fleet-sim

## setup: install what the build, the tests and the demo need (apt packages, rustfmt, clippy,
## and for the deploy checks: .venv/ with kubernetes-validate, kubectl if the machine has none)
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
	@bash hack/setup-deploy-tools.sh
	@if ! $(CARGO) audit --version 2>/dev/null | grep -q '$(CARGO_AUDIT_VERSION)'; then \
		echo "setup: installing cargo-audit $(CARGO_AUDIT_VERSION) (the dependency audit of make lint)"; \
		$(CARGO) install cargo-audit --version $(CARGO_AUDIT_VERSION) --locked --no-default-features; \
	fi
	@if $(HAS_NIGHTLY) && ! $(CARGO) fuzz --version >/dev/null 2>&1; then \
		echo "setup: installing cargo-fuzz (a nightly toolchain is present)"; \
		$(CARGO) install cargo-fuzz --locked; \
	fi

build: setup
	$(CARGO) build --all-targets

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	python3 hack/check-release-features.py
	@$(MAKE) --no-print-directory audit

## audit: Cargo.lock against the RustSec advisory database: the offline snapshot in
## $(ADVISORY_DB) where it is (CI and the machines here cannot fetch), else the live one; a notice
## where neither can be read. Fails on any vulnerability, and on unmaintained, unsound or yanked
## crates unless .cargo/audit.toml lists them, each with its reason.
CARGO_AUDIT_VERSION := 0.22.2
ADVISORY_DB ?= $(abspath $(CURDIR)/../shared/advisory-db)
audit: setup
	bash hack/audit.sh "$(ADVISORY_DB)"

## test: formatting, clippy, unit tests and the integration tests on real containerd + registry,
## then the deploy manifests, the alerts and dashboard, and the container image (deploy-check,
## alerts-check, image-check), the image's own binary end to end (acceptance), and the cheap
## benches against their goals (bench-smoke; the rest of benches/ runs in `make bench`)
test: lint
	$(CARGO) test --lib --bins --tests --examples
	@$(MAKE) --no-print-directory deploy-check alerts-check image-check acceptance bench-smoke fuzz-smoke

## fleet-sim: the fleet simulation (examples/fleet_sim.rs; not part of `make test`): FLEET_NODES
## (default 6) containerd + agent pairs behind a measuring registry front and the fake API as
## its own process, through each scenario; prints the table of figures (README, Fleet simulation)
FLEET_NODES ?= 6
fleet-sim: setup
	$(CARGO) build -q --bin prepuller --example fake_apiserver --example fleet_sim
	target/debug/examples/fleet_sim --nodes $(FLEET_NODES) $(if $(FLEET_ONLY),--only "$(FLEET_ONLY)")

# Fuzzing (fuzz/): libFuzzer through cargo-fuzz, which needs a nightly toolchain.
HAS_NIGHTLY = rustup toolchain list 2>/dev/null | grep -q '^nightly'
FUZZ_TARGETS := reference config_yaml config_dir docker_config
FUZZ_SECONDS ?= 120
# Per target: bounded time; an input that takes over 10 s is a hang, one allocation over
# 64 MiB or a total over 512 MiB a failure; inputs up to 64 KiB (a big config). No sanitizer:
# the code under test is safe Rust (ASan would double the build for nothing), but debug
# assertions are on, so an arithmetic overflow is a crash.
FUZZ_FLAGS = -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=512 -malloc_limit_mb=64 -max_len=65536 -print_final_stats=1

## fuzz: run each fuzz target for FUZZ_SECONDS (default 120), from the seeds in fuzz/seeds/ and
## what earlier runs found (fuzz/corpus/, not committed); crashes land in fuzz/artifacts/
fuzz: setup
	@if ! $(HAS_NIGHTLY); then echo "fuzz: skipped, no nightly toolchain (rustup toolchain install nightly)"; exit 0; fi; \
	cargo +nightly fuzz build -s none --debug-assertions && \
	for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		log=fuzz/target/$$t.log; mkdir -p fuzz/corpus/$$t; \
		cargo +nightly fuzz run -s none --debug-assertions $$t \
			$(CURDIR)/fuzz/corpus/$$t $(CURDIR)/fuzz/seeds/$$t -- $(FUZZ_FLAGS) >$$log 2>&1; rc=$$?; \
		grep -E '^Done [0-9]+ runs|^stat::(number_of_executed_units|peak_rss_mb)' $$log; \
		if [ $$rc -ne 0 ]; then tail -n 40 $$log; echo "fuzz: $$t failed (input in fuzz/artifacts/$$t/)"; exit 1; fi; \
	done

## fuzz-smoke: `make fuzz` for 20 s a target (part of `make test`)
fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=20

# kubectl: the machine's, else the one `make setup` put in .tools/bin.
DEPLOY_PATH = PATH="$$PATH:$(CURDIR)/.tools/bin"
IMAGE_DIR = target/image

## deploy-check: render deploy/ and every overlay with `kubectl kustomize`, validate them against
## the Kubernetes 1.29 and newest schemas, assert what a reviewer would, `prepuller check` the image sets
deploy-check: setup
	$(CARGO) build -q --bin prepuller
	$(DEPLOY_PATH) .venv/bin/python hack/check-manifests.py --prepuller target/debug/prepuller

## alerts-check: the PrometheusRule of deploy/components/metrics through `promtool check rules`
## and its unit tests (`promtool test rules`, each alert firing and not, shown not vacuous), and
## every query of its Grafana dashboard parsed by promtool; all over the README's metric names
alerts-check: setup
	.venv/bin/python hack/check-alerts.py

## image: the container image without Docker: the release binary into an OCI layout
## ($(IMAGE_DIR)/oci, tag = the crate version) and an oci-archive next to it
image: setup
	$(CARGO) build -q --release --bin prepuller
	hack/build-image.sh target/release/prepuller $(IMAGE_DIR)

## image-check: the image's config (entrypoint, user, labels) matches the Dockerfile, and the
## binary runs from the image's own root filesystem
image-check: image
	.venv/bin/python hack/check-image.py $(IMAGE_DIR)/oci

## acceptance: the release binary taken out of the image's root filesystem, run as a separate process
## end to end (tests/acceptance.rs): real containerd + registry, and the fake Kubernetes API in its
## own process over TLS (examples/fake_apiserver.rs)
VERSION = $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
ACCEPTANCE_ROOTFS = $(IMAGE_DIR)/rootfs
acceptance: image
	rm -rf $(ACCEPTANCE_ROOTFS)
	umoci raw unpack --image $(IMAGE_DIR)/oci:$(VERSION) $(ACCEPTANCE_ROOTFS)
	$(CARGO) build -q --example fake_apiserver --test acceptance
	PREPULLER_ACCEPTANCE_BIN=$(CURDIR)/$(ACCEPTANCE_ROOTFS)/usr/local/bin/prepuller \
		$(CARGO) test --test acceptance -- --ignored --test-threads=1 --nocapture

## bench: the cost figures in the README (resync CPU and runtime calls; idle memory on containerd;
## memory with thousands of images waiting on a down registry; the fleet pull budget's API calls
## for up to 5,000 simulated nodes); each bench exits non-zero when a figure misses its goal
bench: setup
	$(CARGO) build --release --bin prepuller
	$(CARGO) bench --bench resync
	$(CARGO) bench --bench idle_memory
	$(CARGO) bench --bench pending_memory
	$(CARGO) bench --bench fleet

## bench-smoke: the cheap benches against the same goals (part of `make test`): the resync pass at
## 20,000 images, the fleet budget at 1,000 nodes, and the agent's memory with 5,000 images
## waiting for 30 s (the release binary `make image` built)
.PHONY: bench-smoke
bench-smoke: setup
	$(CARGO) build -q --release --bin prepuller
	$(CARGO) bench -q --bench resync
	FLEET_BENCH_NODES=1000 $(CARGO) bench -q --bench fleet
	PENDING_BENCH_SMOKE=1 $(CARGO) bench -q --bench pending_memory

# The demo agent's HTTP listener and API socket, and how to stop a demo agent left running.
DEMO_LISTEN ?= 127.0.0.1:18080
DEMO_SOCKET = $(SANDBOX)/agent.sock
STOP_DEMO_AGENT = if [ -f $(SANDBOX)/agent.pid ]; then kill $$(cat $(SANDBOX)/agent.pid) 2>/dev/null || true; \
	for i in $$(seq 50); do kill -0 $$(cat $(SANDBOX)/agent.pid) 2>/dev/null || break; sleep 0.1; done; \
	rm -f $(SANDBOX)/agent.pid; echo "stopped the demo agent"; fi

## demo: start a sandbox (containerd + registry in ./$(SANDBOX)), seed it, run `prepuller pull`
## twice, then start `prepuller agent` on it and show /readyz and `prepuller status`
demo: setup
	$(CARGO) build --bin prepuller --example sandbox
	@$(STOP_DEMO_AGENT)
	$(CARGO) run -q --example sandbox -- up --dir $(SANDBOX)
	@echo; echo "== prepuller check: what the demo config declares"
	./target/debug/prepuller check --config $(SANDBOX)/images.yaml
	@echo; echo "== prepuller pull: pulls what is missing"
	./target/debug/prepuller pull --config $(SANDBOX)/images.yaml --runtime-endpoint "$$(cat $(SANDBOX)/endpoint)"
	@echo; echo "== prepuller pull again: present images are skipped; only the :latest (Always) entry is pulled again"
	./target/debug/prepuller pull --config $(SANDBOX)/images.yaml --runtime-endpoint "$$(cat $(SANDBOX)/endpoint)"
	@echo; echo "== prepuller agent: keeps the images present (log in $(SANDBOX)/agent.log)"
	./target/debug/prepuller agent --config $(SANDBOX)/images.yaml --runtime-endpoint "$$(cat $(SANDBOX)/endpoint)" \
		--listen $(DEMO_LISTEN) --api-socket $(DEMO_SOCKET) --node-name demo-node >$(SANDBOX)/agent.log 2>&1 & \
		echo $$! > $(SANDBOX)/agent.pid
	@for i in $$(seq 300); do curl -fs http://$(DEMO_LISTEN)/readyz >/dev/null && break; sleep 0.2; done
	@echo; echo "== GET /readyz"
	@curl -s -w ' (HTTP %{http_code})\n' http://$(DEMO_LISTEN)/readyz
	@echo; echo "== prepuller status"
	./target/debug/prepuller status --socket $(DEMO_SOCKET)
	@echo; echo "== an image disappears (as with kubelet image GC): the next pass pulls it again"
	ctr -a $(SANDBOX)/containerd/containerd.sock -n k8s.io images rm "$$(sed -n 's/^  - \(.*demo\/web:1.0\)$$/\1/p' $(SANDBOX)/images.yaml)"
	@echo "   (following the agent's events for 15 s: prepuller status --watch)"
	@timeout 15 ./target/debug/prepuller status --socket $(DEMO_SOCKET) --watch || true
	@echo; curl -s -w ' (HTTP %{http_code})\n' http://$(DEMO_LISTEN)/readyz
	@echo; echo "The sandbox and the agent are still running. Try:"
	@echo "  curl http://$(DEMO_LISTEN)/status          # or /metrics, /livez, /readyz"
	@echo "  ./target/debug/prepuller status --socket $(DEMO_SOCKET) --watch"
	@echo "  ctr -a $(SANDBOX)/containerd/containerd.sock -n k8s.io images ls"
	@echo "  make demo-down    # stop them (the sandbox folder stays; add PURGE=1 to delete it)"

demo-down:
	@$(STOP_DEMO_AGENT)
	$(CARGO) run -q --example sandbox -- down --dir $(SANDBOX) $(if $(PURGE),--purge,)
