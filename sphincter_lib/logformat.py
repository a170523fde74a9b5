"""Log formats: ``text`` (one human line) and ``json`` (one JSON object per line, for shippers)."""

import json
import logging
import sys
from datetime import datetime, timezone

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: LogRecord attributes that are not "extra" fields
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg"}`` plus ``exc`` and any ``extra=`` fields, one line."""

    def format(self, record):
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(kind):
    """The :class:`logging.Formatter` for ``--log-format`` (``text`` or ``json``)."""
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(level, fmt="text"):
    """Log to stderr at ``level`` (a ``--log-level`` word) in ``fmt`` (``--log-format``): the
    relay's and ``sphincter connect``'s command lines both start with it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def log_crash(logger, what):
    """A ``link_exception`` callback: ``<what> crashed`` at ERROR on ``logger``, with the traceback.

    Every long-lived greenlet gets one (ARCHITECTURE.md, style 6)."""
    def log(greenlet):
        logger.error("%s crashed", what, exc_info=greenlet.exc_info)
    return log
