# The two commands a fresh clone needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean tools cluster

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/waveform serve --data ./data --port 50051 --demo

# PostgreSQL, SeaweedFS (S3) and two replicas on one catalog and bucket, on 127.0.0.1;
# the demo ECGs loaded; Ctrl-C stops everything (docs/deploy.md).
cluster: $(STAMP) tools
	$(BIN)/python -m waveform.devcluster

# dicom3tools (dciodvfy) validates what our encoder writes; install it where we can.
tools:
	@command -v dciodvfy >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get install -y -qq dicom3tools >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dicom3tools >/dev/null 2>&1)); } || \
	  echo "warning: dciodvfy (Debian package dicom3tools) is not installed"
	@# dcmtk's storescu/echoscu play the cart in tests/test_dimse.py.
	@command -v storescu >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get install -y -qq dcmtk >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dcmtk >/dev/null 2>&1)); } || \
	  echo "warning: storescu (Debian package dcmtk) is not installed"
	@# PostgreSQL's server binaries: the catalog of the cluster backend in the tests.
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1)); } || \
	  echo "warning: initdb (Debian package postgresql) is not installed"

lint: $(STAMP)
	$(BIN)/ruff check waveform tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) tools
	$(BIN)/python -m pytest

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
