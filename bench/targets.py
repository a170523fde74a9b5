"""The servers the bench drives: Sphincter, the asyncio baseline, nginx+nchan, websockify, socat.

Each target starts one fresh server process per run on free loopback ports, reports what the
load generator needs (subscriber address, source spec, path format, room names) and the pids
whose CPU and RSS count as "the server" (the whole process tree: nginx workers, websockify's
per-connection children).
"""
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

#: every subscriber buffer the relays get: far above the closed loop's window
SUBSCRIBER_BUFFER = 16 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listening(port):
    """True once something LISTENs on 127.0.0.1:port (read /proc: no probe connection)."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except FileNotFoundError:
            pass
    return False


def _children():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid):
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid):
    """utime+stime of pid and its descendants, seconds."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def rss_kb(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KB
        except (OSError, IndexError):
            pass
    return total


class Server:
    """One running server process; ``stop()`` always ends it."""

    def __init__(self, argv, ports, workdir, env=None, log_name="server.log"):
        self.workdir = workdir
        self.log_name = log_name
        #: processes that go with it (a redis-server): stopped after it
        self.companions = []
        self.log = open(Path(workdir) / log_name, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_raise_nofile,
                                     cwd=str(ROOT), env=env)
        deadline = time.monotonic() + 20
        while not all(listening(p) for p in ports):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv[0]} did not start: {self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    def log_tail(self):
        try:
            return (Path(self.workdir) / self.log_name).read_text(errors="replace")[-600:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        for other in self.companions:
            other.stop()


class Target:
    name = "?"
    #: load generator subscriber kind: "ws" or "tcp"
    sub = "ws"
    path_fmt = "/ws?room=%s"
    #: Debian packages the target needs (a test that requires it: scripts/apt-deps.d/bench.txt)
    packages = ()

    def available(self):
        """None if runnable here, else the reason it is not."""
        return None

    def start(self, workdir, framing="lines"):
        """Start a server; return (server, ws_addr, source_spec, room_names or None)."""
        raise NotImplementedError


class _PyRelay(Target):
    script = None

    def available(self):
        if not (ROOT / self.script).exists():
            return f"{self.script} not found"
        return None

    def extra_args(self):
        return []

    def start(self, workdir, framing="lines"):
        tcp, ws = free_port(), free_port()
        argv = [sys.executable, str(ROOT / self.script), "--tcp-host", "127.0.0.1",
                "--tcp-port", str(tcp), "--ws-host", "127.0.0.1", "--ws-port", str(ws),
                "--log-level", "warning", "--max-subscribers-per-room", "20000",
                "--subscriber-buffer-bytes", str(SUBSCRIBER_BUFFER), "--framing", framing]
        server = Server(argv + self.extra_args(), [tcp, ws], workdir)
        kind = "raw" if framing == "raw" else "lines"
        return server, f"127.0.0.1:{ws}", f"{kind}:127.0.0.1:{tcp}", None


class Sphincter(_PyRelay):
    name = "sphincter"
    script = "sphincter.py"


class SphincterRedis(Sphincter):
    """Sphincter in Redis mode (issue 21: its memory beside in-process mode), with a redis-server
    of its own on a free loopback port (stopped with it)."""
    name = "sphincter-redis"
    packages = ("redis-server",)
    #: subscriber handshakes in flight (wsbench --conc): below redis-py's pool (bench/cluster.py CONC)
    conc = 64

    def __init__(self):
        self.redis_url = None

    def available(self):
        if not shutil.which("redis-server"):
            return "redis-server not installed (apt-get install redis-server)"
        return super().available()

    def extra_args(self):
        return ["--redis-url", self.redis_url]

    def start(self, workdir, framing="lines"):
        port = free_port()
        redis = Server([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--daemonize", "no"], [port], workdir,
                       log_name="redis.log")
        self.redis_url = "redis://127.0.0.1:%d/0" % port
        try:
            started = super().start(workdir, framing)
        except BaseException:
            redis.stop()
            raise
        started[0].companions.append(redis)
        deadline = time.monotonic() + 20         # its sources are refused until Redis answers it
        while not _healthy(started[1]):
            if time.monotonic() > deadline:
                started[0].stop()
                raise RuntimeError("sphincter-redis: /healthz never ok: %s" % started[0].log_tail())
            time.sleep(0.05)
        return started


def _healthy(ws):
    try:
        with urllib.request.urlopen("http://%s/healthz" % ws, timeout=2) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


class AsyncioRelay(_PyRelay):
    name = "asyncio"
    script = "bench/baselines/asyncio_relay.py"

    def available(self):
        try:
            import websockets  # noqa: F401
        except ImportError:
            return "python package websockets missing (pip install -r requirements-bench.txt)"
        return super().available()


class AsyncioBroadcast(AsyncioRelay):
    name = "asyncio-broadcast"

    def extra_args(self):
        return ["--broadcast"]


NGINX_CONF = """\
load_module {module};
worker_processes {workers};
worker_rlimit_nofile 19000;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 18000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  nchan_max_reserved_memory 256M;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /pub {{
      nchan_publisher http;
      nchan_channel_id $arg_id;
      # >= the closed loop's window (see docs/BENCHMARKS.md about nchan's occasional held tail)
      nchan_message_buffer_length 1024;
      nchan_message_timeout 30s;
    }}
    location = /ws {{
      nchan_subscriber websocket;
      nchan_channel_id $arg_room;
    }}
  }}
}}
"""


class Nchan(Target):
    name = "nchan"
    packages = ("nginx", "libnginx-mod-nchan")
    #: nginx worker processes; 1 = one core, like Sphincter's single process
    workers = 1

    def available(self):
        if not shutil.which("nginx"):
            return "nginx not installed (apt-get install nginx libnginx-mod-nchan)"
        if not NCHAN_MODULE.exists():
            return "nchan module missing (apt-get install libnginx-mod-nchan)"
        return None

    def start(self, workdir, framing="lines"):
        port = free_port()
        conf = Path(workdir) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(module=NCHAN_MODULE, workers=self.workers,
                                          d=workdir, port=port))
        server = Server([shutil.which("nginx"), "-c", str(conf), "-p", str(workdir)], [port], workdir)
        rooms = ",".join(f"ch{os.getpid()}x{time.monotonic_ns() % 10**9}r{i}" for i in range(256))
        return server, f"127.0.0.1:{port}", f"post:127.0.0.1:{port}", rooms


# ---- tunnel targets: 1 source -> 1 subscriber, raw bytes ----------------------------------------

class SphincterRaw(Sphincter):
    name = "sphincter"

    def start(self, workdir, framing="raw"):
        return super().start(workdir, "raw")


class SphincterFlowOff(Sphincter):
    """Sphincter with --flow-control off (issue 9): the source is read freely, as before."""
    name = "sphincter-flow-off"

    def extra_args(self):
        return ["--flow-control", "off"]


class SphincterRawFlowOff(SphincterFlowOff):
    def start(self, workdir, framing="raw"):
        return super().start(workdir, "raw")


class AsyncioRaw(AsyncioRelay):
    name = "asyncio"

    def start(self, workdir, framing="raw"):
        return super().start(workdir, "raw")


class Websockify(Target):
    name = "websockify"
    path_fmt = "/"

    def _exe(self):
        exe = Path(sys.executable).parent / "websockify"
        return str(exe) if exe.exists() else shutil.which("websockify")

    def available(self):
        return None if self._exe() else "websockify missing (pip install -r requirements-bench.txt)"

    def start(self, workdir, framing="raw"):
        ws, src = free_port(), free_port()
        server = Server([self._exe(), f"127.0.0.1:{ws}", f"127.0.0.1:{src}"], [ws], workdir)
        return server, f"127.0.0.1:{ws}", f"listen:{src}", None


class Socat(Target):
    name = "socat"
    packages = ("socat",)
    sub = "tcp"

    def available(self):
        return None if shutil.which("socat") else "socat not installed (apt-get install socat)"

    def start(self, workdir, framing="raw"):
        front, src = free_port(), free_port()
        server = Server([shutil.which("socat"), "-b", "65536",
                         f"TCP-LISTEN:{front},bind=127.0.0.1,reuseaddr",
                         f"TCP:127.0.0.1:{src}"], [front], workdir)
        return server, f"127.0.0.1:{front}", f"listen:{src}", None


RELAYS = {"sphincter": Sphincter(), "asyncio": AsyncioRelay(), "nchan": Nchan(),
          "sphincter-redis": SphincterRedis(),
          "asyncio-broadcast": AsyncioBroadcast(), "sphincter-flow-off": SphincterFlowOff()}
TUNNELS = {"sphincter": SphincterRaw(), "asyncio": AsyncioRaw(), "websockify": Websockify(),
           "socat": Socat(), "sphincter-flow-off": SphincterRawFlowOff()}


#: where ``sphincter@REV`` targets are materialised, one folder per commit (bench/.gitignore)
REVS_DIR = ROOT / "bench" / "build" / "revs"


def resolve_rev(rev):
    """The full commit id of git revision *rev* (HEAD, a branch, a short id) in this checkout."""
    p = subprocess.run(["git", "rev-parse", "--verify", "--quiet", rev + "^{commit}"], cwd=str(ROOT),
                       capture_output=True, text=True)
    if p.returncode or not p.stdout.strip():
        raise ValueError(f"not a git revision here: {rev}")
    return p.stdout.strip()


def materialise(rev):
    """``sphincter.py`` and ``sphincter_lib/`` of commit *rev*, extracted once (``git archive``) to
    bench/build/revs/<commit>/; returns that folder. It runs with this venv's interpreter."""
    sha = resolve_rev(rev)
    dest = REVS_DIR / sha
    if not (dest / "sphincter.py").exists():
        REVS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=str(REVS_DIR))
        archive = subprocess.Popen(["git", "archive", "--format=tar", sha, "sphincter.py",
                                    "sphincter_lib"], cwd=str(ROOT), stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout)
        archive.stdout.close()
        if archive.wait(60) or tar.returncode:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"git archive {sha} failed")
        try:
            os.rename(tmp, dest)
        except OSError:              # another run made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


