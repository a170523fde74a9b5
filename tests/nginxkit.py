"""nginx, the real program, as a reverse proxy in front of a test server.

``with Nginx(directory, server_body) as proxy:`` writes a minimal nginx.conf
into *directory* (its prefix: pid, logs, temp paths) whose one ``server``
listens on ``127.0.0.1:proxy.port`` and contains *server_body* (``location``
blocks, ``ssl_certificate`` lines ...), starts ``nginx -g 'daemon off;'``,
waits until it accepts connections, and stops it at the end. Skips when nginx
is missing (fails under CI=true: see testkit.require_program).

``Nginx(directory, server_body, stream=True)``: the ``server`` is in a ``stream {}`` block
(TCP proxying; the stream module is loaded when nginx has it as a dynamic module, see
:func:`stream_module`), and nginx is ready once its pid file exists (its ports are bound by
then): a probe connection would reach the upstream.
"""
import os
import shutil
import socket
import subprocess
import time

from testkit import require, require_file, require_program, stop_process, unit

MAIN_CONF = """\
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port}{listen_options};
{body}
  }}
}}
"""

STREAM_CONF = """\
{load_module}
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
stream {{
  server {{
    listen 127.0.0.1:{port}{listen_options};
{body}
  }}
}}
"""


def nginx_binary():
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    return require_program("nginx", path)


def stream_module():
    """The ``load_module`` line nginx needs for ``stream {}`` (Debian: a dynamic module)."""
    built = subprocess.run([nginx_binary(), "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True).stdout
    if "--with-stream=dynamic" not in built:
        require("nginx's stream module", "--with-stream" in built, "nginx built without it")
        return ""
    path = require_file("/usr/lib/nginx/modules/ngx_stream_module.so", "nginx's stream module")
    return "load_module %s;" % path


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Nginx:
    """One nginx process serving ``server { listen 127.0.0.1:port; <server_body> }``."""

    def __init__(self, directory, server_body, listen_options="", stream=False):
        self.binary = nginx_binary()
        self.stream = stream
        self.load_module = stream_module() if stream else ""
        self.dir = str(directory)
        self.body = server_body
        self.listen_options = listen_options     # e.g. " ssl"
        self.port = None
        self.proc = None

    def __enter__(self):
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)                # nginx's workers may run as another user
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write((STREAM_CONF if self.stream else MAIN_CONF).format(
                d=self.dir, port=self.port, body=self.body, listen_options=self.listen_options,
                load_module=self.load_module))
        self.proc = subprocess.Popen([self.binary, "-p", self.dir, "-c", conf, "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + unit(15)
        while True:
            try:
                if self.stream:
                    if not os.path.exists(os.path.join(self.dir, "nginx.pid")):
                        raise OSError("not yet")
                else:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self._stop()
                    said = self.proc.stderr.read().decode(errors="replace")
                    self.proc.stderr.close()
                    raise AssertionError("nginx did not start: %s %s" % (said, self.error_log()))
                time.sleep(0.05)

    def error_log(self):
        path = os.path.join(self.dir, "error.log")
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    def _stop(self):
        stop_process(self.proc)

    def __exit__(self, *exc):
        if self.proc is not None:
            self._stop()
            self.proc.stderr.close()
