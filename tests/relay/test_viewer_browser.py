"""The viewer page and sphincter.js in a real headless Chromium, against a real Sphincter
process and a real TCP source.

Screenshots go to ``artifacts/`` (gitignored). Needs Debian's ``chromium``
(scripts/apt-deps.d/viewer.txt); without it these tests skip, and fail under CI=true.
"""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from cdp_browser import Browser, find_chromium
from nginxkit import Nginx
from testkit import require_program

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(ROOT, "sphincter.py")
ARTIFACTS = os.path.join(ROOT, "artifacts")
LISTENING = re.compile(r"listening tcp=(\S+):(\d+) ws=(\S+):(\d+)")

pytestmark = pytest.mark.timeout(90)


# -- the real relay, as a process ------------------------------------------------------------

class Relay:
    """``python sphincter.py`` on loopback; ``restart()`` keeps the WebSocket port."""

    def __init__(self, *args, env=None):
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.ws_port = 0
        self.proc = None
        self.lines = []
        self.start()

    def start(self, timeout=20.0):
        cmd = [sys.executable, ENTRY, "--tcp-host", "127.0.0.1", "--tcp-port", "0",
               "--ws-host", "127.0.0.1", "--ws-port", str(self.ws_port), *self.args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=self.env, cwd=ROOT)
        found = queue.Queue()

        def pump(stream):
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                self.lines.append(line)
                m = LISTENING.search(line)
                if m:
                    found.put(m)
            found.put(None)

        threading.Thread(target=pump, args=(self.proc.stderr,), daemon=True).start()
        try:
            m = found.get(timeout=timeout)
        except queue.Empty:
            m = None
        if m is None:
            self.stop()
            raise AssertionError("relay did not start: %s" % "\n".join(self.lines[-20:]))
        self.tcp_port, self.ws_port = int(m.group(2)), int(m.group(4))
        self.http = "http://127.0.0.1:%d" % self.ws_port
        # answered once = serving, with its SIGTERM handler installed
        with urllib.request.urlopen(self.http + "/healthz", timeout=10) as resp:
            assert resp.status == 200

    def stop(self, timeout=15.0):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def restart(self):
        self.stop()
        deadline = time.monotonic() + 10
        while True:  # the port is ours again once the old process is gone; retry a busy bind briefly
            try:
                self.start()
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise


class Source:
    """A TCP source: connects, reads the ``ROOM CODE`` banner, sends bytes."""

    def __init__(self, relay, timeout=10.0, first=b""):
        self.sock = socket.create_connection(("127.0.0.1", relay.tcp_port), timeout=timeout)
        if first:
            self.sock.sendall(first)             # e.g. AUTH <token> for a named room
        banner = b""
        while not banner.endswith(b"\n"):
            chunk = self.sock.recv(1)
            assert chunk, "relay closed before the banner"
            banner += chunk
        m = re.match(rb"ROOM ([A-Za-z0-9_-]+)\n", banner)
        assert m, banner
        self.code = m.group(1).decode()

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@pytest.fixture
def relay():
    started = []

    def make(*args, **kw):
        r = Relay(*args, **kw)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture(scope="module")
def browser_proc():
    binary = require_program("chromium", find_chromium())
    b = Browser(binary)
    yield b
    b.close()


@pytest.fixture
def browser(browser_proc):
    b = browser_proc
    b.set_viewport(1100, 800)
    b.errors.clear()
    yield b
    b.evaluate("window.__conns && window.__conns.forEach(function (c) { c.close(); }); true")
    b.call("Page.navigate", url="about:blank")
    assert not b.errors, "page threw: %s" % b.errors


def shot(browser, name, **kw):
    path = browser.screenshot(os.path.join(ARTIFACTS, name), **kw)
    assert os.path.getsize(path) > 1000
    return path


def status(b):
    return b.evaluate("(function (s) { return {state: s.dataset.state, reason: s.dataset.reason,"
                      " text: s.innerText}; })(document.getElementById('status'))")


