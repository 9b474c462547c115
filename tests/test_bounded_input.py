"""Hostile audio: bounded decoding of lying headers and overlong tracks, from paths and
uploads (file-like objects), through the frontend, prepare and predict."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
from fixtures.audio import write_clip, write_lying_flac

from mrnet_ray import features
from mrnet_ray.config import FeatureConfig

CFG = FeatureConfig(
    sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, segment_seconds=1.0,
    segment_hop_seconds=1.0, max_track_seconds=10.0,
)  # fmt: skip


def test_lying_flac_is_refused_before_reading_with_flat_memory(tmp_path):
    """A 4 KB FLAC claiming 2^35 samples (128 GiB as float32): refused from its header, from a
    path and from an upload, while the process's peak RSS stays where it was."""
    lying = write_lying_flac(tmp_path / "lying.flac")
    good = write_clip(tmp_path / "good.flac", 440.0, 2.0, 44100, channels=2)
    assert lying.stat().st_size < 8192 and sf.info(lying).frames == 2**35
    script = textwrap.dedent(
        f"""
        import io, json, resource, sys
        from mrnet_ray import features
        from mrnet_ray.config import FeatureConfig
        cfg = FeatureConfig()
        features.audio_to_segments({str(good)!r}, cfg)  # warm: imports, transforms, decoder
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        errors = []
        for source in ({str(lying)!r}, io.BytesIO(open({str(lying)!r}, "rb").read())):
            try:
                features.audio_to_segments(source, cfg, name="upload.flac")
            except features.AudioError as e:
                errors.append(str(e))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"errors": errors, "kib": [before, after]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = result["kib"]
    assert after - before < 32 * 1024, result  # KiB: no more than 32 MB above the warm peak
    path_error, upload_error = result["errors"]
    assert path_error.startswith(f"{lying}: its header declares 1,558,265 s of audio")
    assert "over the 600 s limit (FeatureConfig.max_track_seconds)" in path_error
    assert upload_error.startswith("upload.flac: its header declares")


def test_running_out_of_memory_is_one_files_error_and_the_next_file_decodes(tmp_path):
    """A real MemoryError: the process's address space capped (RLIMIT_AS) a little above what
    it holds, then a 5-minute track (within the limit) decoded; then a short one."""
    rate = 44100
    wave = (0.1 * np.sin(np.arange(rate * 300) * 0.01)).astype(np.float32)
    sf.write(tmp_path / "long.wav", wave, rate, subtype="PCM_16")  # 26 MB; 53 MB as float32
    short = write_clip(tmp_path / "short.wav", 440.0, 4.0, rate)
    script = textwrap.dedent(
        f"""
        import json, resource
        from mrnet_ray import features
        from mrnet_ray.config import FeatureConfig
        cfg = FeatureConfig()
        features.audio_to_segments({str(short)!r}, cfg)  # warm: imports, transforms, decoder
        pages = int(open("/proc/self/statm").read().split()[0])
        cap = pages * resource.getpagesize() + 32 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))
        try:
            features.audio_to_segments({str(tmp_path / "long.wav")!r}, cfg)
            error = None
        except features.AudioError as e:
            error = str(e)
        print(json.dumps([error, len(features.audio_to_segments({str(short)!r}, cfg))]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    error, segments = json.loads(out.stdout.strip().splitlines()[-1])
    assert error == f"{tmp_path / 'long.wav'}: out of memory decoding it; lower max_track_seconds"
    assert segments == 1


def test_tracks_over_the_limit_and_headers_over_the_data(tmp_path):
    long = write_clip(tmp_path / "long.wav", 440.0, 12.0, 16000)
    with pytest.raises(features.AudioError, match=r"long\.wav: its header declares 12 s .*10 s"):
        features.audio_to_segments(long, CFG)
    assert features.audio_to_segments(long, CFG.replace(max_track_seconds=12.0)).shape[0] == 12
    # a header claiming a little more than the file holds (under the limit): FLAC cannot
    # decode past its data, one clear error instead of the 128 GiB allocation
    overstated = write_lying_flac(tmp_path / "over.flac", claimed=3000)
    with pytest.raises(features.AudioError, match=r"over\.flac: cannot decode audio"):
        features.load_audio(overstated, 16000)
    understated = write_lying_flac(tmp_path / "under.flac", claimed=1000)
    assert len(features.load_audio(understated, 22050)) == 1000  # what the header admits to


def test_blocks_decode_exactly_what_a_whole_read_gives(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "stereo.flac", 440.0, 3.0, 44100, channels=2)
    whole, _ = sf.read(path, dtype="float32")
    monkeypatch.setattr(features, "BLOCK_SAMPLES", 5000)  # 2,500 frames a block: 53 blocks
    wave = features.load_audio(path, 44100)
    np.testing.assert_array_equal(wave, whole.mean(axis=1))


def test_uploads_decode_like_files_and_errors_name_them(tmp_path):
    path = write_clip(tmp_path / "clip.ogg", 440.0, 2.5, 22050, channels=2)
    body = io.BytesIO(path.read_bytes())
    np.testing.assert_array_equal(
        features.audio_to_segments(body, CFG, name="request 7"),
        features.audio_to_segments(path, CFG),
    )
    cases = {
        b"": "request 7: empty file",
        b"RIFF\x00\x00" + bytes(range(256)) * 4: "request 7: cannot decode audio",
        write_lying_flac(tmp_path / "l.flac").read_bytes(): "request 7: its header declares",
    }
    for data, words in cases.items():
        with pytest.raises(features.AudioError, match=words):
            features.audio_to_segments(io.BytesIO(data), CFG, name="request 7")
    with pytest.raises(features.AudioError, match="^<audio>: empty file"):
        features.load_audio(io.BytesIO(), 16000)


@pytest.fixture(scope="module")
def untrained_bundle(tmp_path_factory, tiny_feature):
    """A bundle of an untrained tiny MRNet over the three test classes."""
    import torch

    from mrnet_ray.config import MRNetConfig, TrialConfig
    from mrnet_ray.export.bundle import export_bundle
    from mrnet_ray.nn import build_model

    model = MRNetConfig(
        n_mels=tiny_feature.n_mels, n_classes=3, channels=16, res2_scale=4, dilations=(2,),
        route_depths=((1,),), se_channels=8, attention_channels=8, embedding_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    trial = TrialConfig(model=model)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return export_bundle(out, build_model(model).eval(), trial, tiny_feature, ("a", "b", "c"))


def test_predict_reports_a_lying_file_in_one_line_and_goes_on(untrained_bundle, tmp_path, capsys):
    from mrnet_ray import predict

    lying = write_lying_flac(tmp_path / "lying.flac")
    good = write_clip(tmp_path / "good.wav", 440.0, 2.0, 16000)
    with pytest.raises(SystemExit) as e:
        predict.main([str(untrained_bundle), str(lying), str(good)])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith(f"error: {lying}: its header declares 1,558,265 s of audio")
    assert [row.split()[0] for row in out.splitlines()[1:]] == [str(good)]


def test_prepare_skips_lying_and_overlong_files_with_reasons(ray_session, hostile_folder, tmp_path):
    from mrnet_ray.shards.job import prepare

    feature = FeatureConfig(
        sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, max_track_seconds=10.0
    )
    out = prepare("folder", hostile_folder.root, tmp_path / "p", feature=feature)
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert reasons[str(hostile_folder.lying)].startswith("its header declares 1,558,265 s")
    assert reasons[str(hostile_folder.long)].startswith("its header declares 12 s")
    assert sum(c["tracks"] for c in manifest["counts"].values()) == 9  # 11 files, 2 refused


def test_prepare_keeps_files_and_labels_named_in_latin1_bytes(
    ray_session, hostile_folder, tmp_path
):
    """``caf\\xe9.wav`` and a ``chanson_fran\\xe7aise/`` label folder, named in Latin-1 bytes as
    old archives unpack them: prepared like any file, with ids, labels and manifest paths
    showing the stray byte as ``\\xe9``; the manifest stays valid UTF-8 JSON."""
    from mrnet_ray.shards import open_prepared
    from mrnet_ray.shards.job import prepare

    feature = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    out = prepare("folder", hostile_folder.root, tmp_path / "p", feature=feature)
    manifest = json.loads((out / "manifest.json").read_bytes().decode("utf-8"))
    assert manifest["labels"] == ["chanson_fran\\xe7aise", "low", "mid"]
    assert sum(c["tracks"] for c in manifest["counts"].values()) == 10  # 11 files, one lying
    assert [s["path"].rsplit("/", 1)[-1] for s in manifest["skipped"]] == ["lying.flac"]
    prepared = open_prepared(out)
    ids = [i for split in ("train", "valid", "test") for i in prepared.read_arrays(split).track_id]
    assert "mid/caf\\xe9" in ids
    assert {"chanson_fran\\xe7aise/song0", "chanson_fran\\xe7aise/song1"} <= set(ids)
    # the clip's rows are the frontend's segments of the file itself
    arrays = {s: prepared.read_arrays(s) for s in ("train", "valid", "test")}
    (split,) = [s for s, a in arrays.items() if "mid/caf\\xe9" in a.track_id]
    rows = [i for i, t in enumerate(arrays[split].track_id) if t == "mid/caf\\xe9"]
    expected = features.audio_to_segments(hostile_folder.latin1, feature)
    np.testing.assert_allclose(arrays[split].mel[rows], expected, atol=1e-5)


def test_mel_arrays_are_bounded_by_their_header_too(tmp_path):
    from mrnet_ray.datasets import melon

    cfg = melon.MELON_FEATURE.replace(segment_seconds=1.0, segment_hop_seconds=1.0)
    lying = tmp_path / "lying.npy"
    np.save(lying, np.zeros((48, 10), np.float32))
    header = lying.read_bytes()
    lying.write_bytes(header.replace(b"(48, 10)", b"(48, 10000000000)", 1))  # 1.9 TB claimed
    with pytest.raises(features.AudioError, match=r"lying\.npy: cannot read mel array"):
        melon.mel_to_segments(lying, cfg)
    long = tmp_path / "long.npy"
    np.save(long, np.zeros((48, 700), np.float32))  # 11.2 s at hop 256, 16 kHz
    with pytest.raises(features.AudioError, match=r"700 frames \(11 s\), over the 10 s limit"):
        melon.mel_to_segments(long, cfg.replace(max_track_seconds=10.0))
    assert melon.mel_to_segments(long, cfg).shape == (11, 48, 62)
