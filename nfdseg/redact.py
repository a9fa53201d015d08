"""The one place a stream URL's credentials are hidden: every error message (NfdsegError), log record (the CLI's
handler filter), JSON summary and manifest field that can hold a URL goes through `redact`."""

from __future__ import annotations

import logging
import re
from typing import Any

# scheme://user[:password]@host -> scheme://***@host, wherever it appears in a text (quoted in an exception, in a
# list, ...). The user part stops at the first '/', '@' or blank, so a path with '@' later on is left alone.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")


def redact(value: Any) -> Any:
    """`value` with every URL's user:password replaced by ***; strings, lists, tuples and dicts (recursively)."""
    if isinstance(value, str):
        return _USERINFO.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's final message (args included) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error report
            return True
        safe = redact(message)
        if safe != message:
            record.msg, record.args = safe, None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Put RedactingFilter on every handler of `logger` (default: the root logger), once each."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
