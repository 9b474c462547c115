"""Bulk inference (``predict MODEL --input DIR --output OUT``): Ray Data on the session's Ray,
a folder (and a bucket on a local S3 server) of good, corrupt, empty and too-short files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fixtures.audio import CLASS_HZ, write_clip, write_garbage

from mrnet_ray import predict, storage
from mrnet_ray.export.bundle import CONFIG, load_bundle
from mrnet_ray.features import AudioError
from mrnet_ray.inference import predict as inference

FORMATS = [(".wav", 22050, 1), (".mp3", 44100, 2), (".flac", 16000, 1)]


@pytest.fixture(scope="module")
def skipping_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """``tiny_bundle`` with ``short_clip: skip``: a clip under one segment has no answer."""
    out = tmp_path_factory.mktemp("skipping") / "bundle"
    shutil.copytree(tiny_bundle, out)
    config = json.loads((out / CONFIG).read_text())
    config["feature"]["short_clip"] = "skip"
    (out / CONFIG).write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict[str, Path]:
    """Two folders of clips in three formats, a corrupt, an empty and a too-short file, and a
    file that is not audio (not listed)."""
    root = tmp_path_factory.mktemp("collection")
    files = {}
    for c, (label, hz) in enumerate(CLASS_HZ.items()):
        for i, (suffix, rate, channels) in enumerate(FORMATS):
            path = root / f"disc{i % 2}" / f"{label}-{i}{suffix}"
            files[path.name] = write_clip(path, hz, 2.5 + i, rate, channels, seed=10 * c + i)
    files["corrupt.wav"] = write_garbage(root / "corrupt.wav")
    files["empty.flac"] = root / "empty.flac"
    files["empty.flac"].touch()
    files["short.wav"] = write_clip(root / "disc0" / "short.wav", 440.0, 0.4, 16000)
    (root / "notes.txt").write_text("not audio\n")
    return {"root": root, **files}


def expected_rows(bundle_dir: Path, files: dict[str, Path], k: int) -> dict[str, dict]:
    bundle = load_bundle(bundle_dir)
    out = {}
    for path in files.values():
        try:
            p = inference.predict_file(bundle, path)
            out[str(path)] = {**inference.answer(p, bundle.labels, k), "error": None}
        except AudioError as e:
            out[str(path)] = {"label": None, "prob": None, "top_k": [], "segments": 0,
                              "error": str(e)}  # fmt: skip
    return out


@pytest.mark.slow  # two Ray Data runs: about 10 s, three times that on a busy machine
def test_a_folder_gives_one_row_per_file_as_predict_does(
    ray_session, skipping_bundle, collection, tmp_path, capsys
):
    root = collection["root"]
    files = {k: v for k, v in collection.items() if k != "root"}
    out = tmp_path / "labels.parquet"
    predict.main([str(skipping_bundle), "--input", str(root), "--output", str(out), "--top-k", "2"])
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith(f"{len(files)} files: {len(files) - 3} classified, 3 not")
    rows = pq.read_table(out).to_pylist()
    assert [r["path"] for r in rows] == sorted(str(p) for p in files.values())
    want = expected_rows(skipping_bundle, files, 2)
    for row in rows:
        w = want[row["path"]]
        assert (row["label"], row["segments"], row["error"]) == (
            w["label"], w["segments"], w["error"],
        ), row  # fmt: skip
        if w["label"] is not None:
            assert row["label"] == Path(row["path"]).name.split("-")[0]  # the right class
            assert row["prob"] == pytest.approx(w["prob"], abs=1e-5)
            assert [t["label"] for t in row["top_k"]] == [t["label"] for t in w["top_k"]]
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"corrupt.wav", "empty.flac", "short.wav"}
    assert "cannot decode audio" in errors["corrupt.wav"]
    assert "empty file" in errors["empty.flac"]
    assert "shorter than one 1 s segment" in errors["short.wav"]
    # the same rows as CSV, top_k as JSON text
    csv_out = tmp_path / "labels.csv"
    predict.main([str(skipping_bundle), "--input", str(root), "--output", str(csv_out),
                  "--top-k", "2"])  # fmt: skip
    table = pcsv.read_csv(csv_out).to_pylist()
    assert [r["path"] for r in table] == [r["path"] for r in rows]
    assert [json.loads(r["top_k"]) for r in table] == [r["top_k"] for r in rows]


def test_a_bucket_prefix_is_read_from_the_store(ray_session, tiny_bundle, s3_uri, tmp_path):
    prefix = s3_uri("bulk", "audio")
    fs, base, _ = storage.resolve(prefix)
    fs.create_dir("bulk")
    local = {}
    for label, hz in CLASS_HZ.items():
        local[label] = write_clip(tmp_path / f"{label}.mp3", hz, 2.0, 22050)
        with fs.open_output_stream(f"{base}/{label}.mp3") as f:
            f.write(local[label].read_bytes())
    with fs.open_output_stream(f"{base}/bad.wav") as f:
        f.write(b"RIFF" + bytes(100))
    out = s3_uri("bulk", "out/labels.parquet")
    predict.main([str(tiny_bundle), "--input", prefix, "--output", out])
    out_fs, out_path, _ = storage.resolve(out)
    assert out_fs.get_file_info(out_path).type == pafs.FileType.File
    with out_fs.open_input_file(out_path) as f:
        rows = {Path(r["path"]).name: r for r in pq.read_table(f).to_pylist()}
    assert set(rows) == {"low.mp3", "mid.mp3", "high.mp3", "bad.wav"}
    assert rows["low.mp3"]["path"] == "s3://bulk/audio/low.mp3"
    for label, path in local.items():
        want = expected_rows(tiny_bundle, {label: path}, 3)[str(path)]
        assert rows[f"{label}.mp3"]["label"] == want["label"] == label
    assert rows["bad.wav"]["label"] is None and "cannot decode audio" in rows["bad.wav"]["error"]


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--input", "{root}", "--output", "{tmp}/out.txt"], "name a .parquet or .csv file"),
        (["--input", "{tmp}/none", "--output", "{tmp}/o.csv"], "nothing there; give a folder"),
        (["--input", "{tmp}", "--output", "{tmp}/o.csv"], "no audio files"),
        (["--input", "{root}", "--output", "{tmp}/no/o.csv"], "its folder does not exist"),
        (["--input", "{root}"], "--input DIR and --output OUT.parquet|OUT.csv go together"),
        (["song.wav", "--input", "{root}", "--output", "{tmp}/o.csv"], "not both"),
        (["--input", "{root}", "--output", "{tmp}/o.csv", "--json"], "--json and --segments"),
        ([], "give audio files to classify, or --input"),
    ],
    ids=["suffix", "no-input", "no-audio", "no-folder", "no-output", "both", "json", "nothing"],
)
def test_bad_bulk_arguments_are_one_line(argv, says, tiny_bundle, collection, tmp_path, capsys):
    args = [a.format(root=collection["root"], tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        predict.main([str(tiny_bundle), *args])
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and says in line, line
