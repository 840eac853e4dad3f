# Two entry points: `make demo` and `make test`. Both build .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean
.PHONY: test-all durations

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The torch pair first, by exact version, so pip takes the local wheels.
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tome_lab.ablate matching=bipartite,pruning

# The fast tier (tiny models, eager backend; minutes on a 2-core CPU); test-all adds the tests
# marked `full` (notebooks, inductor, fvcore, trainings, zoo reproductions, espeak-ng, Slurm)
# (.[dev] installs every extra, so a model-family test fails rather than skips without one)
test: $(STAMP)
	TOME_LAB_REQUIRE_EXTRAS=1 $(BIN)/python -m pytest -q -m "not full"

test-all: $(STAMP)
	TOME_LAB_REQUIRE_EXTRAS=1 $(BIN)/python -m pytest -q

# benchmarks/test_durations_{fast,full}.txt: the 25 slowest tests and the wall time of each tier
durations: $(STAMP)
	tests/durations.sh

lint: $(STAMP)
	$(BIN)/ruff check tome_lab tests benchmarks ablations launch analysis

clean:
	rm -rf $(VENV)

bench: $(STAMP)
	$(BIN)/python -m tome_lab.bench --model deit_small_patch16_224 --r 0,8,16 --batch-size 32

# The docs site (mkdocs.yml, docs/): built strictly and offline into site/, or served locally.
.PHONY: docs docs-serve
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve
