# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check --progress-bar on

.PHONY: run test lint unit venv venv-runtime

$(PY):
	$(PYTHON) -m venv $(VENV)

# `make run` needs the runtime set only (what production installs); `make test` the whole
# dev set (pytest, playwright, ...). pip shows what it fetches: a first install takes a while.
$(VENV)/.runtime-installed: requirements.txt | $(PY)
	@echo "make: installing the pinned runtime requirements (requirements.txt) into $(VENV)/"
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(PY)
	@echo "make: installing the pinned runtime and test requirements (requirements-dev.txt) into $(VENV)/"
	$(PIP) -r requirements-dev.txt
	touch $@ $(VENV)/.runtime-installed

venv-runtime: $(VENV)/.runtime-installed
venv: $(VENV)/.installed

# The server on the embedded default: SQLite file under data/, in-process broker, 127.0.0.1.
run: venv-runtime
	$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

# ruff over the package, the tests, bench/ and scripts (rules in pyproject.toml).
lint: venv
	$(PY) -m ruff check .

# The pure tests (tests/unit/): no PostgreSQL, Redis, server or Node; seconds.
unit: venv
	$(PY) -m pytest -q tests/unit

# The lint, the pure tests, the whole test suite against real gunicorn, PostgreSQL and Redis,
# then the Node client's (clients/js, `node --test` against a real server); each runs even
# when one before it failed, and scripts/run-tests reports all four (README "Testing").
# PYTEST_ARGS and JS_TESTS (from the command line or the environment) reach the script.
export PYTEST_ARGS JS_TESTS
test: venv
	PY=$(PY) bash scripts/run-tests
