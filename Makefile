PY ?= python
.PHONY: all fmt lint imports types test bench bench-smoke

all: lint imports types test bench-smoke

fmt:
	ruff format relay tests bench
	ruff check --fix relay tests bench

lint:
	ruff format --check relay tests bench
	ruff check relay tests bench

imports:
	lint-imports

types:
	mypy relay

test:
	$(PY) -m pytest -q

bench:
	$(PY) -m bench

bench-smoke:
	$(PY) -m bench --smoke