def wait_status(b, state, reason=None, timeout=15.0):
    cond = "document.getElementById('status').dataset.state === %s" % json.dumps(state)
    if reason is not None:
        cond += " && document.getElementById('status').dataset.reason === %s" % json.dumps(reason)
    b.wait_for(cond, timeout=timeout, what="status %s/%s (now %r)" % (state, reason, status(b)))


def items(b):
    return b.evaluate("Array.prototype.map.call(document.querySelectorAll('#messages > li'),"
                      " function (li) { return {cls: li.className, text: li.innerText,"
                      " details: !!li.querySelector('details'),"
                      " open: !!li.querySelector('details[open]')}; })")


def wait_items(b, n, timeout=15.0):
    b.wait_for("document.querySelectorAll('#messages > li').length === %d" % n, timeout=timeout,
               what="%d messages on the page" % n)
    return items(b)


def click(b, element_id):
    b.evaluate("document.getElementById(%s).click(); true" % json.dumps(element_id))


def type_room_and_enter(b, code):
    """Type into the room field with the keyboard and press Enter (no mouse)."""
    b.evaluate("var i = document.getElementById('room'); i.value = ''; i.focus(); true")
    b.call("Input.insertText", text=code)
    b.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter",
           windowsVirtualKeyCode=13, text="\r")
    b.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter",
           windowsVirtualKeyCode=13)


# -- the viewer page ---------------------------------------------------------------------------

def test_page_shows_what_the_source_sends_then_the_closed_state(browser, relay):
    b = browser
    r = relay()
    src = Source(r)
    b.navigate(r.http + "/?room=" + src.code.lower())
    wait_status(b, "open")
    assert b.evaluate("document.getElementById('room').value") == src.code

    src.send(b"hello world\n")
    src.send(b'{"temp": 21.5, "unit": "C", "tags": ["kitchen", "north"]}\n')
    src.send(b"\xff\xfe\x00\x01 not utf-8\n")
    got = wait_items(b, 3)
    binary, js, text = got  # newest first
    assert "binary" in binary["cls"] and "ff fe 00 01" in binary["text"]
    assert js["details"] and js["open"] and '"temp": 21.5' in js["text"]
    assert "hello world" in text["text"] and not text["details"]
    wait_status(b, "live")
    assert b.evaluate("document.getElementById('stat-count').textContent") == "3"

    long_json = json.dumps({"k%02d" % i: list(range(3)) for i in range(20)}).encode()
    src.send(long_json + b"\n")
    got = wait_items(b, 4)
    assert got[0]["details"] and not got[0]["open"], "long JSON starts collapsed"
    shot(b, "viewer-live.png")
    b.set_viewport(390, 844, scale=2, mobile=True)
    shot(b, "viewer-phone.png")
    assert b.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), \
        "no horizontal scrolling on a phone"
    b.set_viewport(1100, 800)
    b.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}])
    shot(b, "viewer-dark.png")
    b.call("Emulation.setEmulatedMedia", features=[])

    # pause holds messages back, resume shows them; clear empties the list
    click(b, "pause")
    assert b.evaluate("document.getElementById('pause').getAttribute('aria-pressed')") == "true"
    src.send(b"while paused\n")
    b.wait_for("document.getElementById('stat-count').textContent === '5'")
    assert len(items(b)) == 4
    assert "1 new message" in b.evaluate("document.getElementById('paused-note').innerText")
    click(b, "pause")
    assert "while paused" in wait_items(b, 5)[0]["text"]
    click(b, "copy")
    b.wait_for("document.getElementById('copy-note').textContent === 'Copied 5 message(s).'")
    # "Pretty JSON" off shows the JSON as it came
    click(b, "pretty")
    assert not any(i["details"] for i in wait_items(b, 5))
    click(b, "pretty")
    b.wait_for("document.querySelectorAll('#messages details').length === 2")
    click(b, "clear")
    wait_items(b, 0)
    assert b.evaluate("document.getElementById('empty').hidden") is False

    src.close()
    wait_status(b, "retrying", "room-closed")
    st = status(b)
    assert "Room closed" in st["text"] and "Retrying in" in st["text"], st
    shot(b, "viewer-closed.png")


