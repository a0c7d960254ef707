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

.PHONY: test
test: ## every test: format, lints, unit, CRD drift, and integration on a real control plane and IdP
	@cargo fmt --check
	@cargo clippy --all-targets --locked --quiet -- -D warnings
	@bash tests/tools/gitops-check/build.sh >/dev/null
	@assets="$$(bash tests/envtest/build-assets.sh | tail -n1)"; \
	  [ -d tests/idp/node_modules/oidc-provider ] || npm ci --no-audit --no-fund --prefix tests/idp; \
	  KUBEBUILDER_ASSETS="$$assets" cargo test --locked

.PHONY: demo
demo: ## local control plane + IdP, the operator, an example IdvClient and its token Secret
	@assets="$$(bash tests/envtest/build-assets.sh | tail -n1)"; \
	  [ -d tests/idp/node_modules/oidc-provider ] || npm ci --no-audit --no-fund --prefix tests/idp; \
	  cargo build --locked --quiet; \
	  KUBEBUILDER_ASSETS="$$assets" IDV_OPERATOR_BIN="$(CARGO_TARGET_DIR)/debug/idv-token-operator" \
	  cargo run --locked --quiet --example demo

.PHONY: bench
bench: ## convergence benchmark: N IdvClients (BENCH_CLIENTS, default 1000) vs the bare work; see docs/benchmarks.md
	@assets="$$(bash tests/envtest/build-assets.sh | tail -n1)"; \
	  cargo build --release --locked --quiet; \
	  KUBEBUILDER_ASSETS="$$assets" IDV_OPERATOR_BIN="$(CARGO_TARGET_DIR)/release/idv-token-operator" \
	  BENCH_CLIENTS="$(or $(BENCH_CLIENTS),1000)" \
	  cargo bench --locked --quiet --bench convergence
