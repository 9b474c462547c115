"""The demo corpus: a real tiny build (music21 + FluidSynth), its layout, caching and failures."""

from __future__ import annotations

import csv
import json
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mrnet_ray.datasets import SplitOptions
from mrnet_ray.datasets.demo import SIZES, CorpusSize, list_tracks
from mrnet_ray.datasets.demo.__main__ import main
from mrnet_ray.datasets.demo.build import build_corpus
from mrnet_ray.datasets.demo.pool import render_classes
from mrnet_ray.datasets.demo.render import RenderError, RenderJob, render_midi, render_piece
from mrnet_ray.datasets.demo.sources import Source
from mrnet_ray.errors import UserError

FONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"
TUNE = "X:1\nT:scale\nM:4/4\nL:1/4\nQ:1/4=240\nK:C\nCDEF|GABc|cBAG|FEDC|CEGc|cGEC|]\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("demo") / "demo-tiny"
    start = time.monotonic()
    report = build_corpus(root, size="tiny", progress=False)
    assert not report.cached
    return root, time.monotonic() - start


def _split_rows(root: Path) -> dict[str, str]:
    with (root / "split.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "split"]
        return {row["path"]: row["split"] for row in reader}


@pytest.mark.slow
def test_tiny_build_is_real_music_split_by_piece(tiny):
    root, _ = tiny
    rows = _split_rows(root)
    wavs = {p.relative_to(root).as_posix() for p in root.glob("*/*.wav")}
    assert wavs == set(rows)  # split.csv covers every clip, and only clips
    classes = {p.split("/")[0] for p in wavs}
    assert len(classes) >= 6
    piece_splits: dict[str, set[str]] = {}
    for path, split in rows.items():
        piece_splits.setdefault(path.rsplit("__c", 1)[0], set()).add(split)
    assert all(len(s) == 1 for s in piece_splits.values())  # no piece straddles splits
    for label in classes:  # every class has a piece in every split
        assert {rows[p] for p in rows if p.startswith(label + "/")} == {"train", "valid", "test"}

    clip_seconds = SIZES["tiny"].clip_seconds
    for path in sorted(wavs):
        info = sf.info(str(root / path))
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        audio, _ = sf.read(str(root / path), dtype="float32")
        assert len(audio) == round(clip_seconds * 22050)
        rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)))
        assert -23 < rms_db < -17  # normalised near -20 dBFS, i.e. not silent
        assert np.abs(audio).max() < 1.0

    meta = json.loads((root / "corpus.json").read_text())
    assert sorted(meta["classes"]) == sorted(classes)
    for split in ("train", "valid", "test"):
        listed = [p for p, s in rows.items() if s == split]
        assert meta["counts"][split]["clips"] == len(listed)
        pieces = [p for p in meta["pieces"] if p["split"] == split]
        assert meta["counts"][split]["pieces"] == len(pieces)
        assert sum(meta["counts"][split]["per_class"].values()) == len(listed)
    assert sorted(c for p in meta["pieces"] for c in p["clips"]) == sorted(wavs)
    assert meta["settings"]["size"] == "tiny" and "FluidSynth" in meta["credits"]["synthesizer"]
    assert not list(root.parent.glob(".demo-tiny.*"))  # no partial build left beside it


@pytest.mark.slow
def test_second_build_is_a_cached_no_op(tiny, capsys):
    root, first_seconds = tiny
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    start = time.monotonic()
    report = build_corpus(root, size="tiny")
    assert report.cached
    assert time.monotonic() - start < min(2.0, first_seconds / 3)
    assert "already built" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert report.counts["train"]["clips"] > 0 and "train" in report.summary()


@pytest.mark.slow
def test_list_tracks_uses_the_corpus_split(tiny):
    root, _ = tiny
    rows = _split_rows(root)
    listing = list_tracks(root, SplitOptions())
    assert {Path(t.path).relative_to(root).as_posix(): t.split for t in listing.tracks} == rows
    assert all(t.track_id == f"{t.label}/{t.group}__c0" for t in listing.tracks)  # group: piece
    assert len(listing.labels) >= 6 and not listing.skipped
    # a random split still keeps each piece whole (pieces are the groups)
    shuffled = list_tracks(root, SplitOptions(mode="random", seed=3))
    by_piece: dict[str, set[str]] = {}
    for t in shuffled.tracks:
        by_piece.setdefault(t.group or t.path, set()).add(t.split)
    assert all(len(s) == 1 for s in by_piece.values())


def _job(tmp_path: Path, source: Source, **changes) -> RenderJob:
    job = dict(
        source=source,
        corpus_root=str(tmp_path / "corpus"),
        out_dir=str(tmp_path / "out"),
        clip_seconds=1.0,
        max_clips=2,
        instrument_mode="random",
        seed=0,
        fluidsynth="fluidsynth",
        soundfont=FONT,
        timeout_s=30.0,
    )
    return RenderJob(**{**job, **changes})