def test_page_stays_bounded_under_a_burst(browser, relay):
    b = browser
    r = relay()
    src = Source(r)
    b.navigate(r.http + "/?room=" + src.code)
    wait_status(b, "open")
    n = 3000
    src.send(b"".join(b'{"seq": %d, "pad": "%s"}\n' % (i, b"x" * 40) for i in range(n)))
    b.wait_for("document.getElementById('stat-count').textContent === '%d'" % n, timeout=30)
    b.wait_for("document.querySelectorAll('#messages > li').length === 500")
    assert '"seq": %d' % (n - 1) in items(b)[0]["text"]
    assert float(b.evaluate("document.getElementById('stat-rate').textContent")) > 0
    src.close()


def test_page_unknown_room_and_keyboard_entry(browser, relay):
    b = browser
    r = relay()
    b.navigate(r.http + "/")
    assert status(b)["state"] == "idle"
    type_room_and_enter(b, "no such!")
    b.wait_for("document.getElementById('room').getAttribute('aria-invalid') === 'true'")
    type_room_and_enter(b, "zz zz zz")
    wait_status(b, "retrying", "unknown-room")
    assert "room=ZZZZZZ" in b.evaluate("location.search")
    assert "Unknown room" in status(b)["text"]
    # a source appears: the viewer can switch to it without reloading
    src = Source(r)
    type_room_and_enter(b, src.code)
    wait_status(b, "open")
    src.send(b"ok\n")
    wait_items(b, 1)
    click(b, "stop")
    wait_status(b, "stopped")
    src.close()


def test_page_reconnects_after_server_restart(browser, relay):
    b = browser
    r = relay()
    src = Source(r)
    b.navigate(r.http + "/?room=" + src.code)
    wait_status(b, "open")
    src.send(b"before restart\n")
    wait_items(b, 1)
    r.stop()
    wait_status(b, "retrying")
    assert status(b)["reason"] in ("server-shutdown", "room-closed", "network"), status(b)
    r.restart()
    # The new process answers: the room is gone with the old process, so "unknown room".
    wait_status(b, "retrying", "unknown-room", timeout=30)
    src2 = Source(r)
    type_room_and_enter(b, src2.code)
    wait_status(b, "open")
    src2.send(b"after restart\n")
    assert "after restart" in wait_items(b, 1)[0]["text"]
    src2.close()


def test_overlay_example_shows_a_live_field(browser, relay):
    """examples/overlay.html opened from disk (as OBS does), loading sphincter.js from the relay."""
    b = browser
    r = relay()
    src = Source(r)
    page = "file://%s/examples/overlay.html?relay=%s/&room=%s&field=sensors.0.temp&label=Kitchen&unit=%%C2%%B0C" % (
        ROOT, r.http, src.code)
    b.navigate(page)
    b.wait_for("document.body.className === 'open'", what="overlay connected")
    src.send(b'{"sensors": [{"temp": 21.5}]}\n{"other": 1}\n')
    b.wait_for("document.getElementById('value').textContent === '21.5'", what="overlay value")
    assert b.evaluate("document.body.className") == "live"
    b.call("Emulation.setDefaultBackgroundColorOverride", color={"r": 40, "g": 90, "b": 60, "a": 1})
    shot(b, "overlay.png")
    b.call("Emulation.setDefaultBackgroundColorOverride")
    src.close()
    b.wait_for("document.body.className === 'retrying'", what="overlay shows the source left")
    assert "source disconnected" in b.evaluate("document.getElementById('state').textContent")


NGINX_RELAY = """
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    location /relay/ {{
      proxy_pass http://127.0.0.1:{ws_port}/;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 1h;
    }}"""