class RevSphincter(Sphincter):
    """``sphincter@REV``: Sphincter as of git revision REV (old vs new, side by side)."""

    def __init__(self, rev, raw=False):
        self.rev, self.raw = rev, raw
        self.name = "sphincter@" + rev
        self.tree = self.commit = None

    def available(self):
        try:
            self.tree = materialise(self.rev)
        except (ValueError, RuntimeError, OSError) as e:
            return str(e)
        self.commit = self.tree.name
        self.script = str(self.tree / "sphincter.py")
        return None

    def start(self, workdir, framing="lines"):
        return super().start(workdir, "raw" if self.raw else framing)


def relay(name, raw=None):
    """A relay target by name; ``sphincter@path/to/launcher.py`` runs Sphincter through a
    launcher script (same CLI) that applies a candidate change, to measure it side by side;
    ``sphincter@REV`` (anything else after the @: HEAD, 802e3cc, a branch) runs Sphincter as of
    that git revision (see :func:`materialise`)."""
    if name.startswith("sphincter@"):
        what = name.split("@", 1)[1]
        if not what.endswith(".py"):
            return RevSphincter(what, raw=bool(raw))
        t = Sphincter() if raw is None else SphincterRaw()
        t.script = what
        t.name = "sphincter@" + Path(t.script).stem
        return t
    return (TUNNELS if raw else RELAYS)[name]


def tunnel(name):
    return relay(name, raw=True)


def has_tunnel(name):
    """Whether the relay target *name* also has a tunnel form (nchan has none)."""
    return name.startswith("sphincter@") or name in TUNNELS


def workdir():
    return tempfile.mkdtemp(prefix="sphincter-bench-")
