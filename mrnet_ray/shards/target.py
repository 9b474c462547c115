"""Where one prepare run writes: a local directory or an object-store prefix.

A prepared directory is complete exactly when its ``manifest.json`` exists, and a re-prepare
never takes the old one away before the new one is complete:

- locally, ``DIR`` is built in a staging sibling and renamed into place
  (:func:`mrnet_ray.storage.replace_dir`), so it never appears half-written; staging left by
  a killed run of this host is removed by the next one, which says so;
- on object stores (no atomic rename), each run writes its shards under a new prefix
  ``DIR/shards-<time>-<host>-<pid>-<random>/<split>/`` and then switches ``DIR/manifest.json``
  (one PUT, atomic for readers), whose ``shards`` field names that prefix, last. A run killed
  before the switch leaves the previous manifest and its shards as they were. After the
  switch the shards of the run before the previous one, and those of killed runs of this
  host, are removed; the previous version stays for readers that opened it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from mrnet_ray.datasets import SPLITS
from mrnet_ray.errors import UserError
from mrnet_ray.shards.manifest import MANIFEST
from mrnet_ray.storage import (
    join,
    process_token,
    read_json,
    replace_dir,
    resolve,
    token_in_use,
)

VERSION_PREFIX = "shards-"
"""Names of a run's shard prefix on object stores: ``shards-<time>-<process token>``."""


def _version_name() -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{VERSION_PREFIX}{stamp}-{process_token()}"


def _version_in_use(name: str) -> bool:
    """Whether another run may still be writing shard prefix ``name`` (this process is not:
    it is switching to its own)."""
    token = name.removeprefix(VERSION_PREFIX).partition("-")[2]
    mine = token.rpartition("-")[0] == process_token().rpartition("-")[0]  # host-pid
    return not mine and token_in_use(token)


class Target:
    """The output location of one prepare run."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.fs, self.path, self.uri = resolve(location)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.version = ""
        """This run's shard prefix under ``DIR`` on object stores (set by :meth:`staging`)."""
        self.switched = False
        """Whether ``DIR/manifest.json`` names :attr:`version` yet."""

    @property
    def result(self) -> Path | str:
        return Path(self.path) if self.local else self.uri

    def existing_manifest(self) -> dict | None:
        manifest = read_json(self.fs, f"{self.path}/{MANIFEST}")
        return manifest if isinstance(manifest, dict) else None

    def check_replaceable(
        self, existing: dict | None, dataset: str, root: str, digest: str, force: bool
    ) -> None:
        """UserError unless ``DIR`` is absent, empty, or a prepared directory we may replace.

        A prepared directory of the same dataset and root is rebuilt when its inputs changed;
        one of another dataset needs ``force``; anything else is never touched.
        """
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return
        if info.type != pafs.FileType.Directory:
            raise UserError(f"--out {self.uri}: is a file; choose a directory path")
        if existing is None:
            entries = self.fs.get_file_info(pafs.FileSelector(self.path))
            ours = all(_base(e.path).startswith(VERSION_PREFIX) for e in entries)
            if entries and not (ours and not self.local):  # shards of killed runs are ours
                raise UserError(
                    f"--out {self.uri}: exists and is not a prepared directory (no {MANIFEST}); "
                    "remove it or choose another --out"
                )
            return
        same = (existing.get("dataset"), existing.get("root")) == (dataset, root)
        if not same and not force:
            raise UserError(
                f"--out {self.uri}: holds prepared {existing.get('dataset')} data from "
                f"{existing.get('root')}; pass --force to replace it or choose another --out"
            )
        if existing.get("content_hash") == digest:
            print(f"{self.uri}: up to date, rebuilding as asked (--force)")
        else:
            print(f"{self.uri}: inputs changed since {existing.get('created')}; rebuilding")

    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        """Yield the directory to write into; on success it becomes ``DIR`` (locally) or the
        prefix the new manifest names (object stores); on error it goes."""
        if self.local:
            with replace_dir(self.path) as staging:
                yield str(staging)
            return
        self.version, self.switched = _version_name(), False
        prefix = f"{self.path}/{self.version}"
        self.fs.create_dir(prefix, recursive=True)
        try:
            yield prefix
        except BaseException:
            if not self.switched:  # the new manifest may name it already: then it stays
                with contextlib.suppress(OSError):
                    self.fs.delete_dir(prefix)
            raise

    def write_manifest(self, directory: str, manifest: dict) -> None:
        """Write ``manifest``: into the staging directory locally; on object stores over
        ``DIR/manifest.json``, naming this run's shard prefix, then retire old shards."""
        if self.local:
            with self.fs.open_output_stream(f"{directory}/{MANIFEST}") as f:
                f.write(json.dumps(manifest, indent=1, ensure_ascii=False).encode())
            return
        previous = self.existing_manifest()
        manifest = {**manifest, "shards": self.version}
        with self.fs.open_output_stream(f"{self.path}/{MANIFEST}") as f:  # one PUT: the switch
            f.write(json.dumps(manifest, indent=1, ensure_ascii=False).encode())
        self.switched = True
        self._retire(previous.get("shards", ".") if previous else None)

    def _retire(self, previous: str | None) -> None:
        """Remove shards no manifest needs: all but this run's and the previous run's
        (``"."``: the split folders of a manifest from before shard prefixes), leaving those
        a running process of this host or any other host's process may still be writing."""
        for info in self.fs.get_file_info(pafs.FileSelector(self.path)):
            name = _base(info.path)
            if info.type != pafs.FileType.Directory or name in (self.version, previous):
                continue
            unprefixed = name in SPLITS and previous != "."
            stale = name.startswith(VERSION_PREFIX) and not _version_in_use(name)
            if unprefixed or stale:
                self.fs.delete_dir(info.path)
                print(f"removed {join(self.uri, name)}: shards no manifest names any more")


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