@pytest.fixture
def nginx_tls(tmp_path):
    """nginx terminating TLS on 127.0.0.1 and proxying /relay/ to a relay (the README's setup)."""
    openssl = require_program("openssl")
    d = str(tmp_path)
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", d + "/key.pem", "-out", d + "/cert.pem"],
                   check=True, capture_output=True, timeout=60)
    proxies = []

    def start(relay):
        proxy = Nginx(d, NGINX_RELAY.format(d=d, ws_port=relay.ws_port), listen_options=" ssl")
        proxies.append(proxy.__enter__())
        return "https://127.0.0.1:%d/relay/" % proxy.port

    yield start
    for proxy in proxies:
        proxy.__exit__()


def test_page_behind_nginx_over_https_under_a_prefix(browser, relay, nginx_tls):
    """Same origin through the proxy: https page -> wss://same-host/relay/ws, CSP allows it."""
    b = browser
    r = relay()
    base = nginx_tls(r)
    src = Source(r)
    b.call("Security.setIgnoreCertificateErrors", ignore=True)
    try:
        b.navigate(base + "?room=" + src.code)
        wait_status(b, "open")
        url = b.evaluate("window.sphincterViewer.conn.url")
        assert url == base.replace("https://", "wss://") + "ws?room=" + src.code
        src.send(b'{"via": "nginx"}\n')
        assert '"via": "nginx"' in wait_items(b, 1)[0]["text"]
        src.close()
        wait_status(b, "retrying", "room-closed")
    finally:
        b.call("Security.setIgnoreCertificateErrors", ignore=False)


# -- sphincter.js in the same browser ----------------------------------------------------------

RECORDER = """
window.__conns = window.__conns || [];
window.__logs = window.__logs || {};
window.__rec = function (name, opts) {
  var log = window.__logs[name] = {states: [], messages: []};
  opts.onState = function (s, info) { log.states.push([s, info]); };
  opts.onMessage = function (data, meta) {
    if (data instanceof Uint8Array) { data = {bytes: Array.prototype.slice.call(data)}; }
    log.messages.push([data, meta]);
  };
  var c = Sphincter.connect(opts);
  window.__conns.push(c);
  return c;
};
true
"""


def js_page(b, r):
    b.navigate(r.http + "/")
    b.evaluate(RECORDER)


def log(b, name):
    return b.evaluate("window.__logs[%s]" % json.dumps(name))


def wait_js_state(b, name, state, reason=None, timeout=15.0, count=1):
    cond = ("window.__logs[%s].states.filter(function (s) { return s[0] === %s && (%s === null ||"
            " s[1].reason === %s); }).length >= %d" % (
                json.dumps(name), json.dumps(state), json.dumps(reason), json.dumps(reason), count))
    b.wait_for(cond, timeout=timeout, what="%s: %s x%d (log %r)" % (
        name, state, count, (log(b, name) or {}).get("states", [])[-5:]))
    return log(b, name)


