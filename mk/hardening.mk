# Hardening tier: Autobahn conformance, fuzzing, soak.  Included by the Makefile.
#
#   make autobahn-venv   CPython 2.7 virtualenv with wstest (build/autobahn-venv)
#   make autobahn        Autobahn run (sections 1-7, 9, 10; ~25 s, CI runs it too) with the report
#                        kept in build/autobahn/reports (index.html) and build/autobahn/summary.md
#   make fuzz            atheris on the frame parser, FUZZ_SECONDS (default 300)
#   make soak            soak run, SOAK_SECONDS (default 600)
#
# `make test` gets the Autobahn venv as an extra prerequisite; when no CPython 2.7
# is found the venv is not made and tests/relay/test_autobahn.py skips (fails under CI=true).

AUTOBAHN_VENV ?= build/autobahn-venv
# CPython 2.7: PY27=..., else python2.7 on PATH (not a pyenv shim), else pyenv's.
PY27 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/2.7*/bin/python2.7 /root/.pyenv/versions/2.7*/bin/python2.7 \
          $(HOME)/.pyenv/versions/2.7*/bin/python2.7 /usr/bin/python2.7 /usr/local/bin/python2.7))
FUZZ_SECONDS ?= 300
SOAK_SECONDS ?= 600

.PHONY: autobahn-venv autobahn fuzz soak hardening-test
test: autobahn-venv

$(AUTOBAHN_VENV)/.ok: tests/autobahn/requirements-py27.txt tests/autobahn/requirements-bootstrap.txt
	@if [ -z "$(PY27)" ]; then \
	    echo "autobahn-venv: no CPython 2.7 found (set PY27=); tests/relay/test_autobahn.py will skip (fail under CI=true)"; \
	elif ( set -e; \
	    test -x build/autobahn-tools/bin/python || $(PYTHON) -m venv build/autobahn-tools; \
	    build/autobahn-tools/bin/python -m pip install -q --disable-pip-version-check \
	        -r tests/autobahn/requirements-bootstrap.txt; \
	    rm -rf $(AUTOBAHN_VENV); \
	    build/autobahn-tools/bin/python -m virtualenv -q -p "$(PY27)" $(AUTOBAHN_VENV); \
	    $(AUTOBAHN_VENV)/bin/python -m pip install -q --disable-pip-version-check \
	        --no-python-version-warning -r tests/autobahn/requirements-py27.txt; \
	    $(AUTOBAHN_VENV)/bin/wstest -a >/dev/null ); then \
	    touch $@; \
	else \
	    echo "autobahn-venv: could not be built; tests/relay/test_autobahn.py will say so"; \
	fi

autobahn-venv: $(AUTOBAHN_VENV)/.ok

autobahn: $(VENV)/.dev autobahn-venv
	SPHINCTER_AUTOBAHN_SET=full $(VPY) -m gevent.monkey --module pytest -p no:cacheprovider \
	    -o timeout=1800 -s tests/relay/test_autobahn.py $(PYTEST_ARGS)

fuzz: $(VENV)/.dev
	mkdir -p build/fuzz/corpus
	cd build/fuzz && ../../$(VPY) ../../tests/fuzz_wsproto.py corpus -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048

soak: $(VENV)/.dev
	$(VPY) bench/soak.py --seconds $(SOAK_SECONDS)

# Just this tier's tests (quick iteration).
hardening-test: $(VENV)/.dev autobahn-venv
	$(VPY) -m gevent.monkey --module pytest $(PYTEST_ARGS) tests/relay/test_autobahn.py \
	    tests/relay/test_security.py tests/unit/relay/test_security_policy.py tests/relay/test_hostile.py \
	    tests/unit/proto/test_wsproto_props.py tests/process/test_fuzz.py tests/relay/test_soak.py
