"""Segment rows -> one Parquet shard, row group by row group, inside the prepare job's map.

The map writes its own shards rather than handing segments to ``Dataset.write_parquet``: a
write stage cannot fuse into an actor pool, so every segment would travel through the object
store to a separate write task, and one Ray Data job can then write all three splits into
their own folders. The files are what ``write_parquet`` wrote: the same columns, ``mel`` as
Ray's tensor extension type (``(n_mels, segment_frames)`` float32 per row), dictionaries and
statistics for the small columns only, and the mel column left uncompressed.

Rows are buffered until a row group is full (:data:`ROW_GROUP_BYTES` of mel), so a writer
holds at most one row group and one track, however many tracks go into its file.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.extensions import ArrowTensorArray

SCALAR_COLUMNS = ("track_id", "track_index", "segment", "label", "label_name", "split")
SCALAR_TYPES = (pa.string(), pa.int64(), pa.int32(), pa.int64(), pa.string(), pa.string())
ROW_GROUP_BYTES = 16 << 20
"""Mel bytes per row group (about 250 segments of 128 x 129): the unit a training reader
decodes at once, small enough that a few of them in flight per worker stay well under a
gigabyte, large enough that Parquet's per-group overhead is negligible."""
WRITE_OPTIONS: dict[str, Any] = {
    # Dictionary encoding and min/max statistics of the float mel column cost three to four
    # times the rest of the write and save nothing; keep them for the small columns only.
    "use_dictionary": list(SCALAR_COLUMNS),
    "write_statistics": list(SCALAR_COLUMNS),
    # Nor does Snappy find much to take out of log-mel floats (0.003 % on the benchmark's
    # tones; only long silences, floored at top_db, repeat) for the tenth of the write it costs.
    "compression": {**dict.fromkeys(SCALAR_COLUMNS, "snappy"), "mel": "none"},
}


def rows_per_group(n_mels: int, segment_frames: int) -> int:
    """Segments per row group at these feature sizes (at least one)."""
    return max(1, ROW_GROUP_BYTES // (4 * n_mels * segment_frames))


class ShardWriter:
    """Appends one track's segments at a time to the Parquet file ``path`` on ``fs``.

    The file is opened with the first row group and only exists once something was written;
    :meth:`close` writes what is buffered and finishes the file.
    """

    def __init__(self, fs: pafs.FileSystem, path: str, group_rows: int) -> None:
        self.fs, self.path, self.group_rows = fs, path, group_rows
        self.columns: dict[str, list[Any]] = {c: [] for c in SCALAR_COLUMNS}
        self.mels: list[pa.ExtensionArray] = []
        self.buffered = 0
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._stream: Any = None

    def add(self, track: dict[str, Any], mel: np.ndarray) -> None:
        """One track's segments: ``mel`` is ``(n_segments, n_mels, segment_frames)``;
        ``track`` holds the scalar columns but ``segment``."""
        n = len(mel)
        for name in SCALAR_COLUMNS:
            values = range(n) if name == "segment" else [track[name]] * n
            self.columns[name].extend(values)
        # One C-ordered copy per track, made here (segments may come in another order); the
        # row group then points at the tracks' buffers rather than copying them once more.
        self.mels.append(ArrowTensorArray.from_numpy(mel))  # (n, n_mels, frames) per row
        self.buffered += n
        if self.buffered >= self.group_rows:
            self._flush()

    def close(self) -> None:
        if self.buffered:
            self._flush()
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = self._stream = None

    def abort(self) -> None:
        """Drop what is buffered and remove the file, if one was started."""
        self.columns, self.mels, self.buffered = {c: [] for c in SCALAR_COLUMNS}, [], 0
        if self._writer is None:
            return
        with contextlib.suppress(OSError, pa.ArrowException):
            self._writer.close()
            self._stream.close()
        self._writer = self._stream = None
        with contextlib.suppress(OSError, pa.ArrowException):
            self.fs.delete_file(self.path)

    def _flush(self) -> None:
        types = zip(SCALAR_COLUMNS, SCALAR_TYPES, strict=True)
        arrays = [pa.array(self.columns[c], t) for c, t in types]
        mel = pa.chunked_array(self.mels)  # one chunk per track
        table = pa.Table.from_arrays([*arrays, mel], names=[*SCALAR_COLUMNS, "mel"])
        if self._writer is None:
            self._stream = self.fs.open_output_stream(self.path)
            self._writer = pq.ParquetWriter(self._stream, table.schema, **WRITE_OPTIONS)
        self._writer.write_table(table, row_group_size=len(table))  # one row group
        self.rows += len(table)
        self.columns = {c: [] for c in SCALAR_COLUMNS}
        self.mels, self.buffered = [], 0
