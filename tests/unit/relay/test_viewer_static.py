"""The viewer's static routes: package data, content types, caching, no outside resources."""

import re
import pkgutil

import pytest

from sphincter_lib.relay import viewer


def call(app, path="/", method="GET", query="", **headers):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query}
    environ.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    got = {}

    def start_response(status, hdrs):
        got["status"], got["headers"] = status, dict(hdrs)

    body = b"".join(app(environ, start_response))
    return int(got["status"].split()[0]), got["headers"], body


@pytest.fixture(scope="module")
def routes():
    return viewer.routes()


def test_paths_and_content_types(routes):
    expect = {"/": "text/html; charset=utf-8", "/sphincter.js": "text/javascript; charset=utf-8",
              "/viewer.js": "text/javascript; charset=utf-8", "/viewer.css": "text/css; charset=utf-8"}
    assert set(routes) == set(expect)
    for path, ctype in expect.items():
        status, headers, body = call(routes[path], path)
        assert status == 200 and headers["Content-Type"] == ctype
        assert int(headers["Content-Length"]) == len(body) > 100
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_files_come_from_package_data(routes):
    shipped = pkgutil.get_data("sphincter_lib", "static/sphincter.js")
    assert call(routes["/sphincter.js"])[2] == shipped


def test_etag_revalidation_and_head(routes):
    status, headers, body = call(routes["/sphincter.js"])
    etag = headers["ETag"]
    assert re.match(r'^"[0-9a-f]{20}"$', etag)
    assert headers["Cache-Control"] == "no-cache"
    status, headers304, body = call(routes["/sphincter.js"], if_none_match=etag)
    assert status == 304 and body == b"" and headers304["ETag"] == etag
    assert call(routes["/sphincter.js"], if_none_match='W/%s, "other"' % etag)[0] == 304
    assert call(routes["/sphincter.js"], if_none_match='"other"')[0] == 200
    status, headers, body = call(routes["/"], method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, headers, _ = call(routes["/"], method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_page_links_versioned_assets_cached_for_a_year(routes):
    _, headers, page = call(routes["/"])
    assert headers["Cache-Control"] == "no-cache"
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    links = dict(re.findall(rb'(viewer\.css|viewer\.js|sphincter\.js)\?v=([0-9a-f]+)"', page))
    assert set(links) == {b"viewer.css", b"viewer.js", b"sphincter.js"}
    for name, version in links.items():
        path = "/" + name.decode()
        _, h, _ = call(routes[path], query="v=" + version.decode())
        assert h["Cache-Control"] == "public, max-age=31536000, immutable"
        assert h["ETag"] == '"%s"' % version.decode()
        _, h, _ = call(routes[path], query="v=stale")
        assert h["Cache-Control"] == "no-cache"


def test_no_outside_resources_and_relative_links():
    """Works offline and under a path prefix behind a proxy: no CDN, no absolute links."""
    def static(name):   # package data (pkgutil: importlib.resources.files is 3.9+)
        return pkgutil.get_data("sphincter_lib", "static/" + name).decode("utf-8")

    for name in ("index.html", "viewer.js", "viewer.css"):
        text = static(name)
        assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text), name
        assert not re.search(r"""(src|href)\s*=\s*["']/""", text), name
        assert "@import" not in text and "url(" not in text, name
    page = static("index.html")
    # every form control has a label
    for control in re.findall(r'<input[^>]*id="([^"]+)"', page):
        assert re.search(r'<label[^>]*for="%s"' % control, page) or \
            re.search(r'<label[^>]*>\s*<input[^>]*id="%s"' % control, page), control
    assert '<html lang="en">' in page and 'name="viewport"' in page
