"""Shared fixtures: real audio trees in each dataset's layout, one Ray session, tiny prepared data.

Sections: environment, audio synthesis, dataset trees (folder, GTZAN, FMA, Melon), Ray and
prepared data. Trees are session-scoped (built once, read-only for tests); a test that needs
to change files copies a tree first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# ---- environment (before Ray is imported anywhere) -------------------------------------------

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Train worker groups that cannot start (e.g. CPU deadlock on 2 cores) fail in 30 s, not 60.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
# Ray starts workers at nice 15; next to other busy processes they then barely run and tests
# crawl or time out. Nice 0 gives them a fair share of the CPU.
os.environ.setdefault("RAY_worker_niceness", "0")
# s3:// tests talk to a local moto server; fake credentials (inherited by Ray workers, which
# start with the session) keep the AWS SDK from looking anywhere else for them.
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_key, _value)

# ---- audio synthesis ------------------------------------------------------------------------

CLASS_HZ = {"low": 110.0, "mid": 440.0, "high": 1760.0}
"""Folder-tree classes and their fundamental: spectra differ by class, so models can learn."""


def synth(hz: float, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A harmonic tone at ``hz`` with vibrato, a slow swell and a little noise -> (samples, ch)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f = hz * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))  # vibrato
    phase = 2 * np.pi * np.cumsum(f) / rate
    tone = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t)
    mono = 0.25 * tone * swell + 0.02 * rng.standard_normal(t.size)
    return np.stack([mono * (1 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_clip(
    path: Path, hz: float, seconds: float, rate: int, channels: int = 1, seed: int = 0
) -> Path:
    """Write a synthetic clip; the format follows the suffix (wav, flac, mp3, ogg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synth(hz, seconds, rate, channels, seed), rate)
    return path