def test_js_pure_parts(browser, relay):
    b = browser
    js_page(b, relay())
    got = b.evaluate("""(function () {
      var B = {initialMs: 100, factor: 2, maxMs: 1000, jitter: 0.5, slowMinMs: 5000, slowMaxMs: 9000};
      var hi = function () { return 1; }, lo = function () { return 0; };
      var out = {};
      out.grow = [0, 1, 2, 3, 4, 5].map(function (n) { return Sphincter.backoffDelay(n, 4404, B, hi); });
      out.low = [0, 1, 2].map(function (n) { return Sphincter.backoffDelay(n, 1006, B, lo); });
      out.full = [0, 3, 10].map(function (n) { return Sphincter.backoffDelay(n, 4429, B, hi); });
      out.forbidden = Sphincter.backoffDelay(0, 4403, B, lo);
      out.reasons = [1001, 4403, 4404, 4408, 4410, 4429, 1006, 1011].map(Sphincter.closeReason);
      out.urls = [
        Sphincter.roomUrl("abc234 ", "/sub/ws", {href: "https://relay.example/sub/", protocol: "https:"}),
        Sphincter.roomUrl("ABC234", "http://h:8080/ws"),
        Sphincter.roomUrl("ABC234", "wss://h/relay/ws"),
        Sphincter.roomUrl("ABC234")
      ];
      return out;
    })()""")
    assert got["grow"] == [100, 200, 400, 800, 1000, 1000]  # exponential, capped
    assert got["low"] == [50, 100, 200]                     # jitter keeps at least half
    assert got["full"] == [5000, 5000, 9000]                # room full: floor and its own cap
    assert got["forbidden"] == 2500                         # half of the 5000 floor at least
    assert got["reasons"] == ["server-shutdown", "forbidden", "unknown-room", "too-slow",
                              "room-closed", "room-full", "network", "network"]
    # behind nginx over https: wss:// on the same origin
    assert got["urls"][0] == "wss://relay.example/sub/ws?room=ABC234"
    assert got["urls"][1] == "ws://h:8080/ws?room=ABC234"
    assert got["urls"][2] == "wss://h/relay/ws?room=ABC234"
    # default: the /ws next to where sphincter.js was loaded from
    assert got["urls"][3] == "ws://127.0.0.1:%d/ws?room=ABC234" % int(b.evaluate("location.port"))
    with pytest.raises(Exception, match="cannot connect to file: URL"):
        b.evaluate("Sphincter.roomUrl('ABC234', 'file:///tmp/ws')")
    with pytest.raises(Exception, match="room is required"):
        b.evaluate("Sphincter.connect({})")


def test_js_messages_json_and_staleness(browser, relay):
    b = browser
    r = relay()
    js_page(b, r)
    src = Source(r)
    b.evaluate("__rec('j', {room: %s, json: true, staleAfterMs: 400}); true" % json.dumps(src.code))
    wait_js_state(b, "j", "open")
    src.send(b'{"a": 1, "b": [true, null]}\nnot json\n\x80\x81\n')
    b.wait_for("window.__logs.j.messages.length === 3")
    msgs = log(b, "j")["messages"]
    assert msgs[0][0] == {"a": 1, "b": [True, None]} and not msgs[0][1].get("parseError")
    assert msgs[1][0] == "not json" and msgs[1][1]["parseError"]
    assert msgs[2][0] == {"bytes": [0x80, 0x81]} and msgs[2][1]["binary"] and msgs[2][1]["bytes"] == 2
    wait_js_state(b, "j", "live")
    lg = wait_js_state(b, "j", "stale")
    assert lg["states"][-1][1]["sinceMs"] >= 350
    src.send(b"again\n")
    b.wait_for("window.__logs.j.states[window.__logs.j.states.length - 1][0] === 'live'")
    src.close()


