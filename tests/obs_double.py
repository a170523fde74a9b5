"""A test double of obs-websocket 5 (OBS Studio's WebSocket server), written from its protocol
document: the ``obswebsocket.json`` subprotocol, Hello (with an authentication challenge when a
password is set), Identify checked (close 4009 on a wrong or missing authentication string,
4007 for anything before Identify), Identified, events (op 5) to identified clients, requests
(op 6) answered with RequestResponse (op 7). Scene state: ``GetCurrentProgramScene`` and
``SetCurrentProgramScene`` (which emits ``CurrentProgramSceneChanged``); unknown requests get
status 204. Built on gevent and sphincter's own sans-IO frame code (server side).

    double = ObsDouble(password="secret").start()   # .port
    double.emit("CurrentProgramSceneChanged", {"sceneName": "Live"})
    double.stop(); double.start()                    # OBS restarting (same port)
"""

import base64
import hashlib
import json
import os
import socket

import gevent
import gevent.event
from gevent.server import StreamServer

from sphincter_lib.proto import frames as wsproto

SCENES_INTENT = 1 << 2


def expected_auth(password, salt, challenge):
    secret = base64.b64encode(hashlib.sha256((password + salt).encode()).digest())
    return base64.b64encode(hashlib.sha256(secret + challenge.encode()).digest()).decode()


class _Client:
    def __init__(self, sock):
        self.sock = sock
        self.parser = wsproto.FrameParser(max_message_bytes=1 << 24)
        self.identified = False
        self.subscriptions = None

    def send_json(self, obj):
        frame = wsproto.encode_message(json.dumps(obj).encode(), True)
        if isinstance(frame, tuple):
            frame = frame[0] + frame[1]
        self.sock.sendall(frame)

    def close(self, code, reason=""):
        try:
            self.sock.sendall(wsproto.encode_close(code, reason))
        except OSError:
            pass


class ObsDouble:
    def __init__(self, password=None, port=0, scene="Intro"):
        self.password = password
        self.port = port
        self.scene = scene
        self.clients = []
        self.requests = []            # every request (op 6 data) received
        self.auth_failures = 0
        self.identified = gevent.event.Event()
        self.server = None

    # -- control ----------------------------------------------------------------------
    def start(self):
        self.server = StreamServer(("127.0.0.1", self.port), self._handle)
        self.server.start()
        self.port = self.server.server_port
        return self

    def stop(self):
        """OBS quitting: close every client, stop listening."""
        if self.server is not None:
            self.server.stop(timeout=0)
            self.server = None
        for client in list(self.clients):
            try:
                client.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.clients = []
        self.identified.clear()

    def emit(self, event_type, data, intent=SCENES_INTENT):
        """An event to every identified client subscribed to ``intent``."""
        msg = {"op": 5, "d": {"eventType": event_type, "eventIntent": intent, "eventData": data}}
        for client in list(self.clients):
            if client.identified and client.subscriptions & intent:
                try:
                    client.send_json(msg)
                except OSError:
                    pass

    def kick(self):
        """The session list's Kick button: close 4011."""
        for client in list(self.clients):
            client.close(4011, "kicked")

    # -- one connection -----------------------------------------------------------------
    def _handle(self, sock, address):
        client = _Client(sock)
        try:
            if not self._upgrade(sock):
                return
            self.clients.append(client)
            auth = None
            hello = {"obsWebSocketVersion": "5.9.9-double", "rpcVersion": 1}
            if self.password is not None:
                auth = (base64.b64encode(os.urandom(32)).decode(), base64.b64encode(os.urandom(32)).decode())
                hello["authentication"] = {"challenge": auth[0], "salt": auth[1]}
            client.send_json({"op": 0, "d": hello})
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for opcode, payload in client.parser.feed(data):
                    if opcode == wsproto.CLOSE:
                        client.close(1000)
                        return
                    if opcode == wsproto.PING:
                        sock.sendall(wsproto.encode_pong(payload))
                        continue
                    if opcode != wsproto.TEXT:
                        client.close(4002, "binary message with the json subprotocol")
                        return
                    if not self._message(client, json.loads(payload.decode()), auth):
                        return
        except (OSError, wsproto.ProtocolError):
            pass
        finally:
            if client in self.clients:
                self.clients.remove(client)
            sock.close()

    def _upgrade(self, sock):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            head += chunk
        fields = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        protocols = [p.strip() for p in fields.get("sec-websocket-protocol", "").split(",")]
        lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Accept: %s" % wsproto.accept_key(fields["sec-websocket-key"])]
        if "obswebsocket.json" in protocols:
            lines.append("Sec-WebSocket-Protocol: obswebsocket.json")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return True

    def _message(self, client, msg, auth):
        op, d = msg.get("op"), msg.get("d", {})
        if not client.identified:
            if op != 1:
                client.close(4007, "not identified")
                return False
            if auth is not None and d.get("authentication") != expected_auth(self.password, auth[1], auth[0]):
                self.auth_failures += 1
                client.close(4009, "Authentication failed.")
                return False
            client.identified = True
            client.subscriptions = d.get("eventSubscriptions", (1 << 11) - 1)
            client.send_json({"op": 2, "d": {"negotiatedRpcVersion": 1}})
            self.identified.set()
            return True
        if op == 6:
            self.requests.append(d)
            client.send_json({"op": 7, "d": self._answer(d)})
            return True
        if op == 3:
            client.subscriptions = d.get("eventSubscriptions", client.subscriptions)
            client.send_json({"op": 2, "d": {"negotiatedRpcVersion": 1}})
            return True
        client.close(4006, "unknown op")
        return False

    def _answer(self, d):
        kind = d.get("requestType")
        out = {"requestType": kind, "requestId": d.get("requestId"),
               "requestStatus": {"result": True, "code": 100}}
        if kind == "GetCurrentProgramScene":
            out["responseData"] = {"currentProgramSceneName": self.scene, "sceneName": self.scene}
        elif kind == "SetCurrentProgramScene":
            self.scene = (d.get("requestData") or {}).get("sceneName", self.scene)
            gevent.spawn(self.emit, "CurrentProgramSceneChanged", {"sceneName": self.scene})
        else:
            out["requestStatus"] = {"result": False, "code": 204, "comment": "unknown request"}
        return out
