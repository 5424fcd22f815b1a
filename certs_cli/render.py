"""What the CLI prints: answers on stdout (short lines and tables for people, raw JSON for
scripts), and everything else (notes, progress, errors) on stderr, so that stdout stays
clean enough to pipe."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Output:
    as_json: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def line(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def note(self, text: str) -> None:
        print(text, file=self.stderr)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2), file=self.stdout)

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.line(table(headers, rows))

    def fields(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """`name   value` lines, skipping values that are absent."""
        shown = [(k, v) for k, v in pairs if v not in (None, "", [], {})]
        width = max((len(k) for k, _ in shown), default=0)
        for name, value in shown:
            self.line(f"{name.ljust(width)}  {value}")

    def progress(self) -> Progress:
        return Progress(self.stderr)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


class Progress:
    """One updating line on a terminal; on anything else (a log, a pipe, CI), one plain line
    each time `key` changes, so that a log shows every step once and not every poll."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        isatty = getattr(stream, "isatty", None)
        self._tty = bool(isatty and isatty())
        self._width = 0
        self._key: object = object()

    def show(self, text: str, key: object = None) -> None:
        if self._tty:
            # Pad over the previous text instead of an escape code: works on every terminal.
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self._stream.flush()
        elif key != self._key:
            self._stream.write(text + "\n")
            self._stream.flush()
        self._key = key

    def done(self) -> None:
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0
