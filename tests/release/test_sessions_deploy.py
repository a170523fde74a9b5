"""Session rooms behind the shipped configuration for several nodes (issue 20, "Several nodes"):
a real ``redis-server``, two real nodes (``--sessions on --source-proxy-protocol on``), nginx with
the shipped ``conf/nginx-cluster.conf`` + ``conf/nginx-cluster-stream.conf`` (rendered as
tests/release/test_cluster_deploy.py does), the real ``sphincter connect --sessions`` dialing
nginx's stream port. nginx balances the agent's links (``least_conn``) over both nodes, so its
control link is on one node and its data links land on either: clients on both nodes (and one
through nginx's wss port) each get their own session, bytes exact both ways; a data link that
landed on the other node is forwarded there (with a PROXY header: the nodes trust 127.0.0.1)."""

import hashlib
import os
import ssl
import subprocess
import sys

import gevent
import pytest
import websocket
from gevent.server import StreamServer

from conftest import unit, wait_for
from flow_util import ROOT, RelayProcess
from nginxkit import free_port
from rediskit import RedisServer
from test_cluster_deploy import Nginx, nginx_dir, render, self_signed
from testkit import stop_process

pytestmark = pytest.mark.timeout(120)


class Greeter:
    """Speaks first (``HELLO <n>``), then echoes."""

    def __init__(self):
        self.count = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()

    def handle(self, sock, address):
        self.count += 1
        try:
            sock.sendall(b"HELLO %02d\n" % self.count)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        finally:
            sock.close()


def read_exactly(ws, n):
    got = bytearray()
    while len(got) < n:
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY, (opcode, data[:80])
        got += data
    return bytes(got)


def test_sessions_through_the_shipped_nginx_configs(tmp_path):
    d = nginx_dir(tmp_path)
    cert, key = self_signed(d)
    port_tls, port_tcp = free_port(), free_port()
    stop = []
    service = Greeter()
    try:
        redis = RedisServer()
        stop.append(redis)
        nodes = []
        for name in ("n1", "n2"):
            node = RelayProcess("--redis-url", redis.url, "--node-name", name, "--source-proxy-protocol", "on",
                                "--sessions", "on", "--log-level", "debug")
            stop.append(node)
            nodes.append(node)
        conf = render(d, [n.ws[1] for n in nodes], [n.tcp[1] for n in nodes], port_tls, port_tcp, cert, key)
        stop.append(Nginx(conf, d, [port_tls]))
        log = open(str(tmp_path / "agent.log"), "w")
        agent = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "sphincter.py"), "connect", "--relay", "127.0.0.1:%d" % port_tcp,
             "--from", "tcp:127.0.0.1:%d" % service.server.address[1], "--sessions", "--stats-interval", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        try:
            with gevent.Timeout(unit(15), AssertionError("no banner")):
                code = agent.stdout.readline().decode().split()[1]
                room_key = agent.stdout.readline().decode().split()[1]
            urls = ["ws://%s:%d/ws?room=%s&key=%s" % (n.ws + (code, room_key)) for n in nodes] * 3
            urls.append("wss://127.0.0.1:%d/ws?room=%s&key=%s" % (port_tls, code, room_key))
            clients, greetings = [], set()
            for url in urls:                   # one at a time: nginx spreads the data links
                ws = websocket.create_connection(url, timeout=unit(15), sslopt={"cert_reqs": ssl.CERT_NONE})
                clients.append(ws)
                greeting = read_exactly(ws, 9)
                assert greeting.startswith(b"HELLO "), greeting
                greetings.add(greeting)
            assert len(greetings) == len(urls)                    # each its own connection
            for ws in clients:
                data = os.urandom(100000)
                ws.send_binary(data)
                assert hashlib.sha256(read_exactly(ws, len(data))).digest() == hashlib.sha256(data).digest()
                ws.close()
            wait_for(lambda: any("forwarded to node" in n.log() for n in nodes), unit(10),
                     what="a data link forwarded between the nodes")
            assert not any("Traceback" in n.log() for n in nodes)
        finally:
            stop_process(agent)
            agent.stdout.close()
            log.close()
    finally:
        service.server.stop()
        for thing in reversed(stop):
            if isinstance(thing, RelayProcess):
                print("--- node log:\n%s" % thing.log()[-4000:])
            if isinstance(thing, RedisServer):
                thing.close()
            else:
                thing.stop()
