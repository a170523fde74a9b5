# CPython 3.6 tier (issue 14): the oldest supported Python runs the relay contract tests.
#
#   make test-py36    .venv36 from requirements.txt + requirements-py36.txt (rebuilt only when
#                     they change), then PY36_TESTS under CPython 3.6 (about a minute)
#
# `make test` runs it first. CPython 3.6: PY36=..., else pyenv's (PYENV_ROOT, `pyenv root`,
# ~/.pyenv), else python3.6 in /usr/bin or /usr/local/bin (never a pyenv shim). When none is
# found the tier is skipped with a message, and fails under CI=true.

PY36 ?= $(firstword $(wildcard $(addsuffix /versions/3.6*/bin/python3.6,$(PYENV_ROOT) \
          $(shell pyenv root 2>/dev/null) /root/.pyenv $(HOME)/.pyenv) \
          /usr/bin/python3.6 /usr/local/bin/python3.6))
VENV36 := .venv36
# The relay contract end to end (real server, real sockets, real WebSocket client, the real
# `python3.6 sphincter.py` process) and the pure protocol modules under it; Redis mode through
# test_redis_mode.py (in-process nodes on a real Redis, redis-py 4.3.6 on 3.6, about 20 s) and
# test_failover.py (Sentinel: a primary, a replica, three sentinels; fencing; about 25 s). The
# several-process scale-out tests (test_cluster.py, about 80 s) run on the newest Python only.
PY36_TESTS ?= tests/relay/test_relay.py tests/process/test_cli.py \
              tests/unit/relay/test_config.py tests/unit/proto/test_framing.py \
              tests/unit/proto/test_wsproto.py tests/unit/proto/test_wsproto_props.py \
              tests/unit/rooms/test_rooms.py tests/unit/proto/test_roomcode.py \
              tests/relay/test_security.py tests/unit/relay/test_security_policy.py \
              tests/relay/test_metrics_api.py tests/unit/relay/test_viewer_static.py \
              tests/relay/test_lifecycle.py tests/relay/test_writeback.py \
              tests/unit/proto/test_preamble.py tests/unit/proto/test_roomsfile.py \
              tests/process/test_connect.py tests/unit/agent/test_wsclient.py \
              tests/unit/proto/test_obsws.py tests/unit/proto/test_resp.py \
              tests/relay/test_redis_mode.py \
              tests/unit/proto/test_proxyproto.py tests/relay/test_proxy_protocol.py \
              tests/process/test_pipe.py tests/unit/proto/test_httpconnect.py \
              tests/unit/proto/test_sentinel.py tests/relay/test_failover.py \
              tests/process/test_sessions.py \
              tests/unit/proto/test_sessionwire.py tests/unit/rooms/test_session_rooms.py \
              tests/unit/proto/test_sessionsignal.py tests/unit/relay/test_sessions_config.py

.PHONY: test-py36
test: test-py36

# pip 18.1 (3.6's ensurepip) cannot install manylinux2014 wheels: 21.3.1 (the last for 3.6) first.
$(VENV36)/.ok: requirements.txt requirements-py36.txt
	rm -rf $(VENV36)
	$(PY36) -m venv $(VENV36)
	$(VENV36)/bin/python -m pip install -q --disable-pip-version-check "pip==21.3.1"
	$(VENV36)/bin/python -m pip install -q --disable-pip-version-check \
	    -r requirements.txt -r requirements-py36.txt
	touch $@

test-py36:
	@if [ -z "$(PY36)" ]; then \
	    echo "test-py36: no CPython 3.6 found (set PY36=, or pyenv install 3.6.15)"; \
	    if [ "$$CI" = true ]; then echo "test-py36: CI=true: the 3.6 tier must run"; exit 1; fi; \
	else \
	    $(MAKE) --no-print-directory $(VENV36)/.ok && \
	    $(VENV36)/bin/python -m gevent.monkey --module pytest -p no:cacheprovider $(PY36_TESTS); \
	fi

.PHONY: clean-py36
clean: clean-py36
clean-py36:
	rm -rf $(VENV36)
