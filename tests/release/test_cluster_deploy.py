"""Deployment of several nodes (issue 13, "Deployment"): the shipped pieces, with real programs.

- ``conf/sphincter@.service``: installed by install.sh (into a DESTDIR) beside the plain unit,
  and clean for ``systemd-analyze verify`` (as an instance: a template verifies only as one)
  and ``systemd-analyze security``; install.sh checks each instance's settings and refuses a bad
  one; uninstall.sh removes the template and, with --purge, the instance files.
- ``conf/nginx-cluster.conf`` + ``conf/nginx-cluster-stream.conf``: ``nginx -t`` with the stream
  module, and end to end: a real ``redis-server``, two real nodes
  (``python sphincter.py --redis-url ... --source-proxy-protocol on``), nginx with the shipped
  configs (only ports, certificate and log paths replaced): a source through nginx's stream port
  (known to its node by its own address, from nginx's PROXY header), subscribers through
  nginx's wss port and on each node directly (so one of them is on the node without the source:
  its messages come through Redis), every one receives the source's lines.

Needs systemd-analyze, nginx with its stream module (Debian: libnginx-mod-stream), openssl and
redis-server (scripts/apt-deps.d/); outside CI a missing one skips, under CI=true it fails.
install.sh needs a ``sphincter`` binary beside it: a two-line wrapper around this checkout's
``sphincter.py`` stands in for the one-file build (tests/release/test_release.py runs the real one).
"""
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import urllib.request

import pytest
import websocket

from conftest import unit, wait_for
from flow_util import ROOT, RelayProcess
from nginxkit import free_port, nginx_binary, stream_module
from testkit import require_program, stop_process
from rediskit import RedisServer

pytestmark = pytest.mark.timeout(180)

RELEASE_FILES = ("install.sh", "uninstall.sh", "conf/sphincter.env", "conf/sphincter.service",
                 "conf/sphincter@.service")
EXPOSURE_MAX = 2.0


def run(cmd, check=True, **kw):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=unit(120), **kw)
    if check:
        assert proc.returncode == 0, "%s: %s%s" % (cmd, proc.stdout, proc.stderr)
    return proc


# --- the template unit, install.sh and uninstall.sh ------------------------------------------

@pytest.fixture
def release(tmp_path):
    """A directory laid out like the unpacked release, with a wrapper as its binary."""
    rel = tmp_path / "release"
    rel.mkdir()
    for name in RELEASE_FILES:
        shutil.copy(os.path.join(ROOT, name), str(rel / os.path.basename(name)))
    binary = rel / "sphincter"
    binary.write_text("#!/bin/sh\nexec %s %s \"$@\"\n" % (sys.executable, os.path.join(ROOT, "sphincter.py")))
    binary.chmod(0o755)
    return rel


def tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_install_sh_installs_the_template_and_checks_each_instance(release, tmp_path):
    dest = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(dest))
    instances = dest / "etc/sphincter/instances"
    instances.mkdir(parents=True)
    (instances / "1.env").write_text("SPHINCTER_TCP_PORT=9001\nSPHINCTER_WS_PORT=8081\n")
    (instances / "2.env").write_text("SPHINCTER_TCP_PORT=9002\nSPHINCTER_WS_PORT=8082\n")

    out = run(["sh", str(release / "install.sh")], env=env).stdout
    assert "sphincter@1: sphincter: configuration OK" in out, out
    assert "sphincter@2: sphincter: configuration OK" in out, out
    assert tree(str(dest)) == ["etc/default/sphincter", "etc/sphincter/instances/1.env",
                               "etc/sphincter/instances/2.env", "etc/systemd/system/sphincter.service",
                               "etc/systemd/system/sphincter@.service", "usr/local/bin/sphincter"]
    mode = stat.S_IMODE(os.stat(str(dest / "etc/systemd/system/sphincter@.service")).st_mode)
    assert mode == 0o644

    # a bad instance: refused before anything is touched, naming the instance and the file
    (dest / "etc/systemd/system/sphincter@.service").unlink()
    (instances / "2.env").write_text("SPHINCTER_WS_PORT=99999\n")
    p = run(["sh", str(release / "install.sh")], env=env, check=False)
    assert p.returncode != 0 and "sphincter@2" in p.stderr and "2.env" in p.stderr, p.stderr
    assert "nothing was installed" in p.stderr
    assert not (dest / "etc/systemd/system/sphincter@.service").exists()
    # an instance name that cannot be a node name (the template makes it HOSTNAME-NAME)
    (instances / "2.env").unlink()
    (instances / "a:b.env").write_text("SPHINCTER_TCP_PORT=9003\n")
    p = run(["sh", str(release / "install.sh")], env=env, check=False)
    assert p.returncode != 0 and "node-name" in p.stderr, p.stderr
    (instances / "a:b.env").unlink()
    run(["sh", str(release / "install.sh")], env=env)

    run(["sh", str(release / "uninstall.sh")], env=env)
    assert tree(str(dest)) == ["etc/default/sphincter", "etc/sphincter/instances/1.env"]
    run(["sh", str(release / "uninstall.sh"), "--purge"], env=env)
    assert tree(str(dest)) == [] and not (dest / "etc/sphincter").exists()


def test_template_unit_verifies_as_an_instance(release, tmp_path):
    require_program("systemd-analyze")
    dest = tmp_path / "root"
    run(["sh", str(release / "install.sh")], env=dict(os.environ, DESTDIR=str(dest)))
    # verify resolves dependencies (sysinit.target ...) inside --root: the host's unit files.
    shutil.copytree("/usr/lib/systemd/system", str(dest / "usr/lib/systemd/system"), symlinks=True)
    for name in ("sphincter@1.service", "sphincter@node-a.service", "sphincter.service"):
        v = run(["systemd-analyze", "verify", "--root=%s" % dest, "/etc/systemd/system/" + name],
                check=False)
        assert v.returncode == 0 and not (v.stdout + v.stderr).strip(), name + v.stdout + v.stderr
    s = run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
             str(dest / "etc/systemd/system/sphincter@.service")], check=False)
    m = re.search(r"Overall exposure level for sphincter@\w*\.service: (\d+\.\d+)", s.stdout)
    assert m and float(m.group(1)) <= EXPOSURE_MAX, s.stdout + s.stderr
    # the same hardening as the plain unit: only the head, [Unit] and the environment differ
    with open(os.path.join(ROOT, "conf", "sphincter.service")) as f:
        plain = f.read().split("[Service]", 1)[1]
    with open(os.path.join(ROOT, "conf", "sphincter@.service")) as f:
        template = f.read().split("[Service]", 1)[1]
    strip = re.compile(r"^(#.*|Environment=.*|EnvironmentFile=/etc/sphincter/.*)\n", re.M)
    assert strip.sub("", template) == strip.sub("", plain)


# --- nginx in front of the nodes -------------------------------------------------------------

MAIN_CONF = """\
{load_module}
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    include {d}/sphincter-cluster.conf;
}}
include {d}/sphincter-stream.conf;
"""


def substitute(text, subs, what):
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n >= 1, "the shipped %s no longer has %r" % (what, pattern)
    return text


