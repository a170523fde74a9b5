"""The entry point of every way to run Sphincter.

- ``python sphincter.py`` (the single file, next to ``sphincter_lib/``),
- ``python -m sphincter_lib``,
- ``sphincter``, the command that ``pip install .`` / ``pipx install .`` creates
  (``console_scripts`` in setup.cfg: ``sphincter_lib.__main__:main``),
- the one-file release binary (PyInstaller, built from ``sphincter.py``).

:func:`main` monkey-patches the standard library with gevent before it imports anything
else: importing this module (or the package, whose ``__init__`` has no imports) pulls in
nothing but ``sys``. The rest of the package never patches.
"""

import sys


def main(argv=None):
    """Patch, then run the command line; returns the exit status."""
    from gevent import config as gevent_config
    from gevent import monkey

    monkey.patch_all()  # first, before anything else imports socket/ssl/threading
    # Greenlets need not record who spawned them (a captured stack per subscriber session).
    gevent_config.track_greenlet_tree = False

    from sphincter_lib import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