def test_js_close_codes_and_backoff(browser, relay):
    b = browser
    # the browser is a client on loopback, limited per address like any (issue 18.4): 'u' keeps
    # retrying an unknown room 2.5 times a second, which must not turn 'a' and 'full' away
    r = relay("--max-subscribers-per-room", "1", "--unknown-room-rate", "0")
    js_page(b, r)
    fast = "{initialMs: 60, factor: 2, maxMs: 400, jitter: 0, slowMinMs: 700, slowMaxMs: 2000}"

    # 4404: unknown room, keeps retrying with growing delays
    b.evaluate("__rec('u', {room: 'ZZZZZZ', backoff: %s}); true" % fast)
    lg = wait_js_state(b, "u", "retrying", "unknown-room", count=4)
    retries = [s[1] for s in lg["states"] if s[0] == "retrying"]
    assert all(x["code"] == 4404 for x in retries)
    assert [x["retryInMs"] for x in retries[:4]] == [60, 120, 240, 400]

    # 4429: room full backs off longer
    src = Source(r)
    b.evaluate("__rec('a', {room: %s, backoff: %s}); true" % (json.dumps(src.code), fast))
    wait_js_state(b, "a", "open")
    b.evaluate("__rec('full', {room: %s, backoff: %s}); true" % (json.dumps(src.code), fast))
    lg = wait_js_state(b, "full", "retrying", "room-full")
    info = [s[1] for s in lg["states"] if s[0] == "retrying"][0]
    assert info["code"] == 4429 and info["retryInMs"] >= 700

    # close() stops for good
    b.evaluate("window.__conns[window.__conns.length - 1].close(); true")
    assert log(b, "full")["states"][-1][0] == "stopped"

    # 4410: the source leaves; the client keeps retrying (then the room is unknown)
    src.close()
    lg = wait_js_state(b, "a", "retrying", "room-closed")
    assert [s for s in lg["states"] if s[0] == "retrying"][0][1]["code"] == 4410
    wait_js_state(b, "a", "retrying", "unknown-room")
    # the stopped one has nothing pending: no socket, no retry timer
    assert b.evaluate("(function (c) { return c.state === 'stopped' && c.ws === null &&"
                      " c._retryTimer === null; })(window.__conns[2])")


def test_js_reconnects_after_server_restart(browser, relay):
    b = browser
    r = relay()
    js_page(b, r)
    src = Source(r)
    b.evaluate("__rec('r', {room: %s, backoff: {initialMs: 100, maxMs: 500, jitter: 0.2}}); true"
               % json.dumps(src.code))
    wait_js_state(b, "r", "open")
    src.send(b"one\n")
    b.wait_for("window.__logs.r.messages.length === 1")
    r.stop()
    lg = wait_js_state(b, "r", "retrying")
    first = [s[1] for s in lg["states"] if s[0] == "retrying"][0]
    assert first["reason"] in ("server-shutdown", "room-closed"), first
    r.restart()
    lg = wait_js_state(b, "r", "retrying", "unknown-room", timeout=30)
    assert [s[0] for s in lg["states"]].count("connecting") >= 2


def test_js_and_overlay_show_a_named_room_whose_source_is_away(browser, relay, tmp_path):
    """Presence without touching the data stream: sphincter.js's 'source-offline' state, the overlay
    showing the replayed last value at once, then 'source away' when the source leaves."""
    b = browser
    rooms = tmp_path / "rooms.txt"
    rooms.write_text("stage stage-token-123 replay=1\n")
    r = relay("--rooms-file", str(rooms))
    js_page(b, r)
    b.evaluate("__rec('p', {room: 'stage'}); true")
    wait_js_state(b, "p", "source-offline")
    src = Source(r, first=b"AUTH stage-token-123\n")
    assert src.code == "stage"
    wait_js_state(b, "p", "open", count=2)               # back from offline, no reconnect
    src.send(b'{"scene": "Intro"}\n')
    wait_js_state(b, "p", "live")
    assert b.evaluate("window.__conns[0].source") == "online"
    src.close()
    lg = wait_js_state(b, "p", "source-offline", count=2)
    assert [s[0] for s in lg["states"]].count("connecting") == 1   # the socket stayed open

    # the overlay, loaded after the last value was sent, shows it at once (replay=1), dimmed
    page = "file://%s/examples/overlay.html?relay=%s/&room=stage&field=scene&label=Scene" % (ROOT, r.http)
    b.navigate(page)
    b.wait_for("document.getElementById('value').textContent === 'Intro'", what="replayed value")
    b.wait_for("document.body.className === 'source-offline'", what="overlay: source away")
    assert "source away" in b.evaluate("document.getElementById('state').textContent")
    src = Source(r, first=b"AUTH stage-token-123\n")
    src.send(b'{"scene": "Game"}\n')
    b.wait_for("document.getElementById('value').textContent === 'Game'", what="live again")
    assert b.evaluate("document.body.className") == "live"
    src.close()
