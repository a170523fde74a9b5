"""Session rooms across nodes (issue 20, Redis mode): one real ``redis-server``, two real nodes
(``python sphincter.py --redis-url ... --sessions on``), the real ``sphincter connect --sessions``
or a raw-socket agent, real WebSocket clients. The agent's control link is on node 1, every
client on node 2: Redis carries the signalling, the data link goes to node 2 (directly, or
through node 1 when it lands there: the forwarded hop)."""

import hashlib
import os
import socket

import gevent
import pytest
import websocket

from conftest import unit, wait_for
from rediskit import Cluster
from test_pipe import relays  # noqa: F401  (the fixture)
from test_sessions import Agent, GreetingEcho, client, close_code, read_exactly

pytestmark = pytest.mark.timeout(90)

OPEN_TIMEOUT = 1.5
#: --max-sessions-per-room: counted by the room's node, whichever node each client is on
PER_ROOM = 2


#: a named session room (no write=KEY: every node derives the same key from the token)
TOKEN = "desk-token-0123456789"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    rooms = tmp_path_factory.mktemp("rooms") / "rooms.txt"
    rooms.write_text("desk %s sessions=on\n" % TOKEN)
    c = Cluster()
    try:
        yield c.nodes(2, "--sessions", "on", "--session-open-timeout", str(OPEN_TIMEOUT),
                      "--session-open-burst", "100", "--redis-lease", "2",
                      "--max-sessions-per-room", str(PER_ROOM), "--rooms-file", str(rooms))
    finally:
        c.close()


class RawAgent:
    """A control link written by hand: ``SESSIONS``, then the banner; ``open()`` reads one
    ``OPEN <SID>`` line."""

    def __init__(self, node, token=None):
        self.control = socket.create_connection(node.tcp, timeout=unit(10))
        self.control.sendall((b"AUTH %s\n" % token.encode() if token else b"") + b"SESSIONS\n")
        self.f = self.control.makefile("rb")
        self.code = self.f.readline().split()[1].decode()
        self.key = self.f.readline().split()[1].decode()
        assert self.f.readline() == b"SESSIONS\n"

    def open(self):
        line = self.f.readline()
        assert line.startswith(b"OPEN "), line
        return line.split()[1].decode()

    def close(self):
        self.f.close()
        self.control.close()


def test_agent_on_node_1_client_on_node_2_bytes_both_ways(nodes, tmp_path):
    n1, n2 = nodes
    service = GreetingEcho()
    agent = Agent(tmp_path, n1, service.port)
    try:
        code, key = agent.banner()
        ws = client(n2, code, key)
        assert read_exactly(ws, 8) == b"HELLO 1\n"           # the service speaks first
        data = os.urandom(600000)
        sender = gevent.spawn(lambda: [ws.send_binary(data[i:i + 60000]) for i in range(0, len(data), 60000)])
        echoed = read_exactly(ws, len(data))
        sender.get()
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        ws2 = client(n2, code, key)                          # its own connection to the service
        assert read_exactly(ws2, 8) == b"HELLO 2\n"
        ws.close()                                           # the client closes: the service gets EOF
        assert service.ended[1].wait(unit(10))
        assert service.received[1] == data
        payload = os.urandom(100000) + b"BYE\n"              # the service closes: every byte, then 1000
        ws2.send_binary(payload)
        assert read_exactly(ws2, len(payload) + len(service.tail)) == payload + service.tail
        assert close_code(ws2) == (1000, "service closed")
        wait_for(lambda: "session %s." % code in n2.log(), timeout=unit(10), what="node 2's session log line")
    finally:
        agent.stop()
        service.stop()
    assert "Traceback" not in agent.log(), agent.log()
    wait_for(lambda: client_refused(n2, code, key) == 4404, timeout=unit(10),
             what="the room gone on node 2 once its agent left")


def client_refused(node, code, key):
    ws = client(node, code, key)
    try:
        return close_code(ws)[0]
    finally:
        ws.close()