@pytest.fixture()
def abc_corpus(tmp_path) -> Path:
    """A corpus folder with three good one-tune ABC files and one that is not music."""
    corpus = tmp_path / "corpus" / "tunes"
    corpus.mkdir(parents=True)
    for i in range(3):
        (corpus / f"good{i}.abc").write_text(TUNE.replace("T:scale", f"T:scale {i}"))
    (corpus / "broken.abc").write_text("X:1\nT:no notes at all\nK:C\n")
    return tmp_path


def test_render_piece_writes_normalised_clips(abc_corpus):
    result = render_piece(_job(abc_corpus, Source("tunes", "good0", "tunes/good0.abc", 0)))
    assert result.error is None and len(result.clips) == 2 and len(result.programs) == 1
    audio, sr = sf.read(str(abc_corpus / "out" / result.clips[0]))
    assert sr == 22050 and len(audio) == 22050 and np.sqrt(np.mean(audio**2)) > 0.05


def test_render_timeout_is_a_skip_that_leaves_no_file(abc_corpus):
    job = _job(abc_corpus, Source("tunes", "good1", "tunes/good1.abc", 0), timeout_s=0.001)
    result = render_piece(job)
    assert result.error == "fluidsynth timed out after 0.001 s" and not result.clips
    assert not list((abc_corpus / "out").rglob("*.wav"))


def test_broken_midi_raises_render_error_without_output(tmp_path):
    midi, wav = tmp_path / "broken.mid", tmp_path / "out.wav"
    midi.write_bytes(b"MThd not really a MIDI file")
    with pytest.raises(RenderError, match="fluidsynth"):
        render_midi(
            midi, wav, fluidsynth="fluidsynth", soundfont=FONT, sample_rate=22050, gain=0.5,
            timeout_s=30, max_bytes=10**7,
        )  # fmt: skip
    assert not wav.exists()


def test_failed_pieces_are_replaced_skipped_and_counted(abc_corpus):
    sources = [Source("tunes", "broken", "tunes/broken.abc", 0)]
    sources += [Source("tunes", f"good{i}", f"tunes/good{i}.abc", 0) for i in range(3)]
    queue = deque(_job(abc_corpus, s, max_clips=1) for s in sources)
    ok, failed = render_classes(
        {"tunes": queue}, clips_per_class=3, clips_per_piece=1, workers=2, progress=False
    )
    assert [r.source.piece for r in ok["tunes"]] == ["good0", "good1", "good2"]
    assert [r.source.piece for r in failed] == ["broken"]
    assert failed[0].error.startswith("too short or silent")


def test_pieces_past_the_clip_target_are_dropped_in_candidate_order(abc_corpus):
    sources = [Source("tunes", f"good{i}", f"tunes/good{i}.abc", 0) for i in range(3)]
    queue = deque(_job(abc_corpus, s, max_clips=3) for s in sources)
    # all three start at once (one clip each expected), but good0 alone gives the three clips
    ok, failed = render_classes(
        {"tunes": queue}, clips_per_class=3, clips_per_piece=1, workers=2, progress=False
    )
    assert [r.source.piece for r in ok["tunes"]] == ["good0"] and not failed
    kept = sorted(p.name for p in (abc_corpus / "out").rglob("*.wav"))
    assert kept == ["good0__c0.wav", "good0__c1.wav", "good0__c2.wav"]


def test_build_where_every_render_fails_stops_with_one_line(tmp_path):
    root = tmp_path / "demo"
    with pytest.raises(UserError, match="renders all failed.*timed out") as err:
        build_corpus(root, size="tiny", render_timeout_s=0.001, progress=False)
    assert "\n" not in str(err.value)
    assert not root.exists() and not list(tmp_path.glob("demo.*"))  # no staging left


def test_missing_fluidsynth_is_a_one_line_user_error(tmp_path, capsys):
    with pytest.raises(UserError, match="apt-get install fluidsynth") as err:
        build_corpus(tmp_path / "c", size="tiny", fluidsynth=str(tmp_path / "no-fluidsynth"))
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "c"), "--size", "tiny", "--fluidsynth", "/nonexistent/fs"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: FluidSynth not found")
    assert not (tmp_path / "c").exists()


def test_missing_soundfont_and_foreign_directory_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no-font.sf2: no such file"):
        build_corpus(tmp_path / "c", size="tiny", soundfont=str(tmp_path / "no-font.sf2"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a demo corpus"):
        build_corpus(tmp_path / "mine", size="tiny")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_corpus_size_checks_its_fields():
    with pytest.raises(ValueError, match="clips_per_class=5 must be >= 3 x clips_per_piece=2"):
        CorpusSize(clips_per_class=5, clips_per_piece=2, clip_seconds=5)
    with pytest.raises(UserError, match="--size huge"):
        build_corpus(Path("unused"), size="huge")  # type: ignore[arg-type]
