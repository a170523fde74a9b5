"""Session rooms (issue 20) with a client nobody here wrote: noVNC (Debian's ``novnc``, its
``vnc_lite.html``) in headless Chromium, through the real relay (``--sessions on``), to a real VNC
server (TigerVNC's ``Xvnc``, ``-SecurityTypes None``) behind ``sphincter connect --sessions``.

The VNC server speaks first (``RFB 003.008``) on a connection made for each client. One page
holds two noVNC frames, so two sessions: two connections to Xvnc. The root window is painted
with ``xsetroot -solid``; a screenshot of each frame's canvas (PNG, decoded here with zlib) must
show that colour, then the next one painted while connected. One frame then goes away: its session
ends alone and the other still shows what is painted next; when Xvnc stops, noVNC says
``Disconnected`` (close 1000). A third frame with a wrong key fails with 4403 in noVNC's console."""

import base64
import mimetypes
import os
import re
import socket
import struct
import subprocess
import time
import zlib

import gevent
import gevent.os
import pytest
from gevent.pywsgi import WSGIServer

from cdp_browser import Browser, find_chromium
from conftest import unit, wait_for
from nginxkit import free_port, nginx_binary
from testkit import require_file, require_program, stop_process
from test_pipe import ROOT, relays  # noqa: F401  (the fixture)
from test_sessions import Agent

pytestmark = pytest.mark.timeout(90)

NOVNC = "/usr/share/novnc"
#: the remote desktop's size, and the desktop name noVNC shows once connected
WIDTH, HEIGHT, DESKTOP = 160, 96, "sphincter-novnc"
COLOURS = ((0x12, 0xab, 0x34), (0xc8, 0x1e, 0x5a), (0x1e, 0x5a, 0xc8))


class Xvnc:
    """TigerVNC's X server with VNC built in, on a free display (``-displayfd``) and a free
    loopback RFB port, no VNC authentication, one known desktop name."""

    def __init__(self, tmp_path):
        binary = require_program("Xtigervnc")
        self.xsetroot = require_program("xsetroot")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = str(tmp_path / "xvnc.log")
        self._log = open(self.log_path, "w")
        r, w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [binary, "-displayfd", str(w), "-rfbport", str(self.port), "-localhost",
                 "-SecurityTypes", "None", "-AlwaysShared", "-nolisten", "tcp", "-desktop", DESKTOP,
                 "-geometry", "%dx%d" % (WIDTH, HEIGHT), "-depth", "24"],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, pass_fds=(w,))
        finally:
            os.close(w)
        try:
            self.display = ":" + self._read_display(r)
        finally:
            os.close(r)

    def _read_display(self, fd):
        """The display number Xvnc writes to the pipe once it accepts connections."""
        gevent.os.make_nonblocking(fd)
        got = b""
        with gevent.Timeout(unit(20), AssertionError("Xvnc did not start:\n" + self.log())):
            while not got.endswith(b"\n"):
                data = gevent.os.nb_read(fd, 64)
                assert data, "Xvnc exited (%s):\n%s" % (self.proc.wait(), self.log())
                got += data
        return got.decode().strip()

    def paint(self, rgb):
        subprocess.run([self.xsetroot, "-solid", "#%02x%02x%02x" % rgb], check=True, timeout=unit(10),
                       env=dict(os.environ, DISPLAY=self.display))

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        stop_process(self.proc)
        self._log.close()


# --- noVNC's files over HTTP on loopback (its module scripts will not load from file://) ------

TYPES = {".js": "text/javascript", ".html": "text/html", ".css": "text/css"}


def page(frames):
    """Two noVNC frames side by side, each big enough for the remote desktop and its top bar."""
    return ("<!DOCTYPE html><html><body style='margin:0;background:#000'>" + "".join(
        "<iframe id='f%d' src='%s' style='border:0;width:%dpx;height:%dpx'></iframe>" % (
            i, src, WIDTH + 60, HEIGHT + 80) for i, src in enumerate(frames)) + "</body></html>")