def test_a_data_link_landing_on_the_wrong_node_is_forwarded(nodes):
    n1, n2 = nodes
    agent = RawAgent(n1)
    try:
        ws = client(n2, agent.code, agent.key)
        sid = agent.open()
        data_link = socket.create_connection(n1.tcp, timeout=unit(10))    # node 1: not the client's
        greeting = os.urandom(5000)
        data_link.sendall(b"SESSION %s\n" % sid.encode() + greeting)
        assert read_exactly(ws, len(greeting)) == greeting
        up = os.urandom(300000)
        ws.send_binary(up)
        got = bytearray()
        while len(got) < len(up):
            chunk = data_link.recv(65536)
            assert chunk, "the forwarded data link ended early"
            got += chunk
        assert bytes(got) == up
        data_link.shutdown(socket.SHUT_WR)                  # the service closes
        assert close_code(ws)[0] == 1000
        data_link.close()
        wait_for(lambda: "forwarded to node n2" in n1.log(), timeout=unit(10), what="node 1's hop log line")
    finally:
        agent.close()


def test_wrong_key_4403_refused_4502_silent_4504_across_nodes(nodes):
    n1, n2 = nodes
    agent = RawAgent(n1)
    try:
        for k in ("", "wrong" * 5):
            assert client_refused(n2, agent.code, k) == 4403
        ws = client(n2, agent.code, agent.key)               # the agent refuses
        sid = agent.open()
        agent.control.sendall(b"REFUSED %s connection refused\n" % sid.encode())
        got = close_code(ws)
        assert got == (4502, "connection refused"), got
        ws = client(n2, agent.code, agent.key)               # the agent does not answer
        agent.open()
        with gevent.Timeout(unit(OPEN_TIMEOUT + 5)):
            assert close_code(ws)[0] == 4504
    finally:
        agent.close()


def test_the_per_room_limit_counts_every_nodes_sessions(nodes):
    n1, n2 = nodes
    agent = RawAgent(n1)
    links = []
    try:
        def session(node):
            ws = client(node, agent.code, agent.key)
            sid = agent.open()
            link = socket.create_connection(node.tcp, timeout=unit(10))
            link.sendall(b"SESSION %s\nhi" % sid.encode())
            links.append(link)
            assert read_exactly(ws, 2) == b"hi"
            return ws
        first, second = session(n2), session(n1)            # one client on each node: the room is full
        for node in (n2, n1):
            got = close_code(client(node, agent.code, agent.key))
            assert got == (4429, "too many sessions"), got
        first.close()                                       # node 2 tells node 1 its session ended
        links[0].close()
        third = wait_for(lambda: _opened(n2, agent, links), timeout=unit(10), what="a session again")
        third.close()
        second.close()
    finally:
        for link in links:
            link.close()
        agent.close()


def _opened(node, agent, links):
    """A session of ``agent``'s room for a client on ``node``, or None while it is refused 4429."""
    ws = client(node, agent.code, agent.key)
    ws.settimeout(0.3)
    try:
        frame = ws.recv_frame()                 # refused: a close frame comes at once
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE and frame.data[:2] == (4429).to_bytes(2, "big"), frame
        ws.close()
        return None
    except websocket.WebSocketTimeoutException:
        pass                                    # waiting for the agent: it was let through
    ws.settimeout(unit(10))
    sid = agent.open()
    link = socket.create_connection(node.tcp, timeout=unit(10))
    link.sendall(b"SESSION %s\nok" % sid.encode())
    links.append(link)
    assert read_exactly(ws, 2) == b"ok"
    return ws


def session(node, agent, key=None, data=b"hi"):
    """A client of ``agent``'s room on ``node``, its data link straight to ``node``."""
    ws = client(node, agent.code, key or agent.key)
    link = socket.create_connection(node.tcp, timeout=unit(10))
    link.sendall(b"SESSION %s\n" % agent.open().encode() + data)
    assert read_exactly(ws, len(data)) == data
    return ws, link


def test_a_named_session_room_has_one_agent_relay_wide(nodes):
    n1, n2 = nodes
    first = RawAgent(n1, TOKEN)
    second = None
    try:
        assert first.code == "desk"
        assert close_code(client(n2, "desk", "wrong-key-0123456789"))[0] == 4403
        ws, link = session(n2, first)                                # agent on node 1, client on node 2
        second = RawAgent(n2, TOKEN)                                 # a newer agent, on node 2
        assert second.key == first.key                               # one key, whichever node
        assert first.f.readline() == b"ERROR replaced by a newer source\n"
        ws.send_binary(b"goes on")                                   # a session in progress goes on
        assert link.recv(100) == b"goes on"
        ws2, link2 = session(n1, second)                             # client on node 1: the new agent
        for c in (ws, link, ws2, link2):
            c.close()
        second.close()
        for node in (n1, n2):
            wait_for(lambda: close_code(client(node, "desk", first.key))[0] == 4502, timeout=unit(10),
                     what="no agent for the room on %s" % node.name)
    finally:
        first.close()
        if second is not None:
            second.close()