def render(directory, ws_ports, tcp_ports, port_tls, port_tcp, cert, key):
    """The shipped configs with only site-specific lines replaced: nodes, listen ports,
    certificate, log path. Returns the top-level nginx.conf."""
    d = str(directory)
    with open(os.path.join(ROOT, "conf", "nginx-cluster.conf")) as f:
        http = f.read()
    with open(os.path.join(ROOT, "conf", "nginx-cluster-stream.conf")) as f:
        stream = f.read()
    ws_servers = "".join("    server 127.0.0.1:%d;\n" % p for p in ws_ports)
    tcp_servers = "".join("        server 127.0.0.1:%d;\n" % p for p in tcp_ports)
    http = substitute(http, [
        (r"(?:^    server 127\.0\.0\.1:808\d;\n)+", ws_servers),
        (r"^\s*listen 443 ssl;$", "    listen 127.0.0.1:%d ssl;" % port_tls),
        (r"^\s*listen \[::\]:443 ssl;$", ""),
        (r"^\s*ssl_certificate .*;$", "    ssl_certificate %s;" % cert),
        (r"^\s*ssl_certificate_key .*;$", "    ssl_certificate_key %s;" % key),
    ], "nginx-cluster.conf")
    stream = substitute(stream, [
        (r"(?:^        server 127\.0\.0\.1:900\d;\n)+", tcp_servers),
        (r"^\s*listen 9000 (.*);$", r"        listen 127.0.0.1:%d \1;" % port_tcp),
        (r"^\s*listen \[::\]:9000 .*;$", ""),
        (r"^(\s*access_log )/var/log/nginx/", r"\g<1>%s/" % d),
    ], "nginx-cluster-stream.conf")
    with open(os.path.join(d, "sphincter-cluster.conf"), "w") as f:
        f.write(http)
    with open(os.path.join(d, "sphincter-stream.conf"), "w") as f:
        f.write(stream)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(MAIN_CONF.format(d=d, load_module=stream_module()))
    return conf


def self_signed(directory):
    require_program("openssl")
    cert, key = os.path.join(str(directory), "cert.pem"), os.path.join(str(directory), "key.pem")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout", key, "-out", cert])
    return cert, key


def nginx_dir(tmp_path):
    d = tmp_path / "nginx"
    d.mkdir()
    os.chmod(str(d), 0o755)                      # nginx's workers may run as another user
    return d


def test_nginx_cluster_config_passes_nginx_t(tmp_path):
    d = nginx_dir(tmp_path)
    cert, key = self_signed(d)
    conf = render(d, [8081, 8082, 8083], [9001, 9002, 9003], free_port(), free_port(), cert, key)
    p = run([nginx_binary(), "-t", "-p", str(d), "-c", conf], check=False)
    assert p.returncode == 0 and "test is successful" in p.stderr, p.stderr
    # the routes and the two balancing policies survived the rendering
    with open(os.path.join(str(d), "sphincter-cluster.conf")) as f:
        http = f.read()
    assert "hash $arg_room consistent;" in http and http.count("server 127.0.0.1:808") == 6


