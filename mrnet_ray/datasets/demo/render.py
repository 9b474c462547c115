"""One demo piece: music21 score -> cropped MIDI -> FluidSynth -> loudness-normalised clips.

:func:`render_piece` runs in a worker process and never raises for a bad source: a score
music21 cannot convert, a MIDI file FluidSynth rejects, a render past its timeout or size
limit, or a piece too short or too quiet for one clip comes back as ``PieceResult.error``.

Some music21-written MIDI files made FluidSynth render without end (one reached 11 GB): a few
soundfont zones loop for ever once released, and FluidSynth's file renderer runs until no
voice sounds. Every track therefore ends with All Sound Off (:func:`write_midi`), the score is
cropped to the length the clips need, and every render runs under a timeout and a size guard."""

from __future__ import annotations

import random
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from mrnet_ray.datasets.demo import InstrumentMode
from mrnet_ray.datasets.demo.sources import Source, split_tunes

SAMPLE_RATE = 22050
"""The corpus's audio rate (GTZAN's)."""
SILENCE = 1e-3
"""Amplitude below which a rendered sample counts as silence (about -60 dBFS)."""
MIN_CLIP_RMS_DB = -45.0
"""Clips quieter than this (RMS, dBFS) before normalisation are dropped as near-silent."""
TARGET_RMS_DB = -20.0
"""Every clip is scaled to this RMS (dBFS), or less where its peak would pass 0.99."""
DEFAULT_QPM = 120.0
"""Tempo music21 writes to MIDI when a score has no metronome mark."""
RANDOM_PROGRAMS = tuple(p for p in range(96) if p not in {47, 55})
"""General MIDI programs for ``random`` mode: the pitched families up to the synth pads,
without timpani (47) and orchestra hit (55)."""


class RenderError(Exception):
    """FluidSynth failed on one piece; the message is the skip reason."""


@dataclass(frozen=True)
class RenderJob:
    """Everything a worker needs to turn one source into clips."""

    source: Source
    corpus_root: str
    out_dir: str
    """Clips go to ``out_dir/<label>/<piece>__c<k>.wav``."""
    clip_seconds: float
    max_clips: int
    instrument_mode: InstrumentMode
    seed: int
    fluidsynth: str
    soundfont: str
    timeout_s: float
    sample_rate: int = SAMPLE_RATE
    gain: float = 0.5


@dataclass(frozen=True)
class PieceResult:
    source: Source
    clips: tuple[str, ...] = ()
    """Clip paths relative to ``out_dir``."""
    programs: tuple[int, ...] = ()
    """General MIDI programs assigned in ``random`` mode (one per part)."""
    seconds: float = 0.0
    error: str | None = None


def _load_score(job: RenderJob):
    from music21 import converter

    path = Path(job.corpus_root) / job.source.path
    if job.source.tune is None:
        return converter.parseFile(path, forceSource=True, storePickle=False)
    header, tunes = split_tunes(path.read_text(encoding="utf-8", errors="replace"))
    return converter.parseData(header + tunes[job.source.tune], format="abc")


def _crop(score, seconds: float):
    """The score cut after the first measure that ends past ``seconds`` (at its first tempo),
    with repeats expanded, ready for MIDI.

    The cut counts measures by position: numbers repeat after a da capo. Repeats are expanded
    after the cut (the MIDI writer would expand them anyway); a cut that breaks a repeat pair,
    or a score whose repeats do not expand, plays straight through.
    """
    from music21 import bar, exceptions21, meter, repeat, stream, tempo

    marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
    qpm = (marks[0].getQuarterBPM() if marks else None) or DEFAULT_QPM
    needed_ql = seconds * qpm / 60.0
    parts = list(score.parts) if isinstance(score, stream.Score) else [score]
    measures = list(parts[0].getElementsByClass(stream.Measure)) if parts else []
    ends = [i for i, m in enumerate(measures) if m.offset + m.duration.quarterLength >= needed_ql]
    if ends and ends[0] < len(measures) - 1:
        cropped = score.measures(0, ends[0] + 1, indicesNotNumbers=True)
        score = cropped if cropped.highestTime > 0 else score
    try:
        score = score.expandRepeats()
    except (repeat.ExpanderException, exceptions21.StreamException):
        for mark in list(score.recurse().getElementsByClass((bar.Repeat, repeat.RepeatMark))):
            mark.activeSite.remove(mark)
    # Time signatures do not change the sound, and music21's ABC reader sometimes puts one
    # object in several measures, which its MIDI writer rejects.
    for site in score.recurse(streamsOnly=True, includeSelf=True):
        site.removeByClass(meter.TimeSignature)
    return score


