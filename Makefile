# One command each: `make run` starts the daemon, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Exact versions of every dependency (runtime and the `test` extra), the ones CI tested.
# Installed with plain pip; regenerated from pyproject.toml by `make lock`.
LOCK   := requirements.lock
# uv only resolves the lock (`make lock`); nothing installs with it.
UV_VERSION ?= 0.13.9
ROOT   ?= $(CURDIR)/run/root
SOCKET ?= $(CURDIR)/run/ferryd.sock
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast boot-root bench lint typecheck check system-deps clean lock

# The pinned versions from the lock, then ferryd itself without dependencies; pip check
# fails here if pyproject.toml asks for something the lock does not give (run `make lock`).
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check || { echo 'pyproject.toml asks for what $(LOCK) lacks: run make lock' >&2; exit 1; }
	touch $(STAMP)

# After changing dependencies in pyproject.toml: keeps every pin it can and changes only
# what the change needs. `make lock UPGRADE=1` moves every pin to the newest release
# pyproject.toml allows. Commit the result; `make test` then installs it.
lock:
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv==$(UV_VERSION)'
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --universal \
		--python-version 3.11 --custom-compile-command 'make lock' \
		$(if $(UPGRADE),--upgrade) --quiet -o $(LOCK)

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

# Every test, in parallel (pyproject.toml: two workers per CPU).
test: system-deps $(STAMP) lint typecheck boot-root
	$(PY) -m pytest

# The Debian 12 root that tests/test_systemd_boot.py boots under systemd-nspawn, and
# ferryd's dependencies as wheels: built once (a minute or two) and cached outside the
# checkout (/var/cache/ferryd-test-root). Where it cannot be built it says why, and that
# test skips. Select the test with -m systemd_boot.
boot-root: $(STAMP)
	$(PY) tests/support/debian_boot.py

# The in-process tests only: no registry, daemon, systemd or docker CLI.
FAST := not registry and not daemon and not systemd and not systemd_boot and not docker_cli
test-fast: $(STAMP)
	$(PY) -m pytest -q -m '$(FAST)'

bench: system-deps $(STAMP)
	$(PY) bench/pull.py

clean:
	rm -rf $(VENV) run bench/out
