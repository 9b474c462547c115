"""Plain-text output for the terminal: aligned tables and compact counts.

>>> print(format_table(["a", "bb"], [["1", "2"], ["333", "4"]]))
a    bb
1    2
333  4
>>> human(1714464), human(18219), human(512)
('1.71M', '18.2k', '512')
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def human(n: float) -> str:
    """Compact count: 18.2k, 1.71M, 3.05G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def printable(name: str | bytes) -> str:
    """A file name as text that prints, encodes and goes into Arrow and JSON anywhere.

    A name that is not UTF-8 (Latin-1 bytes of old archives) reaches Python with surrogate
    escapes (``'caf\\udce9'``), which UTF-8 encoders, pyarrow string columns and terminals
    refuse; its stray bytes become ``\\xNN`` here. Valid names are unchanged.

    >>> printable("caf\\udce9.wav"), printable(b"caf\\xe9.wav"), printable("café.wav")
    ('caf\\\\xe9.wav', 'caf\\\\xe9.wav', 'café.wav')
    """
    if isinstance(name, str):
        try:
            name = os.fsencode(name)
        except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
            return name.encode("utf-8", "backslashreplace").decode("ascii")
    return name.decode("utf-8", "backslashreplace")
