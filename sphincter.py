#!/usr/bin/env python3
"""Sphincter: a TCP-to-WebSocket relay. Run ``python sphincter.py --help``."""

from gevent import monkey

monkey.patch_all()  # first, before anything else imports socket/ssl/threading

import sys  # noqa: E402

from sphincter_lib import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.main())
