# One command each: `make run` starts the daemon, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ROOT   ?= $(CURDIR)/run/root
SOCKET ?= $(CURDIR)/run/ferryd.sock
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench lint typecheck check system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian's registry and skopeo are the real peers of the integration tests.
system-deps:
	@if ! command -v docker-registry >/dev/null || ! command -v skopeo >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker-registry skopeo; \
	fi

run: $(STAMP)
	mkdir -p $(ROOT) $(dir $(SOCKET))
	$(VENV)/bin/ferryd serve --root $(ROOT) --socket $(SOCKET)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: system-deps $(STAMP) lint typecheck
	$(PY) -m pytest

bench: system-deps $(STAMP)
	$(PY) bench/pull.py

clean:
	rm -rf $(VENV) run bench/out
