# The two commands of the README:  `make run`  and  `make test`.
# Both bootstrap what they need: a .venv from requirements*.txt, and (for tests,
# when run as root) the Debian packages the real-component tests use.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: run test test-unit system-deps venv clean
.DEFAULT_GOAL := test

$(VENV)/.runtime: requirements.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.dev

run: $(VENV)/.runtime
	$(VPY) sphincter.py $(ARGS)

system-deps:
	sh scripts/system-deps.sh

# gevent must patch before pytest imports anything: run pytest under gevent.monkey.
test: $(VENV)/.dev system-deps
	$(VPY) -m gevent.monkey --module pytest $(PYTEST_ARGS)

# The pure tier alone (tests/unit/: in memory, no gevent patching, no system packages): seconds.
test-unit: $(VENV)/.dev
	$(VPY) -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache

# Tier-specific targets (dist, bench, ...) live in mk/*.mk, one file per tier.
-include mk/*.mk
