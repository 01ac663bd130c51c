# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test venv

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# The server on the embedded default: SQLite file under data/, in-process broker.
run: venv
	$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

# The whole test suite against real gunicorn, PostgreSQL and Redis; then the Node client's
# (clients/js, `node --test` against a real server), installing Node and npm if missing.
test: venv
	bash scripts/ensure-services
	$(PY) -m pytest -q $(PYTEST_ARGS)
	command -v node >/dev/null && command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	cd clients/js && npm ci --no-audit --no-fund && npm test
