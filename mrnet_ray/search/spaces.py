"""Search spaces by name: the shipped ones (``search_spaces/*.yaml``, package data) or a file.

The top-level ``search_spaces/`` folder of the repository is the package's data directory
(``mrnet_ray/search_spaces`` links to it), so an installed wheel carries the same files and
``--space mrnet`` works wherever the package is installed.

>>> resolve_space("smoke").name
'smoke.yaml'
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

from mrnet_ray.errors import UserError

DEFAULT_SPACE = "mrnet"


def shipped_dir() -> Path:
    """The directory of the shipped spaces (a real directory: packages install as files)."""
    with as_file(files("mrnet_ray") / "search_spaces") as path:
        return Path(path)


def shipped() -> list[str]:
    """Names of the shipped spaces."""
    return sorted(p.stem for p in shipped_dir().glob("*.yaml"))


def resolve_space(name_or_path: str) -> Path:
    """A shipped space name (``mrnet``, ``demo``, ...) or the path of a YAML file."""
    bare = "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml"))
    candidate = shipped_dir() / f"{name_or_path}.yaml"
    if bare and candidate.is_file():
        return candidate.resolve()
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    raise UserError(
        f"--space {name_or_path}: no such file and no shipped space of that name; "
        f"shipped: {', '.join(shipped()) or 'none found'}"
    )
