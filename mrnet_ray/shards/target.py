"""Where one prepare run writes: a local directory or an object-store prefix.

A prepared directory is complete exactly when its ``manifest.json`` exists. Locally it is
built in a staging sibling and renamed into place (:func:`mrnet_ray.storage.replace_dir`), so
``DIR`` never appears half-written; on object stores (no atomic rename) the files go straight
to ``DIR`` and the manifest is removed first and written last.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from mrnet_ray.errors import UserError
from mrnet_ray.shards.manifest import MANIFEST
from mrnet_ray.storage import read_json, replace_dir, resolve


class Target:
    """The output location of one prepare run."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.fs, self.path, self.uri = resolve(location)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

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
            if self.fs.get_file_info(pafs.FileSelector(self.path)):
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
        """Yield the directory to write into; on success it becomes ``DIR``, on error it goes."""
        if not self.local:
            if self.existing_manifest() is not None:
                self.fs.delete_file(f"{self.path}/{MANIFEST}")
            self.fs.create_dir(self.path, recursive=True)
            self.fs.delete_dir_contents(self.path, missing_dir_ok=True)
            yield self.path
            return
        with replace_dir(self.path) as staging:
            yield str(staging)

    def write_manifest(self, directory: str, manifest: dict) -> None:
        with self.fs.open_output_stream(f"{directory}/{MANIFEST}") as f:
            f.write(json.dumps(manifest, indent=1, ensure_ascii=False).encode())
