"""Classify a whole collection with Ray Data: every audio file under a folder or an object-store
prefix, one output row per file (``predict MODEL --input DIR --output OUT.parquet``).

::

    the files under --input (listed here)
      -> decode + features in Ray tasks (FILES_PER_TASK files each, one CPU): the shared
         frontend, bounded by FeatureConfig.max_track_seconds
      -> the model in an actor pool: one model load per actor, one GPU per actor on a cluster
         with GPUs; the segments of SCORE_FILES files go through it in one pass
      -> rows (path, label, prob, top_k, segments, error), sorted by path
      -> OUT.parquet or OUT.csv, written whole at the end

A file that cannot be classified (unreadable, corrupt, empty, too long, or shorter than a
segment where the model skips such clips) gets a row with the reason in ``error`` and no
label; the others go on. The steps are :mod:`~mrnet_ray.inference.predict`'s, so each row
equals ``predict``'s answer for its file. Ray Data shows its progress while it runs.

On a multi-node cluster a local ``--input`` must be a path every node sees; an ``s3://``
prefix is read by each task from the store.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from mrnet_ray import storage
from mrnet_ray.config import FeatureConfig
from mrnet_ray.datasets import AUDIO_EXTENSIONS
from mrnet_ray.errors import UserError
from mrnet_ray.features import AudioError
from mrnet_ray.inference.predict import (
    absolute_store,
    answer,
    file_segments,
    open_model,
    open_model_info,
    pinned,
    predict_batch,
)
from mrnet_ray.text import printable

FILES_PER_TASK = 8
"""Files per decode task: enough to spread Ray's per-task cost, few enough to share the work."""
SCORE_FILES = 16
"""Files per forward pass of an actor (their segments together)."""
WORKER_BYTES = 512 << 20
"""Memory of a Ray worker with torch and torchaudio loaded, before it decodes anything."""
DECODE_BYTES_PER_SECOND = 48_000 * 4 * 4
"""Memory decoding takes per second of ``max_track_seconds``: the float32 wave at up to
48 kHz, its resampled copy, the spectrogram and the segments, with room to spare."""
MAX_OBJECT_BYTES = 1 << 30
"""Largest object read from an object store into memory (local files decode in blocks)."""
FORMATS = (".parquet", ".csv")
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("prob", pa.float64()),
        ("top_k", pa.list_(pa.struct([("label", pa.string()), ("prob", pa.float64())]))),
        ("segments", pa.int32()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class BulkOptions:
    """What to classify, with which model, and where the rows go."""

    model: str
    input: str
    output: str
    mlflow_uri: str | None = None
    top_k: int = 3
    actors: int | None = None
    """Most model actors; None: one per GPU, else one per CPU but one (Ray Data scales the
    pool between one and this by the backlog)."""


def list_audio(location: str) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem and every audio file under ``location`` (paths within it), sorted."""
    fs, root, shown = storage.resolve(location)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        what = "a file" if info.type == pafs.FileType.File else "nothing"
        raise UserError(f"--input {shown}: {what} there; give a folder or prefix of audio files")
    files = sorted(
        f.path
        for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if f.type == pafs.FileType.File and Path(f.path).suffix.lower() in AUDIO_EXTENSIONS
    )
    if not files:
        raise UserError(f"--input {shown}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in it")
    return fs, files


def _scheme(location: str) -> str:
    """``s3://bucket`` of a URI (its path is then the key), or "" for a local path."""
    return location.split("://", 1)[0] + "://" if "://" in location else ""


def decode_batch(batch: dict[str, np.ndarray], location: str, feature: FeatureConfig) -> dict:
    """Ray task: each file -> its segments as float32 bytes and their count, or its error."""
    fs = storage.resolve(location)[0] if "://" in location else None
    prefix = _scheme(location)
    paths, mels, counts, errors = [], [], [], []
    for path in batch["path"]:
        shown = printable(prefix + path)
        try:
            if fs is None:
                segments = file_segments(path, feature)
            else:
                segments = file_segments(_read_object(fs, path, shown), feature, shown)
            mels.append(segments.tobytes())
            counts.append(len(segments))
            errors.append("")
        except AudioError as e:
            mels.append(b"")
            counts.append(0)
            errors.append(str(e))
        paths.append(shown)
    return {
        "path": np.array(paths, dtype=object),
        "mel": np.array(mels, dtype=object),
        "segments": np.array(counts, dtype=np.int32),
        "error": np.array(errors, dtype=object),
    }


def _read_object(fs: pafs.FileSystem, path: str, shown: str) -> io.BytesIO:
    try:
        size = fs.get_file_info(path).size or 0
        if size > MAX_OBJECT_BYTES:
            raise AudioError(f"{shown}: {size:,} bytes, over the {MAX_OBJECT_BYTES:,} read limit")
        with fs.open_input_file(path) as f:
            return io.BytesIO(f.read())
    except OSError as e:
        raise AudioError(f"{shown}: cannot read it ({e})") from None


class Scorer:
    """Ray Data actor: the model, loaded once; a batch of decoded files -> their rows."""

    def __init__(self, model: str, mlflow_uri: str | None, k: int, gpu: bool) -> None:
        import torch

        if not gpu:
            torch.set_num_threads(1)  # one CPU per actor
        self.bundle = open_model(model, mlflow_uri)
        if gpu:
            self.bundle.model.to("cuda")
        self.k = k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        feature = self.bundle.feature
        shape = (feature.n_mels, feature.segment_frames)
        good = [i for i, e in enumerate(batch["error"]) if not e]
        segments = [
            np.frombuffer(batch["mel"][i], np.float32).reshape(-1, *shape) for i in good
        ]  # each (n_segments, n_mels, frames)
        answers = {}
        if good:
            names = [batch["path"][i] for i in good]
            for i, p in zip(good, predict_batch(self.bundle.model, segments, names), strict=True):
                answers[i] = answer(p, self.bundle.labels, self.k)
        n = len(batch["path"])
        return {
            "path": batch["path"],
            "label": np.array([answers[i]["label"] if i in answers else "" for i in range(n)]),
            "prob": np.array([answers[i]["prob"] if i in answers else np.nan for i in range(n)]),
            "top_k": np.array(
                [json.dumps(answers[i]["top_k"] if i in answers else []) for i in range(n)]
            ),
            "segments": batch["segments"],
            "error": batch["error"],
        }


def _rows_table(frames: list) -> pa.Table:
    """Ray's result batches -> the output table (nulls where a file has no answer)."""
    import pandas as pd

    df = pd.concat(frames, ignore_index=True).sort_values("path", kind="stable")
    failed = df["error"].astype(str) != ""
    return pa.table(
        {
            "path": df["path"].astype(str).tolist(),
            "label": [None if f else x for f, x in zip(failed, df["label"], strict=True)],
            "prob": [None if f else float(x) for f, x in zip(failed, df["prob"], strict=True)],
            "top_k": [json.loads(x) for x in df["top_k"]],
            "segments": df["segments"].astype(int).tolist(),
            "error": [str(x) if f else None for f, x in zip(failed, df["error"], strict=True)],
        },
        schema=SCHEMA,
    )


def write_rows(table: pa.Table, output: str) -> None:
    """The rows as Parquet or CSV (``top_k`` as JSON text), written whole."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    if output.split("?")[0].lower().endswith(".csv"):
        flat = table.set_column(
            table.schema.get_field_index("top_k"),
            "top_k",
            pa.array([json.dumps(x) for x in table["top_k"].to_pylist()], pa.string()),
        )
        pcsv.write_csv(flat, sink)
    else:
        pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    if "://" not in output:
        storage.write_atomic(output, data)
        return
    fs, path, _ = storage.resolve(output)
    with fs.open_output_stream(path) as f:  # one object store PUT: whole or absent
        f.write(data)


def _check_output(output: str) -> None:
    if not output.split("?")[0].lower().endswith(FORMATS):
        raise UserError(f"--output {output}: name a .parquet or .csv file")
    if "://" not in output and not Path(output).expanduser().absolute().parent.is_dir():
        raise UserError(f"--output {output}: its folder does not exist; create it first")


def classify_collection(opts: BulkOptions, say: Callable[[str], None] = print) -> pa.Table:
    """Classify every audio file under ``opts.input`` into ``opts.output``; the rows."""
    import ray

    _check_output(opts.output)
    bundle, info = open_model_info(opts.model, opts.mlflow_uri)  # bad input: one line, no Ray
    _, files = list_audio(opts.input)
    start, started = time.perf_counter(), not ray.is_initialized()
    if started:
        ray.init()  # RAY_ADDRESS joins a cluster
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = ray.cluster_resources().get("CPU", 1)
    actors = opts.actors or (gpus or max(1, int(cpus) - 1))
    k = min(opts.top_k, len(bundle.labels))
    location = opts.input if "://" in opts.input else ""
    ds = ray.data.from_items(
        [{"path": f} for f in files],
        override_num_blocks=max(1, min(len(files), -(-len(files) // FILES_PER_TASK))),
    )
    # The memory request (the decoding bound) also keeps Ray Data from fusing decoding into
    # the model actors, which it does for maps with equal resource requests.
    memory = WORKER_BYTES + int(bundle.feature.max_track_seconds * DECODE_BYTES_PER_SECOND)
    ds = ds.map_batches(
        decode_batch, batch_size=FILES_PER_TASK, batch_format="numpy", num_cpus=1,
        memory=memory, fn_kwargs={"location": location, "feature": bundle.feature},
    )  # fmt: skip
    ds = ds.map_batches(
        Scorer, batch_size=SCORE_FILES, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_cpus=1, num_gpus=1 if gpus else 0,
        fn_constructor_kwargs={"model": pinned(opts.model, info),
                               "mlflow_uri": absolute_store(opts.mlflow_uri),
                               "k": k, "gpu": bool(gpus)},
    )  # fmt: skip
    frames = list(ds.iter_batches(batch_size=None, batch_format="pandas"))
    table = _rows_table(frames)
    write_rows(table, opts.output)
    seconds = time.perf_counter() - start
    failed = sum(e is not None for e in table["error"].to_pylist())
    ray_start = " with Ray's start" if started else ""
    say(
        f"{len(files)} files: {len(files) - failed} classified, {failed} not (their error "
        f"column says why) -> {opts.output}; {seconds:.1f} s{ray_start}, "
        f"{len(files) / seconds:.1f} files/s, {actors} model actor{'s' if actors > 1 else ''}"
        f"{' on GPUs' if gpus else ''}"
    )
    return table
