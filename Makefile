# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
# Every recipe line stops at its first failing command, also inside a pipe: a failed build of
# the test assets is not hidden behind `| tail -n1`.
.SHELLFLAGS := -euo pipefail -c
export CARGO_TARGET_DIR ?= $(HOME)/.cache/idv-token-operator/target

.PHONY: envtest-assets
envtest-assets: ## build (once, cached) kube-apiserver and etcd; prints the folder last
	@bash tests/envtest/build-assets.sh

.PHONY: gitops-check
gitops-check: ## build (once, cached) the kstatus + Argo CD Lua helper of the GitOps tests; prints its path last
	@bash tests/tools/gitops-check/build.sh

.PHONY: crds
crds: ## regenerate crds/ from the Rust types, and its copies in deploy/crds and the chart
	cargo run --quiet -- crd > crds/idvclients.yaml
	cp crds/idvclients.yaml deploy/crds/idvclients.yaml
	cp crds/idvclients.yaml deploy/helm/idv-token-operator/files/crds/idvclients.yaml

.PHONY: tools
tools: ## build (once, cached) the helm and actionlint the tests run; prints their paths
	@bash tests/tools/build.sh helm | tail -n1
	@bash tests/tools/build.sh actionlint | tail -n1

.PHONY: test
test: ## every test: format, lints, unit, CRD drift, chart, and integration on a real control plane and IdP
	@cargo fmt --check
	@cargo clippy --all-targets --locked -- -D warnings
	@bash tests/tools/gitops-check/build.sh >/dev/null
	@assets="$$(bash tests/envtest/build-assets.sh | tail -n1)"; \
	  helm="$$(bash tests/tools/build.sh helm | tail -n1)"; \
	  actionlint="$$(bash tests/tools/build.sh actionlint | tail -n1)"; \
	  [ -d tests/idp/node_modules/oidc-provider ] || npm ci --no-audit --no-fund --prefix tests/idp; \
	  KUBEBUILDER_ASSETS="$$assets" HELM_BIN="$$helm" ACTIONLINT_BIN="$$actionlint" cargo test --locked

# The demo's steps, each announced: a first run builds kube-apiserver and etcd (or fetches the
# published envtest binaries) and the operator, which takes minutes; cargo shows its progress.
DEMO_STATE_DIR ?= $(HOME)/.cache/idv-token-operator/demo
DEMO_RUN = echo "==> kube-apiserver and etcd (built once, cached; a first build takes 10-25 minutes)" >&2; \
	  assets="$$(bash tests/envtest/build-assets.sh | tail -n1)"; \
	  echo "==> the test IdP (npm)" >&2; \
	  [ -d tests/idp/node_modules/oidc-provider ] || npm ci --no-audit --no-fund --prefix tests/idp; \
	  echo "==> cargo build: the operator and the demo (a first build takes minutes)" >&2; \
	  cargo build --locked --bin idv-token-operator --example demo; \
	  KUBEBUILDER_ASSETS="$$assets" IDV_OPERATOR_BIN="$(CARGO_TARGET_DIR)/debug/idv-token-operator" \
	  DEMO_STATE_DIR="$(DEMO_STATE_DIR)" "$(CARGO_TARGET_DIR)/debug/examples/demo"

.PHONY: demo
demo: ## local control plane + IdP, the operator, an example IdvClient and its token Secret; stops at the end
	@$(DEMO_RUN)

.PHONY: demo-up
demo-up: ## the demo, left running to try kubectl by hand: prints the KUBECONFIG to export; stop with Ctrl-C or make demo-down
	@if [ -f "$(DEMO_STATE_DIR)/pid" ] && kill -0 "$$(cat "$(DEMO_STATE_DIR)/pid")" 2>/dev/null; then \
	  echo "a demo is running already (pid $$(cat "$(DEMO_STATE_DIR)/pid")): source $(DEMO_STATE_DIR)/env, or make demo-down" >&2; exit 1; fi
	@DEMO_KEEP=1; export DEMO_KEEP; $(DEMO_RUN)

.PHONY: demo-down
demo-down: ## stop the demo that make demo-up left running
	@pid="$$(cat "$(DEMO_STATE_DIR)/pid" 2>/dev/null)" || { echo "no demo is running" >&2; exit 0; }; \
	  ps -p "$$pid" -o args= 2>/dev/null | grep -q 'examples/demo' \
	    || { rm -f "$(DEMO_STATE_DIR)/pid"; echo "no demo is running" >&2; exit 0; }; \
	  kill -TERM "$$pid"; \
	  for _ in $$(seq 100); do kill -0 "$$pid" 2>/dev/null || { echo "demo stopped" >&2; exit 0; }; sleep 0.2; done; \
	  echo "the demo (pid $$pid) did not stop within 20 s" >&2; exit 1

.PHONY: bench
bench: ## apply N IdvClients (BENCH_CLIENTS, default 1000) to a running operator until all are Ready, vs the bare work (BENCH_PEER=eso: ESO beside it); see docs/benchmarks.md
	@assets="$$(bash tests/envtest/build-assets.sh | tail -n1)"; \
	  cargo build --release --locked --quiet; \
	  KUBEBUILDER_ASSETS="$$assets" IDV_OPERATOR_BIN="$(CARGO_TARGET_DIR)/release/idv-token-operator" \
	  BENCH_CLIENTS="$(or $(BENCH_CLIENTS),1000)" \
	  cargo bench --locked --quiet --bench convergence

.PHONY: bench-proxy
bench-proxy: ## the proxy's added latency, memory and CPU against a local HTTPS upstream; see docs/benchmarks.md
	@cargo bench --locked --quiet --bench proxy
