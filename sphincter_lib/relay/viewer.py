"""The viewer page and the browser client, served from package data.

Routes (all GET/HEAD, on the WebSocket port):

- ``/``              the viewer page (``static/index.html``)
- ``/sphincter.js``  the client library for overlays
- ``/viewer.js``, ``/viewer.css``  the page's own assets

Every response carries a strong ``ETag`` and answers ``If-None-Match`` with 304. The page is
``no-cache`` (always revalidated, so an upgrade shows at once); it links its assets as
``viewer.css?v=<etag>``, and a request whose ``v`` matches the current content is cached for a
year (``immutable``). Anything else (``/sphincter.js`` as embedded by overlays, an old ``v``) is
``no-cache``: revalidation costs one 304. All links are relative, so the page also works under a
path prefix behind a reverse proxy.
"""

import hashlib
import pkgutil
from urllib.parse import parse_qs

__all__ = ["routes", "StaticFiles"]

#: Content type by file suffix; anything not listed here is not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}

#: URL path -> file name in ``sphincter_lib/static``.
PAGES = {
    "/": "index.html",
    "/sphincter.js": "sphincter.js",
    "/viewer.js": "viewer.js",
    "/viewer.css": "viewer.css",
}

#: Assets the page links with a ``?v=`` version tag.
VERSIONED = ("viewer.css", "viewer.js", "sphincter.js")

#: Content-Security-Policy of the page: own scripts and styles only, WebSockets to the same origin.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'")

NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"


def _etag(body):
    return '"%s"' % hashlib.sha256(body).hexdigest()[:20]


def _read(name):
    try:
        from importlib.resources import files          # CPython 3.9+
    except ImportError:                                # 3.6 to 3.8
        return pkgutil.get_data("sphincter_lib", "static/" + name)
    return files("sphincter_lib").joinpath("static").joinpath(name).read_bytes()


class StaticFiles:
    """Loads the static files once and answers requests for them (a WSGI app per path)."""

    def __init__(self, read=_read, pages=PAGES):
        self._files = {}
        for name in set(pages.values()):
            body = read(name)
            self._files[name] = (body, _etag(body))
        index = self._files.get("index.html")
        if index is not None:
            body = index[0]
            for asset in VERSIONED:
                if asset in self._files:
                    tag = self._files[asset][1].strip('"')
                    body = body.replace(b'"%s"' % asset.encode(),
                                        b'"%s?v=%s"' % (asset.encode(), tag.encode()))
            self._files["index.html"] = (body, _etag(body))
        self.pages = pages

    def routes(self):
        return {path: self._app(name) for path, name in self.pages.items()}

    def _app(self, name):
        body, etag = self._files[name]
        ctype = CONTENT_TYPES[name[name.rindex("."):]]

        def app(environ, start_response):
            method = environ.get("REQUEST_METHOD", "GET")
            if method not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed",
                               [("Allow", "GET, HEAD"), ("Content-Length", "0")])
                return [b""]
            headers = [("ETag", etag), ("Cache-Control", self._cache_control(name, environ, etag)),
                       ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]
            if name == "index.html":
                headers.append(("Content-Security-Policy", PAGE_CSP))
            if _matches(environ.get("HTTP_IF_NONE_MATCH", ""), etag):
                start_response("304 Not Modified", headers)
                return [b""]
            headers += [("Content-Type", ctype), ("Content-Length", str(len(body)))]
            start_response("200 OK", headers)
            return [b""] if method == "HEAD" else [body]

        app.__name__ = "static_" + name.replace(".", "_")
        return app

    @staticmethod
    def _cache_control(name, environ, etag):
        if name in VERSIONED:
            version = parse_qs(environ.get("QUERY_STRING", "")).get("v", [""])[0]
            if version and version == etag.strip('"'):
                return IMMUTABLE
        return NO_CACHE


def _matches(if_none_match, etag):
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = [t.strip() for t in if_none_match.split(",")]
    return etag in tags or ("W/" + etag) in tags


def routes():
    """``{path: wsgi_app}`` for the viewer page, its assets and ``/sphincter.js``."""
    return StaticFiles().routes()
