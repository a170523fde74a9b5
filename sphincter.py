#!/usr/bin/env python3
"""Sphincter: a TCP-to-WebSocket relay. Run ``python sphincter.py --help``.

The single-file way to run it, next to ``sphincter_lib/`` (CPython 3.6 to 3.13, with
``requirements.txt``). ``sphincter_lib.__main__.main`` patches the standard library with
gevent before anything else is imported.
"""

import sys

from sphincter_lib.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
