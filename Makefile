# blockproxy — the two commands are `make quickstart` (the main job) and `make test` (everything).
SHELL := /bin/bash
.DEFAULT_GOAL := help
TOOLS_ENV = eval "$$(hack/tools.sh --print-env)"

.PHONY: help
help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: quickstart
quickstart: ## Run 3 proxies + an S3 endpoint on loopback, on a local-directory store (no cloud, no cluster).
	cargo run --release -p blockproxy --bin blockproxy -- quickstart

.PHONY: tools
tools: ## Build the real test components (kube-apiserver, etcd, kwok, MinIO, toxiproxy, helm, aws CLI) into ~/.cache/blockproxy.
	hack/tools.sh

.PHONY: lint
lint: ## rustfmt and clippy, warnings are errors.
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

.PHONY: test
test: tools lint ## Everything CI runs: tools, lint, and every test against the real components.
	$(TOOLS_ENV) && cargo test --workspace --no-fail-fast

.PHONY: crds
crds: ## Regenerate crds/*.yaml and the chart's copy from the Rust types.
	cargo run -p blockproxy-operator --bin crdgen

.PHONY: bench
bench: tools ## Benchmarks against nginx proxy_cache and direct S3 (prints ratios; see README). BENCH_ARGS=--quick for a shorter run.
	hack/nginx.sh >/dev/null
	$(TOOLS_ENV) && cargo bench -p blockproxy --bench compare -- $(BENCH_ARGS)