def test_a_rooms_file_of_session_rooms_only_reads_the_auth_line(relays, tmp_path):
    """(One node.) With no named broadcast room the AUTH line was read as data: the agent got a
    broadcast room and its token became that room's first message."""
    rooms = tmp_path / "rooms.txt"
    rooms.write_text("desk %s sessions=on\n" % TOKEN)
    agent = RawAgent(relays("--rooms-file", str(rooms)), TOKEN)
    assert agent.code == "desk"
    agent.close()


def test_sessions_need_a_node_address_one_line(tmp_path):
    import subprocess
    import sys
    from test_pipe import ENTRY, clean_env
    out = subprocess.run([sys.executable, ENTRY, "--redis-url", "redis://127.0.0.1:1/0", "--sessions", "on",
                          "--check-config"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=clean_env(), timeout=unit(30))
    text = out.stdout.decode()
    assert out.returncode != 0 and text.count("\n") == 1 and "--node-address" in text, text


def test_the_agents_node_dies(tmp_path):
    """Its sessions that went through it end; one whose data link went straight to the client's
    node goes on; new clients get 4502 at once, then 4404 once the room's record lapsed."""
    c = Cluster()
    try:
        n1, n2 = c.nodes(2, "--sessions", "on", "--redis-lease", "1")
        agent = RawAgent(n1)
        sessions = []
        for via in (n2, n1):                                 # straight to node 2; through node 1
            ws = client(n2, agent.code, agent.key)
            link = socket.create_connection(via.tcp, timeout=unit(10))
            link.sendall(b"SESSION %s\nhi" % agent.open().encode())
            assert read_exactly(ws, 2) == b"hi"
            sessions.append((ws, link))
        n1.kill()
        assert close_code(sessions[1][0])[0] == 1000         # its data link ended with node 1
        sessions[0][0].send_binary(b"still here")
        got = bytearray()
        while len(got) < 10:
            got += sessions[0][1].recv(100)
        assert bytes(got) == b"still here"
        assert client_refused(n2, agent.code, agent.key) in (4502, 4404)
        wait_for(lambda: client_refused(n2, agent.code, agent.key) == 4404, timeout=unit(10),
                 what="the room's record lapsed")
        for ws, link in sessions:
            ws.close()
            link.close()
        agent.close()
    finally:
        c.close()


def test_a_dead_client_nodes_sessions_stop_counting(tmp_path):
    """The room's node counts a session of another node's client until that node says it ended,
    or its address lapsed in Redis (it died)."""
    c = Cluster()
    try:
        n1, n2 = c.nodes(2, "--sessions", "on", "--redis-lease", "1", "--max-sessions-per-room", "1")
        agent = RawAgent(n1)
        links = []
        ws = client(n2, agent.code, agent.key)
        link = socket.create_connection(n2.tcp, timeout=unit(10))
        link.sendall(b"SESSION %s\nhi" % agent.open().encode())
        links.append(link)
        assert read_exactly(ws, 2) == b"hi"
        assert client_refused(n1, agent.code, agent.key) == 4429
        n2.kill()
        ws.close()
        third = wait_for(lambda: _opened(n1, agent, links), timeout=unit(10), what="the dead node's session dropped")
        third.close()
        for link in links:
            link.close()
        agent.close()
    finally:
        c.close()


def test_session_room_across_nodes_on_the_cluster(redis_cluster, tmp_path):
    """Issue 20 on a Redis Cluster: the agent on node 1, clients on nodes 2 and 3 (signalled
    through the Cluster), each its own connection to a service that greets first, bytes exact."""
    import hashlib
    import os
    n1, n2, n3 = redis_cluster.nodes(3, "--sessions", "on", "--session-open-timeout", "5")
    service = GreetingEcho()
    agent = Agent(tmp_path, n1, service.port)
    try:
        code, key = agent.banner()
        for i, node in enumerate((n2, n3, n1)):
            ws = client(node, code, key)
            assert read_exactly(ws, 8) == b"HELLO %d\n" % (i + 1)
            data = os.urandom(200000)
            ws.send_binary(data)
            assert hashlib.sha256(read_exactly(ws, len(data))).digest() == hashlib.sha256(data).digest()
            ws.close()
    finally:
        agent.stop()
        service.stop()
    for node in (n1, n2, n3):
        assert "Traceback" not in node.log(), node.log_tail(30)
