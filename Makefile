# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/idv-token-operator/target

.PHONY: envtest-assets
envtest-assets: ## build (once, cached) kube-apiserver and etcd; prints the folder last
	@bash tests/envtest/build-assets.sh

.PHONY: crds
crds: ## regenerate crds/ from the Rust types
	cargo run --quiet -- crd > crds/idvclients.yaml
