"""Errors and other text as one line, for logs, dead-letter reasons and the CLI's stderr."""

from __future__ import annotations


def one_line(what: BaseException | str, limit: int = 200, *, kind: bool = True) -> str:
    """``what`` on one line (whitespace collapsed), at most ``limit`` characters.

    An exception reads ``Type: message`` (``kind=False``: the message alone, or the type's
    name when the message is empty: ``TimeoutError()`` says nothing by itself)."""
    if isinstance(what, BaseException):
        text = " ".join(str(what).split())
        if kind:
            text = f"{type(what).__name__}: {text}" if text else type(what).__name__
        else:
            text = text or type(what).__name__
    else:
        text = " ".join(what.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
