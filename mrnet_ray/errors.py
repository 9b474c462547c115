"""User-facing errors: one clear sentence, no traceback.

Code that reads something a user gave (a path, a YAML file, a dataset layout, audio) raises
:class:`UserError` with a message that names the file or field and the fix. The CLI entry
points wrap ``main`` in :func:`cli` so such errors print as ``error: ...`` on one line and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; its message is the whole report."""


def cli(main: Callable[P, R]) -> Callable[P, R]:
    """Decorate a CLI ``main``: ``UserError`` and a flag's rejected config value
    (:class:`~mrnet_ray.config.ConfigError`) -> one line, exit 2."""
    from mrnet_ray.config import ConfigError

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except (UserError, ConfigError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
