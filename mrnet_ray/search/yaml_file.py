"""Reading a search-space file: YAML 1.2 numbers, every key's line, every mistake together.

Errors name ``FILE:LINE: section.key: problem; fix``; :class:`Problems` collects them so a
file with several mistakes is reported once, in file order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mrnet_ray.errors import UserError


def read_yaml(path: str | Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """The file's plain values and the line of every mapping key (by key path)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(
            f"{path}: cannot read the search space ({e.strerror}); check the path"
        ) from None
    try:
        raw = yaml.load(text, Loader=_Loader)
        lines = _key_lines(yaml.compose(text, Loader=_Loader), str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: not valid YAML ({problem}); fix the syntax") from None
    return raw, lines


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: PyYAML alone reads ``1e-4`` (no dot) as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _key_lines(node: yaml.Node | None, source: str) -> dict[tuple[str, ...], int]:
    """Line of every mapping key, by key path; PyYAML silently keeps the last duplicate."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node, prefix: tuple[str, ...]) -> None:
        if not isinstance(n, yaml.MappingNode):
            return
        for k, v in n.value:
            key = (*prefix, str(k.value))
            if key in lines:
                raise UserError(
                    f"{source}:{k.start_mark.line + 1}: {'.'.join(key)}: given twice; keep one"
                )
            lines[key] = k.start_mark.line + 1
            walk(v, key)

    if node is not None:
        walk(node, ())
    return lines


class Problems:
    """Every mistake found, reported together, in file order."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]):
        self.source, self.lines = source, lines
        self.items: list[tuple[int, str]] = []

    def add(self, where: tuple[str, ...], message: str) -> None:
        line = self.lines.get(where, 0)
        loc = f"{self.source}:{line}" if line else self.source
        self.items.append((line, f"{loc}: {'.'.join(where)}: {message}"))

    def raise_if_any(self) -> None:
        lines = [text for _, text in sorted(self.items, key=lambda item: item[0])]
        if len(lines) == 1:
            raise UserError(lines[0])
        if lines:
            raise UserError(f"{len(lines)} problems in the search space:\n" + "\n".join(lines))
