# PyEdge developer tasks. `make` (or `make help`) lists them.
# Every target that needs Python tools first runs tools/setup.sh, which is idempotent and
# fast when nothing changed: .venv with pyedge[dev], and Mosquitto for run/test.

VENV := .venv
BIN := $(VENV)/bin
SETUP := bash tools/setup.sh
PYTEST_ARGS ?=
BENCH ?=
# How long `make soak` runs, in seconds.
DURATION ?= 600

# Settings `pyedge run` reads from the environment. Set in the environment or on the
# command line (`make run EDGE_HTTP_PORT=9000`), they reach pyedge; unset ones stay unset
# (a bare `export VAR` would hand pyedge an empty value).
EDGE_ENV := EDGE_HTTP_HOST EDGE_HTTP_PORT EDGE_MQTT_PORT EDGE_DATA_DIR EDGE_TLS EDGE_MQTT_TLS EDGE_SITE \
	EDGE_ROLE EDGE_SERVICES
$(foreach v,$(EDGE_ENV),$(if $(filter undefined,$(origin $(v))),,$(eval export $(v))))

.PHONY: help setup run test faults lint format bench soak clean up down logs screenshots

help: ## List the targets (the default)
	@printf 'Usage: make TARGET [PYTEST_ARGS=...] [EDGE_HTTP_PORT=...]\n\nTargets:\n'
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z_-]*:.*## / { printf "  %-8s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@printf '\nVariables: PYTEST_ARGS (test), DURATION (soak), %s (run)\n' '$(EDGE_ENV)'

setup: ## Prepare the checkout: Python >= 3.11, .venv with pyedge[dev], Mosquitto
	@$(SETUP)

run: ## Solo mode: `pyedge run` (Mosquitto + edge-server) with the EDGE_* settings
	@$(SETUP) run
	$(BIN)/pyedge run

test: ## Run pytest (extra arguments: PYTEST_ARGS=...); "no tests collected" fails too
	@$(SETUP) test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

faults: ## Run the fault suite and print its counting report (build/faults/report.jsonl)
	@$(SETUP) test
	$(BIN)/python -m pytest -m faults tests/faults $(PYTEST_ARGS)

screenshots: ## Retake the dashboard's screenshots in docs/screenshots (the browser tests)
	@$(SETUP) test
	PYEDGE_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/dashboard

up: ## The compose bundle: .env if missing, docker compose up -d --build, wait until healthy
	@bash tools/compose.sh up

down: ## Stop and remove the bundle's containers (the volumes, all its data, stay)
	@bash tools/compose.sh down

logs: ## Follow the bundle's logs
	@bash tools/compose.sh logs

lint: ## Check: ruff check, ruff format --check, mypy pyedge (runs all, fails if any fails)
	@$(SETUP) venv
	@status=0; \
	echo '$(BIN)/ruff check .'; $(BIN)/ruff check . || status=1; \
	echo '$(BIN)/ruff format --check .'; $(BIN)/ruff format --check . || status=1; \
	echo '$(BIN)/mypy pyedge'; $(BIN)/mypy pyedge || status=1; \
	exit $$status

format: ## Rewrite the code: ruff check --fix, then ruff format
	@$(SETUP) venv
	@status=0; \
	echo '$(BIN)/ruff check --fix .'; $(BIN)/ruff check --fix . || status=1; \
	echo '$(BIN)/ruff format .'; $(BIN)/ruff format . || status=1; \
	exit $$status

bench: ## Run the benchmarks (python -m bench; one: make bench BENCH=served); ratios and targets
	@if [ -d bench ]; then \
	$(SETUP) bench && $(BIN)/python -m bench $(BENCH); \
	else \
	echo 'no benchmarks yet (there is no bench/ directory)'; \
	fi

soak: ## Soak the solo bundle at 50 readings/s for DURATION seconds (600); RSS/fd slopes
	@$(SETUP) run
	$(BIN)/python -m bench soak --duration $(DURATION) --out build/soak/soak.json

clean: ## Remove .venv and caches/build output; keeps data/ (that is user data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -path ./.git -prune -o -path ./data -prune -o -name __pycache__ -type d -prune \
	-exec rm -rf {} +
