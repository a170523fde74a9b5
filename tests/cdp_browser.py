"""A real headless Chromium driven over the DevTools protocol (CDP), for the browser tests.

Uses Debian's ``chromium`` (never a downloaded browser) and ``websocket-client``; no webdriver.
Every wait polls with a deadline; JavaScript exceptions thrown by the page are collected in
``Browser.errors`` so a test can assert the page ran clean.
"""

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time

import websocket

#: Flags from the brief: headless, no sandbox (root in CI), and nothing that phones home.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--disable-dev-shm-usage", "--password-store=basic", "--use-mock-keychain", "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
)

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium():
    for path in (os.environ.get("SPHINCTER_CHROMIUM"),) + CANDIDATES:
        if path and os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


class BrowserError(AssertionError):
    pass


class Browser:
    """One Chromium process with one page target."""

    def __init__(self, binary, width=1100, height=800, start_timeout=30.0):
        self.user_dir = tempfile.mkdtemp(prefix="sphincter-chromium-")
        self.log_path = os.path.join(self.user_dir, "chromium.log")
        self._log = open(self.log_path, "wb")
        args = [binary, *CHROMIUM_FLAGS, "--user-data-dir=" + self.user_dir,
                "--window-size=%d,%d" % (width, height), "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self._ids = itertools.count(1)
        self.errors = []
        self.console = []
        self.ws = None
        try:
            port = self._wait_port(start_timeout)
            self.ws = websocket.create_connection(self._page_ws_url(port, start_timeout),
                                                  timeout=start_timeout, suppress_origin=True)
            self.call("Runtime.enable")
            self.call("Page.enable")
        except Exception:
            self.close()
            raise

    # -- startup ---------------------------------------------------------------------------
    def _wait_port(self, timeout):
        path = os.path.join(self.user_dir, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError("chromium exited with %s: %s" % (self.proc.returncode, self.log_tail()))
            try:
                with open(path) as f:
                    first = f.readline().strip()
                if first:
                    return int(first)
            except OSError:
                pass
            time.sleep(0.05)
        raise BrowserError("chromium did not open its DevTools port in %ss: %s" % (timeout, self.log_tail()))

    def _page_ws_url(self, port, timeout):
        import urllib.request
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=5) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.05)
        raise BrowserError("chromium has no page target")

    def log_tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    # -- protocol --------------------------------------------------------------------------
    def call(self, method, timeout=30.0, **params):
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError("no answer to %s in %ss" % (method, timeout))
            self.ws.settimeout(remaining)
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise BrowserError("%s failed: %s" % (method, msg["error"]))
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg):
        method = msg.get("method")
        params = msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.errors.append(d.get("exception", {}).get("description") or d.get("text"))
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append((params.get("type"), text))

    def evaluate(self, expression, await_promise=False, timeout=30.0):
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                           returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in result:
            d = result["exceptionDetails"]
            raise BrowserError("JS error in %r: %s" % (expression[:80], d.get("exception", {}).get(
                "description") or d.get("text")))
        return result.get("result", {}).get("value")

    def wait_for(self, expression, timeout=15.0, interval=0.05, what=None):
        """Poll ``expression`` until it is truthy; return its value. Fails with the page's state."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise BrowserError("timed out after %ss waiting for %s (last value %r); page says: %s" % (
            timeout, what or expression, value, self.text()[:600]))

    def navigate(self, url, timeout=15.0):
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'",
                      timeout=timeout, what="page load of " + url)

    def text(self):
        try:
            return self.evaluate("document.body ? document.body.innerText : ''") or ""
        except Exception as exc:  # diagnostics only
            return "<no text: %s>" % exc

    def set_viewport(self, width, height, scale=1, mobile=False):
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=scale, mobile=mobile)

    def screenshot(self, path, full_page=False):
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    # -- teardown --------------------------------------------------------------------------
    def close(self):
        if self.ws is not None:
            try:
                self.call("Browser.close", timeout=5)
            except Exception:
                pass
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log.close()
        shutil.rmtree(self.user_dir, ignore_errors=True)