class Nginx:
    def __init__(self, conf, directory, ports):
        self.dir = str(directory)
        self.proc = subprocess.Popen([nginx_binary(), "-p", self.dir, "-c", conf, "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

        def up():
            assert self.proc.poll() is None, "nginx exited: %s" % self.error_log()
            try:
                for port in ports:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, unit(15), what="nginx to listen", interval=0.05)

    def error_log(self):
        path = os.path.join(self.dir, "error.log")
        return open(path, errors="replace").read() if os.path.exists(path) else ""

    def stop(self):
        stop_process(self.proc)
        self.proc.stderr.close()


def recv_text(ws):
    """The next text message; a close frame fails the test with its code and reason."""
    opcode, data = ws.recv_data(control_frame=True)
    if opcode == websocket.ABNF.OPCODE_CLOSE:
        code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
        pytest.fail("subscriber closed: %s %s" % (code, data[2:].decode(errors="replace")))
    return data.decode()


def readline(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def cluster(tmp_path):
    """Redis, two nodes, nginx in front with the shipped configs: yields (nodes, tls port, tcp port)."""
    d = nginx_dir(tmp_path)
    cert, key = self_signed(d)
    port_tls, port_tcp = free_port(), free_port()
    stop = []
    try:
        redis = RedisServer()
        stop.append(redis)
        nodes = []
        for name in ("n1", "n2"):
            # the shipped stream config sends a PROXY header (nginx on 127.0.0.1 is trusted)
            node = RelayProcess("--redis-url", redis.url, "--node-name", name,
                                "--source-proxy-protocol", "on")
            stop.append(node)
            nodes.append(node)
        conf = render(d, [n.ws[1] for n in nodes], [n.tcp[1] for n in nodes], port_tls, port_tcp,
                      cert, key)
        # (a probe of the stream port would open a room: nginx binds all its ports before its
        # workers start, so the wss port answering is enough)
        stop.append(Nginx(conf, d, [port_tls]))
        yield nodes, port_tls, port_tcp
    finally:
        for thing in reversed(stop):
            if isinstance(thing, RelayProcess):
                print("--- node %s log:\n%s" % (thing.args[3], thing.log()[-3000:]))
            if isinstance(thing, RedisServer):
                thing.close()
            else:
                thing.stop()


def test_end_to_end_through_nginx_and_redis(cluster):
    nodes, port_tls, port_tcp = cluster
    tls = {"cert_reqs": ssl.CERT_NONE}

    # from another loopback address than nginx's: the node knows the source by it (PROXY header)
    source = socket.create_connection(("127.0.0.1", port_tcp), timeout=unit(10),
                                      source_address=("127.0.0.2", 0))
    line = readline(source)
    assert line.startswith(b"ROOM "), line
    code = line[5:].strip().decode()
    opened = "room %s opened by 127.0.0.2:%d via 127.0.0.1:" % (code, source.getsockname()[1])
    wait_for(lambda: any(opened in node.log() for node in nodes), unit(5), what=opened)

    # one subscriber through nginx (wss, hashed by room), one on each node directly: whichever
    # node the source landed on, one of the direct ones is on the other node (through Redis)
    subscribers = [websocket.create_connection("wss://127.0.0.1:%d/ws?room=%s" % (port_tls, code),
                                               timeout=unit(10), sslopt=tls)]
    for node in nodes:
        subscribers.append(websocket.create_connection("ws://%s:%d/ws?room=%s" % (node.ws + (code,)),
                                                       timeout=unit(10)))
    # a subscriber may join a moment after its node heard of the room: send until all have one
    received = [[] for _ in subscribers]
    n = 0

    def everyone_has_one():
        nonlocal n
        n += 1
        source.sendall(b"warm-up %d\n" % n)
        for ws, got in zip(subscribers, received):
            ws.settimeout(0.05)
            try:
                got.append(recv_text(ws))
            except websocket.WebSocketTimeoutException:
                pass
        return all(received)
    wait_for(everyone_has_one, unit(15), what="every subscriber's first message", interval=0.05)

    # from here on: every line, in order, once, on every subscriber
    lines = ["line %d" % i for i in range(50)]
    source.sendall("".join(x + "\n" for x in lines).encode())
    for i, ws in enumerate(subscribers):
        ws.settimeout(unit(10))
        got = []
        while len(got) < len(lines):
            msg = recv_text(ws)
            if not msg.startswith("warm-up"):
                got.append(msg)
        assert got == lines, "subscriber %d" % i
        ws.close()
    source.close()

    # /healthz through nginx: any node answers, and says which
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen("https://127.0.0.1:%d/healthz" % port_tls, timeout=unit(10),
                                context=ctx) as r:
        health = json.loads(r.read().decode())
    assert health.get("node") in ("n1", "n2"), health


# --- docs/REDIS.md ---------------------------------------------------------------------------

def test_redis_capacity_tables_in_the_docs_are_the_scripts_output():
    """docs/REDIS.md shows what scripts/redis_capacity.py prints (regenerate both together)."""
    out = run([sys.executable, os.path.join(ROOT, "scripts", "redis_capacity.py")]).stdout
    with open(os.path.join(ROOT, "docs", "REDIS.md")) as f:
        doc = f.read()
    m = re.search(r"<!-- generated by scripts/redis_capacity.py[^\n]*-->\n(.*?)<!-- end of generated part -->",
                  doc, re.S)
    assert m, "the generated part of docs/REDIS.md is gone"
    assert m.group(1).strip() == out.strip(), "run scripts/redis_capacity.py and paste its output"