def write_garbage(path: Path, seed: int = 0) -> Path:
    """Bytes that no decoder accepts, under an audio name (a corrupt download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x00" + np.random.default_rng(seed).bytes(4000))
    return path


# ---- folder tree ----------------------------------------------------------------------------

FOLDER_FORMATS = [  # (suffix, sample rate, channels): every decoder path, stereo, resampling
    (".wav", 22050, 1),
    (".flac", 44100, 2),
    (".mp3", 22050, 1),
    (".OGG", 22050, 2),
    (".wav", 44100, 2),
    (".flac", 16000, 1),
    (".mp3", 44100, 2),
    (".ogg", 16000, 1),
]


@dataclass(frozen=True)
class AudioTree:
    """``ROOT/<label>/*`` with good clips of each class plus the bad inputs prepare must survive."""

    root: Path
    good: dict[str, list[Path]]
    corrupt: Path
    """Garbage bytes named ``.wav``."""
    empty: Path
    """A zero-length ``.wav``."""
    short: Path
    """A 0.4 s clip: shorter than the tiny 1 s segment."""
    empty_label: Path
    """A label folder holding no audio."""


@pytest.fixture(scope="session")
def audio_folder(tmp_path_factory: pytest.TempPathFactory) -> AudioTree:
    """Three classes x 8 clips of 4-6 s in wav/flac/mp3/ogg, 16-44.1 kHz, mono and stereo."""
    root = tmp_path_factory.mktemp("folder")
    good: dict[str, list[Path]] = {}
    for c, (label, hz) in enumerate(CLASS_HZ.items()):
        good[label] = [
            write_clip(
                root / label / f"{label}_{i:02d}{suffix}", hz, 4 + i % 3, rate, ch, 10 * c + i
            )
            for i, (suffix, rate, ch) in enumerate(FOLDER_FORMATS)
        ]
    corrupt = write_garbage(root / "low" / "corrupt.wav")
    empty = root / "mid" / "empty.wav"
    empty.touch()
    short = write_clip(root / "high" / "short.wav", CLASS_HZ["high"], 0.4, 22050)
    empty_label = root / "silence"
    empty_label.mkdir()
    (empty_label / "notes.txt").write_text("no audio here\n")
    return AudioTree(root, good, corrupt, empty, short, empty_label)


# ---- GTZAN tree -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GtzanTree:
    root: Path
    """The dataset root: holds ``genres/<genre>/<genre>.000NN.wav``."""
    splits: dict[str, str]
    """Relative path ``genre/genre.000NN.wav`` -> split of the fault-filtered lists."""
    unlisted: list[str]
    """Files on disk that the fault-filtered lists leave out."""
    corrupt: str
    """``jazz/jazz.00054.wav``: garbage bytes, as in common copies."""


@pytest.fixture(scope="session")
def gtzan_tree(tmp_path_factory: pytest.TempPathFactory) -> GtzanTree:
    """Three genres x (2 train + 1 valid + 1 test + 1 unlisted, but blues has none) 2 s clips,
    plus a corrupt jazz.00054."""
    from importlib.resources import files

    lists = files("mrnet_ray.datasets") / "splits" / "gtzan"
    listed: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        for line in (lists / f"{split}_filtered.txt").read_text().split():
            listed[line] = split
    root = tmp_path_factory.mktemp("gtzan")
    splits: dict[str, str] = {}
    unlisted: list[str] = []
    for g, (genre, hz) in enumerate({"blues": 196.0, "jazz": 523.0, "pop": 1318.0}.items()):
        names = [f"{genre}/{genre}.{i:05d}.wav" for i in range(100)]
        chosen = [n for n in names if listed.get(n) == "train" and n != "jazz/jazz.00054.wav"][:2]
        chosen += [n for n in names if listed.get(n) == "valid"][:1]
        chosen += [n for n in names if listed.get(n) == "test"][:1]
        splits.update({n: listed[n] for n in chosen})
        left_out = [n for n in names if n not in listed][:1]  # blues has none
        unlisted += left_out
        for i, name in enumerate(chosen + left_out):
            write_clip(root / "genres" / name, hz, 2.0, 22050, seed=100 * g + i)
    write_garbage(root / "genres" / "jazz" / "jazz.00054.wav")
    return GtzanTree(root, splits, unlisted, "jazz/jazz.00054.wav")


# ---- FMA tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FmaTree:
    root: Path
    tracks: dict[int, dict]
    """track id -> {"split", "subset", "genre"} as written to tracks.csv."""
    no_genre: int
    missing_audio: int
    corrupt: int


@pytest.fixture(scope="session")
def fma_tree(tmp_path_factory: pytest.TempPathFactory) -> FmaTree:
    """tracks.csv with FMA's real three-line header and mp3s under fma_<subset>/<tid//1000>/."""
    import pandas as pd

    root = tmp_path_factory.mktemp("fma")
    genres = {"Hip-Hop": 220.0, "Rock": 880.0}
    tracks: dict[int, dict] = {}
    tid = 2
    for subset in ("small", "medium"):
        for genre in genres:
            for split in ("training", "training", "validation", "test"):
                tracks[tid] = {"split": split, "subset": subset, "genre": genre}
                tid += 997  # ids spread over several <tid//1000> folders
    no_genre, missing_audio, corrupt = tid, tid + 1, tid + 2
    tracks[no_genre] = {"split": "training", "subset": "small", "genre": None}
    tracks[missing_audio] = {"split": "training", "subset": "small", "genre": "Rock"}
    tracks[corrupt] = {"split": "test", "subset": "small", "genre": "Hip-Hop"}
    tracks[tid + 3] = {"split": "training", "subset": "large", "genre": "Rock"}

    columns = pd.MultiIndex.from_tuples(
        [("album", "title"), ("set", "split"), ("set", "subset"), ("track", "genre_top"),
         ("track", "title")]
    )  # fmt: skip
    rows = [
        [f"album {t}", v["split"], v["subset"], v["genre"], f"track {t}"] for t, v in tracks.items()
    ]
    frame = pd.DataFrame(rows, index=pd.Index(list(tracks), name="track_id"), columns=columns)
    (root / "fma_metadata").mkdir()
    frame.to_csv(root / "fma_metadata" / "tracks.csv")

    for t, v in tracks.items():
        if t in (missing_audio, no_genre) or v["subset"] == "large":
            continue
        path = root / f"fma_{v['subset']}" / f"{t // 1000:03d}" / f"{t:06d}.mp3"
        if t == corrupt:
            write_garbage(path, seed=t)
        else:
            write_clip(path, genres[v["genre"]], 2.0, 44100, channels=2, seed=t)
    return FmaTree(root, tracks, no_genre, missing_audio, corrupt)


# ---- Melon tree -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MelonTree:
    root: Path
    kept: dict[int, str]
    """Song id -> major genre code of the single-genre songs with arrays."""
    multi_genre: int
    missing_array: int
    bad_shape: int


@pytest.fixture(scope="session")
def melon_tree(tmp_path_factory: pytest.TempPathFactory) -> MelonTree:
    """arena_mel/<id//1000>/<id>.npy (48 x frames) + song_meta.json + genre_gn_all.json."""
    root = tmp_path_factory.mktemp("melon")
    names = {"GN0100": "발라드", "GN0101": "세부장르전체", "GN0200": "댄스", "GN0300": "랩/힙합"}
    (root / "genre_gn_all.json").write_text(json.dumps(names, ensure_ascii=False))
    rng = np.random.default_rng(0)
    kept: dict[int, str] = {}
    songs = []
    for i in range(12):
        song_id = i * 450  # several arena_mel/<id//1000> folders
        code = ("GN0100", "GN0200", "GN0300")[i % 3]
        kept[song_id] = code
        songs.append({"id": song_id, "song_gn_gnr_basket": [code], "song_name": f"s{i}"})
    multi_genre, missing_array, bad_shape = 9001, 9002, 9003
    songs += [
        {"id": multi_genre, "song_gn_gnr_basket": ["GN0100", "GN0200"], "song_name": "m"},
        {"id": missing_array, "song_gn_gnr_basket": ["GN0200"], "song_name": "x"},
        {"id": bad_shape, "song_gn_gnr_basket": ["GN0300"], "song_name": "b"},
        {"id": 9004, "song_gn_gnr_basket": [], "song_name": "no genre"},
    ]
    (root / "song_meta.json").write_text(json.dumps(songs, ensure_ascii=False))
    for song in songs:
        sid = song["id"]
        if sid == missing_array:
            continue
        frames = 1876 if sid == 0 else 200 + sid % 150
        level = 1.0 + ("GN0100", "GN0200", "GN0300").index(kept.get(sid, "GN0100"))
        mel = (level + 0.1 * rng.standard_normal((48, frames))).astype(np.float32)
        if sid == bad_shape:
            mel = mel[:40]
        path = root / "arena_mel" / str(sid // 1000) / f"{sid}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, mel)
    return MelonTree(root, kept, multi_genre, missing_array, bad_shape)


# ---- object store ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_uri():
    """``s3_uri(bucket, key) -> URI`` of a local moto S3 server (pyarrow's URI options)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http&allow_bucket_creation=true"
    yield lambda bucket, key: f"s3://{bucket}/{key}?{options}"
    server.stop()


# ---- Ray and prepared data ------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole session (2 CPUs, dashboard on: Train V2 needs it).

    Its workers are told their dashboard's address, as ``mrnet_ray.search.init_ray`` does:
    with other Ray instances on the machine, Ray Train's placement-group cleaner cannot find
    it, and the CPUs of trials Tune stopped would stay reserved for the whole session.
    """
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    ray.init(
        num_cpus=2, object_store_memory=1 << 30, ignore_reinit_error=True,
        dashboard_port=port, runtime_env={"env_vars": dashboard},
    )  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_feature():
    """16 kHz, 32 mel bands, hop 256, 1 s segments of 62 frames: seconds of CPU per test."""
    from mrnet_ray.config import FeatureConfig

    return FeatureConfig(
        sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, segment_seconds=1.0,
        segment_hop_seconds=1.0,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_prepared(ray_session, audio_folder, tiny_feature, tmp_path_factory) -> Path:
    """The folder tree prepared for real (seeded 60/20/20 split); treat it as read-only."""
    from mrnet_ray.datasets import SplitOptions
    from mrnet_ray.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "tiny"
    opts = SplitOptions(seed=0, valid_fraction=0.2, test_fraction=0.2)
    return Path(prepare("folder", audio_folder.root, out, opts, tiny_feature))
