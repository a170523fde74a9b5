"""Session rooms (issue 20) with a client nobody here wrote: noVNC (Debian's ``novnc``, its
``vnc_lite.html``) in headless Chromium, through the real relay (``--sessions on``), to a real VNC
server (TigerVNC's ``Xvnc``, ``-SecurityTypes None``) behind ``sphincter connect --sessions``.

The VNC server speaks first (``RFB 003.008``) on a connection made for each client. One page
holds two noVNC frames, so two sessions: two connections to Xvnc. The root window is painted
with ``xsetroot -solid``; a screenshot of each frame's canvas (PNG, decoded here with zlib) must
show that colour, then the next one painted while connected. One frame then goes away: its session
ends alone and the other still shows what is painted next."""

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
from testkit import require_file, require_program, stop_process
from test_pipe import relays  # noqa: F401  (the fixture)
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
    """The remote desktop's canvas in frame *frame*, in the page's CSS pixels."""
    return b.evaluate("""(function () {
        var f = document.getElementById('f%d'), c = f.contentDocument.querySelector('#screen canvas');
        if (!c) return null;
        var o = f.getBoundingClientRect(), r = c.getBoundingClientRect();
        return [Math.round(o.left + r.left), Math.round(o.top + r.top), Math.round(r.width), Math.round(r.height)];
    })()""" % frame)


def shows(b, frame, rgb, tmp_path):
    """True when a screenshot of the frame's canvas is the remote desktop painted *rgb*, pixel for
    pixel (the last screenshot stays in tmp_path for a failure's post-mortem)."""
    x, y, w, h = canvas_rect(b, frame)
    assert (w, h) == (WIDTH, HEIGHT), (w, h)
    shot = base64.b64decode(b.call("Page.captureScreenshot", format="png", clip=dict(
        x=x, y=y, width=w, height=h, scale=1))["data"])
    (tmp_path / ("frame%d.png" % frame)).write_bytes(shot)
    width, height, rows = png_rgb(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    return all(max(abs(p - q) for p, q in zip(px, rgb)) <= 2 for row in rows for px in row)


def status(b, frame):
    return b.evaluate("document.getElementById('f%d').contentDocument.getElementById('status')"
                      ".textContent" % frame)


def test_novnc_in_chromium_sees_the_remote_desktop_one_session_per_frame(relays, tmp_path):
    require_file("/usr/share/novnc/vnc_lite.html", "noVNC")
    chromium = require_program("chromium", find_chromium())
    started = time.monotonic()
    relay = relays("--sessions", "on")
    xvnc = Xvnc(tmp_path)
    agent = Agent(tmp_path, relay, xvnc.port)
    web = browser = None
    try:
        code, key = agent.banner()
        xvnc.paint(COLOURS[0])
        # vnc_lite.html builds ws://HOST:PORT/PATH; PATH carries the room and key, URL-encoded
        src = "/vnc_lite.html?host=%s&port=%d&path=%s" % (
            relay.ws[0], relay.ws[1], "ws%%3Froom%%3D%s%%26key%%3D%s" % (code, key))
        web = StaticNoVNC({"/two.html": page([src, src])})
        browser = Browser(chromium, width=2 * WIDTH + 200, height=HEIGHT + 120)
        browser.set_viewport(2 * WIDTH + 200, HEIGHT + 120)
        browser.navigate("http://127.0.0.1:%d/two.html" % web.port)
        for frame in (0, 1):
            browser.wait_for("document.getElementById('f%d').contentDocument.getElementById('status')"
                             ".textContent === 'Connected to %s'" % (frame, DESKTOP),
                             timeout=unit(20), what="noVNC frame %d connected" % frame)
        assert len(re.findall(r"Connections: accepted", xvnc.log())) == 2, xvnc.log()  # a connection each
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
        assert not browser.errors, browser.errors
        print("noVNC through a session room: %.1fs" % (time.monotonic() - started))
    finally:
        if browser is not None:
            browser.close()
        if web is not None:
            web.stop()
        agent.stop()
        xvnc.stop()
    assert "Traceback" not in agent.log(), agent.log()
