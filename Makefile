# tagcolor: `make demo` runs the whole sample graph offline, `make test` runs lint and the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
DAGSTER_HOME ?= $(CURDIR)/.dagster_home
SAMPLE_RUN_CONFIG ?= assets_config/runs/sample_demo.yaml
# Where the demo copies its collage for the README (empty: no copy).
COLLAGE_COPY ?= docs/sample_collage.png
MATERIALIZE = TAGCOLOR_DATA_DIR=$(DATA) DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster asset materialize -m pipeline.definitions

.PHONY: setup instance demo test lint dev

$(BIN)/dagster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/dagster

setup: $(BIN)/dagster

# The Dagster instance: its own settings (assets_config/dagster.yaml) unless DAGSTER_HOME already has some.
instance:
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp assets_config/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# The sample end to end: archives → shards → tokens → stats → colorizer → evaluation.
demo: setup instance
	$(MATERIALIZE) --select 'sample/archives' --partition images0
	$(MATERIALIZE) --select 'sample/tags_archive'
	$(MATERIALIZE) --select 'sample/lab_shards' --partition-range 000...001
	$(MATERIALIZE) --select 'sample/tag_tokens'
	$(MATERIALIZE) --select 'sample/data_stats'
	$(MATERIALIZE) --select 'sample/colorizer' --config $(SAMPLE_RUN_CONFIG)
	$(MATERIALIZE) --select 'sample/evaluation'
	if [ -n "$(COLLAGE_COPY)" ]; then mkdir -p $$(dirname $(COLLAGE_COPY)) && cp $(DATA)/sample/evaluation/result_collage.png $(COLLAGE_COPY); fi
	@echo "collage: $(DATA)/sample/evaluation/result_collage.png  report: $(DATA)/sample/stats/data_stats.md"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/python -m pytest; code=$$?; if [ $$code -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$code

dev: setup instance
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster dev -w workspace.yaml
