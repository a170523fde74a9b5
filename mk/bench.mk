# Benchmarks (issue 4): `make bench` (full, < 15 min) and `make bench-smoke` (seconds).
# The full run compares Sphincter with an asyncio relay, nginx+nchan, websockify and socat;
# as root on Debian it installs the missing peers itself. Results: bench/results/<date>.json,
# bench/results/<date>-fanout.png, docs/BENCHMARKS.md. Some scenarios only:
# make bench BENCH_ARGS="--only tunnel-open,blast" (= make bench-flow): bench/results/<date>-<scenarios>.{json,md}.
BENCH_ARGS ?=
BENCH_PKGS := nginx libnginx-mod-nchan socat

.PHONY: bench bench-flow bench-smoke bench-deps bench-profile bench-cluster bench-revs bench-sessions

$(VENV)/.bench: $(VENV)/.runtime requirements-bench.txt
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	touch $@

bench-deps:
	@missing=""; for p in $(BENCH_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "bench: installing$$missing"; apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "bench: missing$$missing (those targets are skipped)"; fi; \
	fi

bench: $(VENV)/.bench bench-deps
	$(VPY) bench/run.py $(BENCH_ARGS)

# issue 9 (flow control) cases only: open-loop tunnel and blast next door
bench-flow: $(VENV)/.bench bench-deps
	$(VPY) bench/run.py --only tunnel-open,blast $(BENCH_ARGS)

# issue 20: session rooms (relay + `connect --sessions`) against websockify in front of the same
# service, interleaved, 5 rounds: one session's throughput both ways (sha256) and CPU per MB, time
# to first byte and opens/s, 100 sessions at once (aggregate, fairness), idle memory per session;
# results: bench/results/<date>-sessions.{json,md}. Some only: BENCH_ARGS="--only throughput --rounds 5"
bench-sessions: $(VENV)/.bench
	$(VPY) bench/sessions.py $(BENCH_ARGS)

# issue 13: one process vs two nodes sharing a redis-server (started by the bench on a free
# loopback port), N = 1000; results: bench/results/<date>-cluster.{json,md}
bench-cluster: $(VENV)/.bench
	@command -v redis-server >/dev/null || { echo "bench-cluster: redis-server missing (apt-get install redis-server)"; exit 2; }
	$(VPY) bench/cluster.py $(BENCH_ARGS)

# issue 22: chaos soak of 3 nodes on Redis with Sentinel (a primary, a replica, three sentinels),
# 20 rooms fed by `sphincter connect`, 500 subscribers, a random fault every 20-40 s (node SIGKILL,
# node SIGSTOP beyond its lease, Redis failover, a node's Redis link cut); SOAK_SECONDS (600).
# The 60-second version is tests/relay/test_soak_cluster.py. SOAK_REDIS=cluster: the same soak on a
# Redis Cluster (3 primaries, 3 replicas; the failover fault kills one shard's primary).
soak-cluster: $(VENV)/.dev
	@command -v redis-sentinel >/dev/null || { echo "soak-cluster: redis-sentinel missing (apt-get install redis-server redis-sentinel)"; exit 2; }
	@command -v redis-cli >/dev/null || { echo "soak-cluster: redis-cli missing (apt-get install redis-tools)"; exit 2; }
	$(VPY) bench/soak_cluster.py --seconds $(or $(SOAK_SECONDS),600) --redis $(or $(SOAK_REDIS),sentinel) $(BENCH_ARGS)

bench-smoke: $(VENV)/.dev
	$(VPY) -m gevent.monkey --module pytest tests/relay/test_bench_smoke.py tests/relay/test_bench_cluster.py tests/relay/test_bench_sessions_smoke.py $(PYTEST_ARGS)

bench-profile: $(VENV)/.bench
	$(VPY) bench/profile.py $(BENCH_ARGS)

# Sphincter at two git revisions side by side (issue 19: no regression from a refactor): fan-out
# at N = 10/100/1000 and one room in process, old and new interleaved, 7 repetitions; results:
# bench/results/<date>-<TAG>.{json,md} (TAG default: <OLD>-vs-<NEW>).
#   make bench-revs OLD=802e3cc NEW=HEAD TAG=layout-old-vs-new
OLD ?=
NEW ?= HEAD
TAG ?=
bench-revs: export BENCH_REVS_COMMAND = make bench-revs OLD=$(OLD) NEW=$(NEW)$(if $(TAG), TAG=$(TAG))$(if $(BENCH_ARGS), BENCH_ARGS="$(BENCH_ARGS)")
bench-revs: $(VENV)/.bench
	@test -n "$(OLD)" || { echo "bench-revs: say OLD=<git revision> (and NEW=, default HEAD)"; exit 2; }
	$(VPY) bench/revs.py $(OLD) $(NEW) $(if $(TAG),--tag $(TAG)) $(BENCH_ARGS)
