"""The audio frontend on real files written by soundfile (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from fixtures.audio import synth, write_clip, write_garbage

from mrnet_ray import features
from mrnet_ray.config import FeatureConfig
from mrnet_ray.errors import UserError

CFG = FeatureConfig(
    sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, segment_seconds=1.0,
    segment_hop_seconds=1.0,
)  # fmt: skip


@pytest.mark.parametrize(
    ("suffix", "rate", "channels"),
    [(".wav", 16000, 1), (".flac", 44100, 2), (".mp3", 22050, 2), (".ogg", 22050, 1)],
)
def test_load_audio_decodes_downmixes_and_resamples(tmp_path, suffix, rate, channels):
    path = write_clip(tmp_path / f"clip{suffix}", 440.0, 2.0, rate, channels)
    wave = features.load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # mp3 adds encoder delay/padding of a few ms; lossless formats are exact
    assert abs(len(wave) - 32000) <= (0 if suffix in (".wav", ".flac") else 2000)
    if suffix == ".flac":  # lossless: equals the mean of the channels, resampled by torchaudio
        data, _ = sf.read(path, dtype="float32")
        direct = torchaudio.functional.resample(torch.from_numpy(data.mean(axis=1)), rate, 16000)
        np.testing.assert_allclose(wave, direct.numpy(), atol=1e-6)


def test_log_mel_equals_direct_torchaudio():
    wave = synth(440.0, 1.5, 16000)[:, 0]
    direct = torchaudio.transforms.AmplitudeToDB("power", top_db=80.0)(
        torchaudio.transforms.MelSpectrogram(16000, n_fft=512, hop_length=256, n_mels=32)(
            torch.from_numpy(wave)
        )
    )
    got = features.log_mel(wave, CFG)
    assert got.shape == (32, 1 + len(wave) // 256)  # (n_mels, frames)
    torch.testing.assert_close(got, direct)
    assert features._transforms(CFG) is features._transforms(CFG.replace())  # cached per config


def test_segment_windows_hop_and_trailing_partial():
    mel = np.arange(4 * 130, dtype=np.float32).reshape(4, 130)  # (n_mels, frames)
    segs = features.segment(mel, CFG)  # 62-frame windows, no overlap: 2 full, 6 frames dropped
    assert segs.shape == (2, 4, 62)
    np.testing.assert_array_equal(segs[1], mel[:, 62:124])
    overlapping = features.segment(mel, CFG.replace(segment_hop_seconds=0.5))  # hop 31 frames
    assert overlapping.shape == (3, 4, 62)
    np.testing.assert_array_equal(overlapping[1], mel[:, 31:93])


def test_short_clip_is_padded_with_silence_or_skipped():
    mel = np.full((4, 20), -10.0, np.float32)
    mel[0, 0] = 0.0  # the clip's peak: with top_db=80 its silence sits at -80 dB, not 0 dB
    padded = features.segment(mel, CFG)
    assert padded.shape == (1, 4, 62)
    np.testing.assert_array_equal(padded[0, :, :20], mel)
    assert (padded[0, :, 20:] == -80.0).all()
    no_top_db = features.segment(mel, CFG.replace(top_db=None))
    assert (no_top_db[0, :, 20:] == features.AMIN_DB).all()
    assert features.segment(mel, CFG.replace(short_clip="skip")).shape == (0, 4, 62)


def test_audio_to_segments_of_a_real_short_clip(tmp_path):
    """A 0.4 s stereo 44.1 kHz clip: one padded segment whose padding is the clip's floor."""
    path = write_clip(tmp_path / "short.wav", 880.0, 0.4, 44100, channels=2)
    segs = features.audio_to_segments(path, CFG)
    assert segs.shape == (1, 32, 62) and segs.dtype == np.float32
    frames = 1 + round(0.4 * 16000) // 256
    floor = segs[0, :, :frames].max() - 80.0
    np.testing.assert_allclose(segs[0, :, frames:], floor, atol=1e-4)
    assert features.audio_to_segments(path, CFG.replace(short_clip="skip")).shape == (0, 32, 62)


def test_bad_files_raise_audio_error_naming_the_file(tmp_path):
    good = write_clip(tmp_path / "good.wav", 440.0, 1.0, 16000)
    header_only = tmp_path / "cut.wav"
    header_only.write_bytes(good.read_bytes()[:30])  # truncated inside the header
    empty = tmp_path / "empty.flac"
    empty.touch()
    cases = {
        write_garbage(tmp_path / "garbage.mp3"): "cannot decode",
        empty: "empty file",
        header_only: "cannot decode",
        tmp_path / "absent.ogg": "no such file",
    }
    for path, words in cases.items():
        with pytest.raises(features.AudioError, match=words) as info:
            features.load_audio(path, 16000)
        assert str(path) in str(info.value) and isinstance(info.value, UserError)


def test_truncated_audio_decodes_what_is_there(tmp_path):
    good = write_clip(tmp_path / "good.wav", 440.0, 1.0, 16000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good.read_bytes()[:10044])  # header promises 1 s; 5,000 samples remain
    wave = features.load_audio(cut, 16000)
    assert len(wave) == 5000
