"""Files and directories that are never seen half-written, locally or on object stores.

Locations are local paths or URIs (``s3://bucket/prefix?endpoint_override=...``), opened
through ``pyarrow.fs`` (:func:`resolve`, :func:`join`, :func:`read_json`).

Everything mrnet_ray writes for others to read appears whole or not at all:

- :func:`write_atomic` writes a file through a unique temporary sibling, flushed to disk,
  then renamed over the target (and the directory flushed), so two writers never share a
  temporary file and a crash leaves the old file or the new one;
- :func:`replace_dir` builds a directory in a sibling ``NAME.tmp-<host>-<pid>-<random>`` that
  replaces ``NAME`` when complete (prepared data, model bundles, the demo corpus). Staging
  directories left by a killed process of this host are removed by the next run, which says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from mrnet_ray.errors import UserError


def resolve(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str, str]:
    """``(filesystem, path within it, display URI)`` for a local path or a ``scheme://`` URI."""
    text = os.fspath(location)
    if "://" in text:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pafs.ArrowInvalid, OSError) as e:  # type: ignore[attr-defined]
            raise UserError(f"{text}: cannot open this location ({e})") from None
        return fs, path.rstrip("/"), text.rstrip("/")
    path = str(Path(text).expanduser().resolve())
    return pafs.LocalFileSystem(), path, path


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI, keeping a URI's ``?query`` (pyarrow's
    ``endpoint_override=...`` and the like) at the end.

    >>> join("s3://bucket/runs?endpoint_override=h:9000", "demo", "train")
    's3://bucket/runs/demo/train?endpoint_override=h:9000'
    >>> join("/data/runs/", "demo")
    '/data/runs/demo'
    """
    path, sep, query = base.partition("?")
    return "/".join([path.rstrip("/"), *parts]) + sep + query


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """Parsed JSON at ``path``, or None if there is no such file or it does not parse."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        try:
            return json.loads(f.read().decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


def read_bytes(location: str) -> bytes | None:
    """The bytes of the file or object at ``location``, or None if there is none."""
    fs, path, _ = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write ``data`` to ``location``, whole or not at all: a local path through
    :func:`write_atomic`, an object in one upload (an object store shows it only once complete)."""
    if "://" not in location:
        write_atomic(location, data)
        return
    fs, path, _ = resolve(location)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def delete(location: str) -> None:
    """Remove the file or object at ``location``, if there is one."""
    fs, path, _ = resolve(location)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename into it) to disk; a no-op where that is unsupported."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk."""
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(directory))


def process_token() -> str:
    """``<host>-<pid>-<random>``: unique, and says which process of which host made it."""
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a unique temporary sibling, flushed, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{process_token()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(host: str, pid: str) -> bool:
    """Whether staging of ``host``/``pid`` may still be in use (always, for other hosts)."""
    here = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32]
    if host != here or not pid.isdigit():
        return True
    return pid_alive(int(pid))


def token_in_use(token: str) -> bool:
    """Whether the process a :func:`process_token` names may still be running (always, for
    another host's: there is no asking it)."""
    host, _, rest = token.partition("-")
    return _alive(host, rest.partition("-")[0])


def stale_staging(target: Path) -> list[Path]:
    """Remove the staging and moved-aside siblings of ``target`` that a killed process of
    this host left behind; returns what was removed."""
    removed = []
    for kind in ("tmp", "old"):
        for path in target.parent.glob(f"{target.name}.{kind}-*"):
            if not token_in_use(path.name.removeprefix(f"{target.name}.{kind}-")):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@contextlib.contextmanager
def replace_dir(target: str | os.PathLike[str], *, quiet: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; when the block ends normally it is
    flushed to disk and replaces ``target`` (an older one is moved aside first and removed
    after); when it raises, it is removed. Stale staging of killed runs is cleaned first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for path in stale_staging(target):
        if not quiet:
            print(f"removed {path}, left by an interrupted run")
    staging = target.parent / f"{target.name}.tmp-{process_token()}"
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.parent / f"{target.name}.old-{process_token()}"
    if target.exists():
        target.rename(old)
    staging.rename(target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
