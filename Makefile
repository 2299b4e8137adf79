# The README's two commands: `make demo` and `make test`. Both set up everything they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint image bench chaos services-up services-down k8s-tools k8s-apiserver k8s-check

$(BIN)/outboxkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## Start a local Kafka and Redis (and PostgreSQL when ARGS asks for it), then run the demo: a shop
## writing continuously -> outbox -> relay -> Kafka -> sink -> warehouse, its jobs -> dispatcher ->
## Redis -> a dramatiq worker. E.g. ARGS="--seconds 60 --warehouse postgres".
ARGS ?=
demo: $(BIN)/outboxkit
	scripts/services up kafka redis $(if $(findstring postgres,$(ARGS)),postgres)
	$(BIN)/outboxkit demo $(ARGS)

## Lint, type-check, build the image and the manifest validators (both cached), start
## Kafka/PostgreSQL/Redis, run the test suite against them (tests/test_image.py runs the relay and
## the sink as containers of the image; tests/test_k8s_manifests.py validates every manifest).
test: $(BIN)/outboxkit lint image k8s-tools
	scripts/services up
	$(BIN)/pytest

## The container image localhost/outboxkit:<version>, from Debian's packages, no registry (cached:
## minutes once, seconds after a source change, nothing when nothing changed). See README.md.
image: $(BIN)/outboxkit
	$(BIN)/python scripts/image build

## Benchmarks against the local PostgreSQL, Kafka and Redis: side-by-side medians and ratios (see bench/README.md).
bench: $(BIN)/outboxkit
	scripts/services up postgres
	$(BIN)/python -m bench b1
	scripts/services up kafka
	$(BIN)/python -m bench b2
	$(BIN)/python -m bench b3 --wakeup
	$(BIN)/python -m bench b4
	$(BIN)/python -m bench b5
	scripts/services up redis
	$(BIN)/python -m bench b6
	$(BIN)/python -m bench plot

## The long proof: 30 minutes of workload and faults (Kafka and PostgreSQL restarts too), then verify.
## CAPTURE=wal: the relays read the outbox from the write-ahead log instead of polling it.
CAPTURE ?= poll
chaos: $(BIN)/outboxkit
	scripts/services up
	$(BIN)/outboxkit chaos --seconds 1800 --events 0 --restart-services --capture $(CAPTURE)

## kubeconform, kube-score, the Pod Security evaluator (tools/pss) and Kubernetes' schemas, into
## the cache: a few minutes the first time, then seconds (tests/test_k8s_manifests.py uses them).
k8s-tools: $(BIN)/outboxkit
	$(BIN)/python scripts/k8s-tools build

## Build kube-apiserver from the Go module proxy into the cache (5 to 15 minutes cold on two
## cores, then seconds: keyed by tools/kube-apiserver's go.mod and go.sum, and Go's build cache).
k8s-apiserver:
	scripts/k8s-apiserver build

## Our manifests against a real API server (etcd + kube-apiserver on loopback): strict server-side
## dry-run of every rendered object, then each pod template created as a Pod in a namespace that
## enforces the restricted Pod Security Standard. Not part of `make test` (the cold build).
k8s-check: $(BIN)/outboxkit k8s-apiserver
	scripts/k8s-apiserver up
	$(BIN)/pytest -m k8s_apiserver -rP tests/test_k8s_apiserver.py

lint: $(BIN)/outboxkit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

services-up:
	scripts/services up

services-down:
	scripts/services down