def _assign_programs(score, rng: random.Random) -> tuple[int, ...]:
    """Give each part a General MIDI program drawn independently of the class."""
    from music21 import instrument, stream

    parts = list(score.parts) if isinstance(score, stream.Score) else [score]
    programs = []
    for part in parts:
        for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
            old.activeSite.remove(old)
        program = rng.choice(RANDOM_PROGRAMS)
        part.insert(0, instrument.instrumentFromMidiProgram(program))
        programs.append(program)
    return tuple(programs)


def write_midi(score, path: Path) -> None:
    """Write ``score`` as MIDI that ends: All Sound Off on every channel a whole note after
    each track's last event.

    Some soundfont zones loop without end once released (e.g. TimGM6mb's Synth Voice at
    MIDI pitch 75), and FluidSynth's file renderer runs until no voice sounds, so without the
    explicit stop one such note renders for ever.
    """
    from music21 import midi
    from music21.midi.translate import streamToMidiFile

    mf = streamToMidiFile(score)
    for track in mf.tracks:
        channels = sorted({e.channel for e in track.events if e.isNoteOn()})
        for i, channel in enumerate(channels):
            stop = midi.MidiEvent(track, midi.ChannelVoiceMessages.CONTROLLER_CHANGE, 0, channel)
            stop.parameter1, stop.parameter2 = 120, 0  # CC 120: All Sound Off
            delta = midi.DeltaTime(track, 4 * mf.ticksPerQuarterNote if i == 0 else 0, channel)
            track.events[-2:-2] = [delta, stop]  # before END_OF_TRACK and its delta time
    mf.open(str(path), "wb")
    try:
        mf.write()
    finally:
        mf.close()