class StaticNoVNC:
    def __init__(self, pages):
        self.pages = pages
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None)
        self.server.start()
        self.port = self.server.server_port

    def app(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path in self.pages:
            body, ctype = self.pages[path].encode(), "text/html"
        else:
            name = os.path.normpath(os.path.join(NOVNC, path.lstrip("/")))
            if not name.startswith(NOVNC + os.sep) or not os.path.isfile(name):
                start_response("404 Not Found", [("Content-Length", "0")])
                return [b""]
            with open(name, "rb") as f:
                body = f.read()
            ext = os.path.splitext(name)[1]
            ctype = TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    def stop(self):
        self.server.stop()


# --- PNG pixels with the standard library ----------------------------------------------------

def png_rgb(data):
    """(width, height, rows of (r, g, b) tuples) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xff
            elif kind == 2:
                line[i] = (line[i] + b) & 0xff
            elif kind == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xff
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xff
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return width, height, rows


def canvas_rect(b, frame):
    """The remote desktop's canvas, in the page's CSS pixels: in noVNC frame *frame* (a number),
    or in vnc.html, the page itself (None)."""
    return b.evaluate("""(function () {
        var f = %s, doc = f ? f.contentDocument : document;
        var c = doc.querySelector('#screen canvas, #noVNC_container canvas');
        if (!c) return null;
        var o = f ? f.getBoundingClientRect() : {left: 0, top: 0}, r = c.getBoundingClientRect();
        return [Math.round(o.left + r.left), Math.round(o.top + r.top), Math.round(r.width), Math.round(r.height)];
    })()""" % ("null" if frame is None else "document.getElementById('f%d')" % frame))


def shows(b, frame, rgb, tmp_path):
    """True when a screenshot of the canvas (see canvas_rect) is the remote desktop painted *rgb*,
    pixel for pixel (the last screenshot stays in tmp_path for a failure's post-mortem)."""
    rect = canvas_rect(b, frame)
    if rect is None:                              # no canvas (yet)
        return False
    x, y, w, h = rect
    assert (w, h) == (WIDTH, HEIGHT), (w, h)
    shot = base64.b64decode(b.call("Page.captureScreenshot", format="png", clip=dict(
        x=x, y=y, width=w, height=h, scale=1))["data"])
    (tmp_path / ("frame%s.png" % frame)).write_bytes(shot)
    width, height, rows = png_rgb(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    return all(max(abs(p - q) for p, q in zip(px, rgb)) <= 2 for row in rows for px in row)


def status(b, frame):
    return b.evaluate("document.getElementById('f%d').contentDocument.getElementById('status')"
                      ".textContent" % frame)


@pytest.fixture(scope="module")
def chromium():
    require_file("/usr/share/novnc/vnc_lite.html", "noVNC")
    b = Browser(require_program("chromium", find_chromium()), width=3 * WIDTH + 300, height=HEIGHT + 300)
    yield b
    b.close()


@pytest.fixture
def browser(chromium):
    chromium.set_viewport(3 * WIDTH + 300, HEIGHT + 300)
    chromium.errors.clear()
    del chromium.console[:]
    yield chromium
    chromium.call("Page.navigate", url="about:blank")


@pytest.fixture
def vnc(relays, tmp_path):
    """The relay (--sessions on), Xvnc painted COLOURS[0], the agent beside it, its room and key."""
    relay = relays("--sessions", "on")
    xvnc = Xvnc(tmp_path)
    agent = Agent(tmp_path, relay, xvnc.port)
    try:
        code, key = agent.banner()
        xvnc.paint(COLOURS[0])
        yield relay, xvnc, code, key
    finally:
        agent.stop()
        xvnc.stop()
    assert "Traceback" not in agent.log(), agent.log()


def test_novnc_in_chromium_sees_the_remote_desktop_one_session_per_frame(browser, vnc, tmp_path):
    started = time.monotonic()
    relay, xvnc, code, key = vnc
    web = None
    try:
        # vnc_lite.html builds ws://HOST:PORT/PATH; PATH carries the room and key, URL-encoded
        src = "/vnc_lite.html?host=%s&port=%d&path=%s" % (
            relay.ws[0], relay.ws[1], "ws%%3Froom%%3D%s%%26key%%3D%s" % (code, key))
        wrong = src.replace(key, "wrong-key-0123456789ab")
        web = StaticNoVNC({"/two.html": page([src, src, wrong])})
        browser.navigate("http://127.0.0.1:%d/two.html" % web.port)
        for frame in (0, 1):
            browser.wait_for("document.getElementById('f%d').contentDocument.getElementById('status')"
                             ".textContent === 'Connected to %s'" % (frame, DESKTOP),
                             timeout=unit(20), what="noVNC frame %d connected" % frame)
        assert len(re.findall(r"Connections: accepted", xvnc.log())) == 2, xvnc.log()  # a connection each
        browser.wait_for("document.getElementById('f2').contentDocument.getElementById('status')"
                         ".textContent === 'Something went wrong, connection is closed'",
                         timeout=unit(10), what="noVNC's failure with a wrong key")
        wait_for(lambda: any("code: 4403, reason: wrong key" in text for _, text in browser.console),
                 timeout=unit(5), what="the close code in noVNC's console line")
        for rgb in COLOURS[:2]:                   # the desktop, then what is painted while connected
            xvnc.paint(rgb)
            for frame in (0, 1):
                wait_for(lambda: shows(browser, frame, rgb, tmp_path), timeout=unit(15), interval=0.1,
                         what="frame %d showing #%02x%02x%02x" % ((frame,) + rgb))
        browser.evaluate("document.getElementById('f0').remove(); true")   # one client leaves
        wait_for(lambda: re.search(r"session %s\.\S+ of .* ended: client closed" % code, relay.log()),
                 timeout=unit(10), what="the first session's end in the relay log")
        xvnc.paint(COLOURS[2])                    # the other session lives on
        wait_for(lambda: shows(browser, 1, COLOURS[2], tmp_path), timeout=unit(15), interval=0.1,
                 what="the remaining frame showing the last colour")
        assert status(browser, 1) == "Connected to %s" % DESKTOP
        assert len(re.findall(r"session %s\.\S+ of .* ended" % code, relay.log())) == 1, relay.log()
        xvnc.stop()                               # the service ends: 1000, noVNC says so
        browser.wait_for("document.getElementById('f1').contentDocument.getElementById('status')"
                         ".textContent === 'Disconnected'", timeout=unit(10), what="a clean disconnect")
        wait_for(lambda: "ended: service closed" in relay.log(), timeout=unit(10), what="the log line")
        assert not browser.errors, browser.errors
        print("noVNC through a session room: %.1fs" % (time.monotonic() - started))
    finally:
        if web is not None:
            web.stop()


# --- the README's recipe: noVNC's vnc.html and the relay behind the shipped nginx block -------

NGINX_MAIN = """worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    # Debian's /etc/nginx/nginx.conf includes mime.types: noVNC's modules need a JavaScript type
    types {{ text/html html; application/javascript js; text/css css; application/json json;
             image/svg+xml svg; image/png png; audio/ogg oga; audio/mpeg mp3; }}
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;
    include {d}/sphincter.conf;
}}
"""


def shipped_nginx_block(port_tls, port_ws, cert, key):
    """conf/nginx-sphincter.conf with the site's lines replaced and its noVNC location uncommented."""
    with open(os.path.join(ROOT, "conf", "nginx-sphincter.conf")) as f:
        text = f.read()
    for pattern, repl in ((r"^\s*listen 443 ssl;$", "    listen 127.0.0.1:%d ssl;" % port_tls),
                          (r"^\s*listen \[::\]:443 ssl;$", ""),
                          (r"^\s*server 127\.0\.0\.1:8080;$", "    server 127.0.0.1:%d;" % port_ws),
                          (r"^\s*ssl_certificate .*;$", "    ssl_certificate %s;" % cert),
                          (r"^\s*ssl_certificate_key .*;$", "    ssl_certificate_key %s;" % key),
                          (r"^(\s*)#(location /novnc/ \{|\s*alias /usr/share/novnc/;|\})$", r"\1\2")):
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n == (3 if "novnc" in pattern else 1), "the shipped nginx block no longer has %r" % pattern
    return text


@pytest.fixture
def nginx(tmp_path):
    openssl = require_program("openssl")
    binary = nginx_binary()
    d = tmp_path / "nginx"
    (d / "tmp").mkdir(parents=True)
    os.chmod(str(tmp_path), 0o755)                # nginx's workers may run as another user
    os.chmod(str(d), 0o755)
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=unit(30))
    procs = []

    def start(relay):
        port = free_port()
        (d / "sphincter.conf").write_text(shipped_nginx_block(port, relay.ws[1], cert, key))
        (d / "nginx.conf").write_text(NGINX_MAIN.format(d=d))
        proc = subprocess.Popen([binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(proc)

        def up():
            assert proc.poll() is None, (d / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, timeout=unit(15), what="nginx")
        return port

    yield start
    for proc in procs:
        stop_process(proc)


def test_novnc_vnc_html_behind_the_shipped_nginx_block(browser, vnc, nginx, tmp_path):
    relay, xvnc, code, key = vnc
    port = nginx(relay)
    browser.call("Security.setIgnoreCertificateErrors", ignore=True)     # a self-signed test certificate
    try:
        browser.navigate("https://127.0.0.1:%d/novnc/vnc.html?autoconnect=1&path=%s" % (
            port, "ws%%3Froom%%3D%s%%26key%%3D%s" % (code, key)))
        browser.wait_for("document.documentElement.classList.contains('noVNC_connected')",
                         timeout=unit(20), what="vnc.html connected")
        wait_for(lambda: shows(browser, None, COLOURS[0], tmp_path), timeout=unit(15), interval=0.1,
                 what="vnc.html showing the desktop")
        assert not browser.errors, browser.errors
    finally:
        browser.call("Security.setIgnoreCertificateErrors", ignore=False)
