# tagcolor: `make demo` runs the whole sample graph offline, `make test` runs lint and the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# Run config for the demo's colorizer (empty: the sample's own preset, assets_config/train/sample_demo.yaml).
COLORIZER_CONFIG ?=
LAUNCH = TAGCOLOR_DATA_DIR=$(DATA) DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dg launch

.PHONY: setup system-packages instance demo docs dataset test test-fast lint dev gpu-check app

# The Debian packages the project needs, installed by `make setup` where missing (as root, or through sudo -n;
# otherwise it stops naming the command): Noto fonts for captions in every script, Chromium for the browser
# test, g++ for torch.compile on the CPU, and python3-venv where the Python is Debian's own.
DEBIAN_PACKAGES ?= fonts-noto-core fonts-noto-cjk chromium g++ $(shell $(PYTHON) -c 'import ensurepip' 2>/dev/null || echo python3-venv)

system-packages:
	@.ci/system-packages $(DEBIAN_PACKAGES)

$(BIN)/dg: pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,app]"
	touch $(BIN)/dg

setup: system-packages $(BIN)/dg

# The Dagster instance: its own settings (assets_config/dagster.yaml) unless DAGSTER_HOME already has some.
instance:
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp assets_config/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# The sample end to end: archives → shards → tokens → stats → colorizer → evaluation.
demo: setup instance
	$(LAUNCH) --assets 'sample/archives' --partition images0
	$(LAUNCH) --assets 'sample/tags_archive'
	$(LAUNCH) --assets 'sample/lab_shards' --partition-range 000...001
	$(LAUNCH) --assets 'sample/tag_tokens'
	$(LAUNCH) --assets 'sample/data_stats'
	$(LAUNCH) --assets 'sample/colorizer' $(if $(COLORIZER_CONFIG),--config $(COLORIZER_CONFIG))
	$(LAUNCH) --assets 'sample/evaluation'
	@echo "collage: $(DATA)/sample/evaluation/result_collage.png  report: $(DATA)/sample/stats/data_stats.md"

# The README's sample pictures and figures, from the last `make demo` (DOCS, README: where they go).
DOCS ?= docs
README ?= README.md
docs: setup
	$(BIN)/python docs/refresh.py --data $(DATA) --docs $(DOCS) --readme $(README)

# Every asset of one dataset, in order, every partition: `make dataset NAME=my-photos` (README: your own photos).
PARTITIONS = TAGCOLOR_DATA_DIR=$(DATA) $(BIN)/python -m pipeline.defs.partitions $(NAME)
dataset: setup instance
	test -n "$(NAME)" || { echo "usage: make dataset NAME=<dataset>"; exit 2; }
	for archive in $$($(PARTITIONS) archives); do $(LAUNCH) --assets '$(NAME)/archives' --partition $$archive || exit 1; done
	$(LAUNCH) --assets '$(NAME)/tags_archive'
	$(LAUNCH) --assets '$(NAME)/lab_shards' --partition-range $$($(PARTITIONS) lab_shards --range)
	$(LAUNCH) --assets '$(NAME)/tag_tokens'
	$(LAUNCH) --assets '$(NAME)/data_stats'
	$(LAUNCH) --assets '$(NAME)/colorizer'
	$(LAUNCH) --assets '$(NAME)/evaluation'
	@echo "collage: $(DATA)/$(NAME)/evaluation/result_collage.png  report: $(DATA)/$(NAME)/stats/data_stats.md"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest's exit code 5 (nothing collected, e.g. a -k that matches nothing) is not a failure.
PYTEST = $(BIN)/python -m pytest $(1); code=$$?; if [ $$code -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$code

# Everything: lint, the definitions and every test (CI runs this).
test: lint
	$(BIN)/dg check defs
	$(call PYTEST,)

# The quick loop while working: every test not marked slow (the shared `make demo`, the browser, compiled training).
test-fast: lint
	$(BIN)/dg check defs
	$(call PYTEST,-m "not slow")

# On a CUDA machine: training throughput, step split, memory and MFU of the 1-GPU MIRFLICKR-1M config (< 5 min).
gpu-check: setup
	$(BIN)/python benchmarks/gpu.py

# The colouring page on http://127.0.0.1:7860 over the runs in DATA: `make app APP_ARGS="--run sample/sample_demo"`.
APP_ARGS ?=
app: setup
	TAGCOLOR_DATA_DIR=$(DATA) $(BIN)/python -m model.app $(APP_ARGS)

dev: setup instance
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dg dev