def render_midi(
    midi: Path,
    wav: Path,
    *,
    fluidsynth: str,
    soundfont: str,
    sample_rate: int,
    gain: float,
    timeout_s: float,
    max_bytes: int,
) -> None:
    """Render ``midi`` to a float stereo ``wav``; RenderError (and no ``wav``) on failure."""
    cmd = [fluidsynth, "-ni", "-q", "-F", str(wav), "-r", str(sample_rate), "-O", "float"]
    cmd += ["-g", f"{gain:g}", soundfont, str(midi)]
    log = wav.with_suffix(".log")
    deadline = time.monotonic() + timeout_s
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        problem = None
        while problem is None:
            try:
                proc.wait(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                pass
            if wav.exists() and wav.stat().st_size > max_bytes:
                problem = f"fluidsynth output passed {max_bytes / 1e6:.0f} MB"
            elif time.monotonic() >= deadline:
                problem = f"fluidsynth timed out after {timeout_s:g} s"
        if problem is not None:
            proc.kill()
            proc.wait()
    message = log.read_text(errors="replace").strip().splitlines()
    detail = f": {message[-1]}" if message else ""
    if problem is None and proc.returncode != 0:
        problem = f"fluidsynth exited with status {proc.returncode}{detail}"
    # A file it cannot read still exits 0, with a few samples of silence (64 here)
    if problem is None and (not wav.exists() or sf.info(str(wav)).frames < sample_rate // 10):
        problem = f"fluidsynth wrote no audio{detail}"
    if problem is not None:
        wav.unlink(missing_ok=True)
        raise RenderError(problem)


def cut_clips(audio: np.ndarray, sample_rate: int, clip_seconds: float, max_clips: int) -> list:
    """Consecutive clips from the first sound on, each loudness-normalised; silent ones dropped.

    ``audio`` is mono float ``(samples,)``; returns up to ``max_clips`` arrays ``(clip_samples,)``.

    >>> t = np.arange(22050 * 5) / 22050
    >>> tone = np.concatenate([np.zeros(22050), 0.1 * np.sin(2 * np.pi * 440 * t)])
    >>> [round(len(c) / 22050, 1) for c in cut_clips(tone, 22050, 2.0, 3)]
    [2.0, 2.0]
    """
    loud = np.flatnonzero(np.abs(audio) > SILENCE)
    if loud.size == 0:
        return []
    sound = audio[loud[0] : loud[-1] + 1]
    n = round(clip_seconds * sample_rate)
    clips = []
    for k in range(min(max_clips, len(sound) // n)):
        clip = sound[k * n : (k + 1) * n].astype(np.float64)
        rms = float(np.sqrt(np.mean(clip**2)))
        if 20 * np.log10(rms + 1e-12) < MIN_CLIP_RMS_DB:
            continue
        scale = min(10 ** (TARGET_RMS_DB / 20) / rms, 0.99 / float(np.abs(clip).max()))
        clips.append((clip * scale).astype(np.float32))
    return clips


def render_piece(job: RenderJob) -> PieceResult:
    """Parse, crop, (re-instrument,) render and cut one piece; failures come back as ``error``."""
    start = time.monotonic()
    src = job.source
    rng = random.Random(f"{job.seed}:{src.piece}")
    programs: tuple[int, ...] = ()
    work = Path(job.out_dir) / ".work"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        midi, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
        # Reverb tail and the first sound's delay: render a little more than the clips need.
        seconds = job.clip_seconds * job.max_clips + 2.0
        try:
            score = _crop(_load_score(job), seconds)
            if job.instrument_mode == "random":
                programs = _assign_programs(score, rng)
            write_midi(score, midi)
        except Exception as e:  # music21 raises many types for scores it cannot convert
            reason = f"music21 could not convert it: {type(e).__name__}: {e}"
            return PieceResult(src, error=reason[:300], seconds=time.monotonic() - start)
        # float32 stereo; allow 4x the expected length plus a minute before calling it runaway
        max_bytes = int((4 * seconds + 60) * job.sample_rate * 2 * 4)
        try:
            render_midi(
                midi,
                wav,
                fluidsynth=job.fluidsynth,
                soundfont=job.soundfont,
                sample_rate=job.sample_rate,
                gain=job.gain,
                timeout_s=job.timeout_s,
                max_bytes=max_bytes,
            )
        except RenderError as e:
            return PieceResult(src, error=str(e), seconds=time.monotonic() - start)
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    clips = cut_clips(audio.mean(axis=1), sr, job.clip_seconds, job.max_clips)
    if not clips:
        loud = np.flatnonzero(np.abs(audio).max(axis=1) > SILENCE)
        heard = (loud[-1] - loud[0]) / sr if loud.size else 0.0
        reason = f"too short or silent: {heard:.1f} s of sound, a clip needs {job.clip_seconds:g} s"
        return PieceResult(src, error=reason, seconds=time.monotonic() - start)
    label_dir = Path(job.out_dir) / src.label
    label_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for k, clip in enumerate(clips):
        name = f"{src.label}/{src.piece}__c{k}.wav"
        sf.write(str(Path(job.out_dir) / name), clip, sr, subtype="PCM_16")
        names.append(name)
    return PieceResult(src, tuple(names), programs, time.monotonic() - start)
