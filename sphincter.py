#!/usr/bin/env python3
"""Sphincter: a TCP-to-WebSocket relay. Run ``python sphincter.py --help``."""

from gevent import config as gevent_config
from gevent import monkey

monkey.patch_all()  # first, before anything else imports socket/ssl/threading
# Greenlets need not record who spawned them (a captured stack per subscriber session).
gevent_config.track_greenlet_tree = False

import sys  # noqa: E402

from sphincter_lib import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.main())
