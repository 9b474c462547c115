"""The CUDA path checked and measured in one run of at most 5 minutes, ready for the first GPU.

The test suite runs on CPUs only, so without this no line of the CUDA path (device placement,
bf16 autocast, gradient clipping under AMP, evaluation on the GPU, export of a GPU-trained
model) would ever have run. This script runs it with the project's own code on synthetic
``(batch, n_mels, frames)`` segments, importing only what a bare GPU machine has (torch, numpy,
pyarrow, onnx, onnxruntime, safetensors; no Ray, MLflow, Optuna or soundfile):

1. checks, per architecture (the default MRNet, ECAPA and short-chunk configs: C=512,
   128 mels x 129 frames, 3 s segments): a few epochs of :func:`~mrnet_ray.training.fit.fit`
   with bf16 autocast and gradient clipping (``TrainConfig``'s defaults) lower the training
   loss; the checkpoint written from the device loads on the CPU and training resumes from it
   there; evaluation on the device matches evaluation of the same weights on the CPU
   (:data:`EVAL_TOLERANCE`); the bundle writer's TorchScript and ONNX of the device-trained
   model match its eager output (``bundle.TOLERANCE``), and so does the TorchScript file run
   on the device; and no Ray, MLflow, Optuna or soundfile module was loaded;
2. measures, per architecture at batch 32/64/128: training samples/s with and without bf16 and
   peak device memory; ``torch.compile`` against eager at batch 64, each in a child process
   under a time limit (a compile that fails or runs long is recorded, never fatal); and the
   epoch loop's samples/s (``fit`` over a :class:`~mrnet_ray.training.feed.MemoryFeed`)
   against a bare loop over the same tensors already on the device;
3. writes every figure to one JSON file (after every section, so a run cut short keeps what
   it measured), prints a table and exits 1 if a check failed.

    python benchmarks/gpu_check.py --json out.json           # CUDA: the full run, <= 5 min
    python benchmarks/gpu_check.py --json out.json --smoke   # small configs, seconds

Without CUDA (or with ``--device cpu``) it runs the smoke mode on the CPU: the same code path
with small configs, which ``tests/test_gpu_check.py`` runs with Ray, MLflow, Optuna and
soundfile blocked. ``--smoke`` on a GPU is a quick first look before the full run.
"""

# The package is imported below the sys.path line that makes it importable.
# ruff: noqa: E402

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

# The GPU machine runs this from a checkout where mrnet_ray is not installed.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrnet_ray.config import FeatureConfig, MRNetConfig, TrainConfig, TrialConfig
from mrnet_ray.export.bundle import (
    TOLERANCE,
    TORCHSCRIPT,
    export_bundle,
    export_differences,
    load_bundle,
)
from mrnet_ray.nn import build_model, model_cost
from mrnet_ray.shards import SplitArrays
from mrnet_ray.storage import write_atomic
from mrnet_ray.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from mrnet_ray.training.feed import MemoryFeed
from mrnet_ray.training.fit import LocalSession, RunPlan, fit
from mrnet_ray.training.loop import evaluate, make_optimizer

ARCHS = ("mrnet", "ecapa", "shortchunk")
FORBIDDEN = ("ray", "mlflow", "optuna", "soundfile")
"""Packages the GPU machine does not have; nothing on this script's path may import them."""
EVAL_TOLERANCE = 1e-3
"""Largest logit difference allowed between evaluation on the device and on the CPU, relative
to the largest logit (at least 1). ``evaluate`` runs no autocast (bf16 is for training steps
only) and the comparison turns TF32 off, so both sides compute in float32 and differ only in
the kernels' summation order, which moves logits of these networks far less than this; a
layer left in reduced precision, stale BatchNorm statistics or other weights exceed it."""
COMPILE_MIN_S = 30.0
"""The least time a compile probe starts with (its process takes ~10 s to start torch)."""
CPU = torch.device("cpu")
GRAD_CLIP = TrainConfig().grad_clip


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: :data:`FULL` on a GPU, :data:`SMOKE` on a CPU in seconds."""

    name: str
    base: MRNetConfig
    """Every architecture's config, ``arch`` aside."""
    feature: FeatureConfig
    """The segments: ``(feature.n_mels, feature.segment_frames)``."""
    batches: tuple[int, ...]
    """Batch sizes of the training-speed sweep."""
    warmup_steps: int
    """Untimed steps before each timing (cuDNN's first calls, the allocator's growth)."""
    timed_steps: int
    check_rows: int
    """Training segments of each correctness run (``check_batch`` per step)."""
    check_batch: int
    check_epochs: int
    feed_rows: int
    """Training segments of the epoch loop against the bare loop."""
    feed_batches: tuple[int, ...]
    compile_batch: int
    compile_archs: tuple[str, ...]
    compile_backend: str
    """The smoke mode's 'eager' backend only traces with dynamo: inductor's C++ build on a
    CPU would outlast the whole smoke run."""
    compile_timeout_s: float
    """Longest one compile probe (a child process) may take, if the budget leaves every later
    probe :data:`COMPILE_MIN_S`. The probes run in ``compile_archs`` order: the quickest to
    compile first, so that MRNet's long compile gets whatever they leave."""
    budget_s: float
    """Wall time of the run from its first section; the compile probes get what is left."""
    torch_threads: int | None
    """Intra-op threads (None: torch's default, every core). The smoke mode's tiny models run
    no faster on two, and two threads beside other busy processes spin-wait: on a shared
    2-core machine the smoke run took 35-40 s instead of 12."""

    def model(self, arch: str) -> MRNetConfig:
        return self.base.replace(arch=arch)


FULL = Plan(
    name="full", base=MRNetConfig(), feature=FeatureConfig(), batches=(32, 64, 128),
    warmup_steps=3, timed_steps=20, check_rows=64, check_batch=16, check_epochs=3,
    feed_rows=2048, feed_batches=(32, 128), compile_batch=64,
    compile_archs=("shortchunk", "ecapa", "mrnet"), compile_backend="inductor",
    compile_timeout_s=120.0, budget_s=270.0, torch_threads=None,
)  # fmt: skip
SMOKE = Plan(
    name="smoke",
    # C=32: at C=16 the short-chunk CNN barely learns in 12 steps
    base=MRNetConfig(
        n_mels=16, n_classes=4, channels=32, stem_kernel=3, dilations=(1, 2),
        route_depths=((1,), (1, 2)), res2_scale=2, se_channels=8, attention_channels=8,
        embedding_dim=8,
    ),
    feature=FeatureConfig(n_mels=16, segment_seconds=1.0, segment_hop_seconds=1.0),
    batches=(4, 8), warmup_steps=1, timed_steps=2, check_rows=32, check_batch=8,
    check_epochs=3, feed_rows=64, feed_batches=(8,), compile_batch=8, compile_archs=("mrnet",),
    compile_backend="eager", compile_timeout_s=60.0, budget_s=120.0, torch_threads=1,
)  # fmt: skip


@dataclass
class Checks:
    """The run's correctness verdicts, in the order they were taken."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    @property
    def failed(self) -> list[str]:
        return [row["name"] for row in self.rows if not row["ok"]]


def synthetic(rows: int, cfg: MRNetConfig, frames: int, seed: int) -> SplitArrays:
    """``rows`` learnable segments ``(rows, n_mels, frames)``: noise with the bands of class
    ``label`` lifted. Each segment is its own track, so an evaluation's track logit sums are
    the segment logits."""
    rng = np.random.default_rng(seed)
    label = np.arange(rows, dtype=np.int64) % cfg.n_classes
    band_class = np.arange(cfg.n_mels) // max(1, cfg.n_mels // cfg.n_classes)  # (n_mels,)
    mel = rng.normal(size=(rows, cfg.n_mels, frames)).astype(np.float32)
    mel += 2.0 * (band_class[None, :, None] == label[:, None, None])
    return SplitArrays(mel, label, np.arange(rows, dtype=np.int64), [])


def labels_of(cfg: MRNetConfig) -> list[str]:
    return [f"class{i}" for i in range(cfg.n_classes)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> float | None:
    """Peak memory allocated on the device since the last reset; None on a CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Float32 convolutions and matmuls without TF32, which cuDNN uses by default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tensor_devices(value: Any) -> set[str]:
    """Device types of every tensor in a nested state (dicts, lists, tuples)."""
    if isinstance(value, torch.Tensor):
        return {value.device.type}
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return set().union(*(tensor_devices(v) for v in value))
    return set()


def compare_eval(
    model_dev: nn.Module,
    model_cpu: nn.Module,
    valid: SplitArrays,
    n_classes: int,
    device: torch.device,
) -> dict[str, float]:
    """Largest logit difference between ``evaluate`` on ``device`` (TF32 off; and, as a figure,
    with the default TF32 convolutions) and on the CPU, its bound, and both losses."""
    batches = partial(MemoryFeed(valid, valid, 16, 0).valid, 0, 1)
    cpu = evaluate(model_cpu, batches(), n_classes, CPU)
    with strict_fp32():
        dev = evaluate(model_dev, batches(), n_classes, device)
    tf32 = evaluate(model_dev, batches(), n_classes, device)
    return {
        "eval_max_abs_diff": float(np.abs(dev.track_logit_sum - cpu.track_logit_sum).max()),
        "eval_bound": EVAL_TOLERANCE * max(1.0, float(np.abs(cpu.track_logit_sum).max())),
        "eval_max_abs_diff_tf32": float(np.abs(tf32.track_logit_sum - cpu.track_logit_sum).max()),
        "valid_loss_device": dev.metrics()["valid_loss"],
        "valid_loss_cpu": cpu.metrics()["valid_loss"],
    }


def check_export(
    arch: str,
    model: nn.Module,
    trial: TrialConfig,
    feature: FeatureConfig,
    out: Path,
    device: torch.device,
    checks: Checks,
) -> dict[str, Any]:
    """Export the device-trained ``model`` as a bundle: ``export_bundle`` moves it to the CPU
    and refuses (RuntimeError) when its TorchScript or ONNX differ from the model rebuilt from
    the written weights by more than ``bundle.TOLERANCE``. Then the TorchScript file runs on
    ``device`` against the rebuilt model there."""
    name = f"{arch}: TorchScript and ONNX match eager"
    try:
        path = export_bundle(out, model, trial, feature, labels_of(trial.model))
    except RuntimeError as e:
        checks.add(name, False, str(e))
        return {"export_error": str(e)}
    eager = load_bundle(path).model
    frames = feature.segment_frames
    worst = export_differences(path, eager, feature.n_mels, frames=(frames, frames // 2 | 1))
    detail = ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    checks.add(name, max(worst.values()) <= TOLERANCE, f"{detail} (<= {TOLERANCE:g})")
    with warnings.catch_warnings():  # TorchScript's deprecation notice
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path / TORCHSCRIPT), map_location=device)
    eager = eager.to(device)
    x = torch.randn(3, feature.n_mels, frames, generator=torch.Generator().manual_seed(0))
    x = (x * 20 - 40).to(device)  # (3, n_mels, frames), dB-like
    with torch.no_grad(), strict_fp32():
        # The JIT profiles its first calls and optimises (fuses) later ones: compare both.
        on_device = max(float((scripted(x) - eager(x)).abs().max()) for _ in range(3))
    checks.add(
        f"{arch}: TorchScript on {device.type} matches eager there",
        on_device <= TOLERANCE,
        f"{on_device:.1e} (<= {TOLERANCE:g})",
    )
    return {"export_max_abs_diff": worst, "torchscript_on_device_max_abs_diff": on_device}


def check_arch(
    arch: str, plan: Plan, device: torch.device, work: Path, checks: Checks
) -> dict[str, Any]:
    """Train ``arch`` on ``device`` with ``fit``, then check its loss, its checkpoint on the
    CPU, its evaluation against the CPU's and its export; returns the figures."""
    cfg, feature, epochs = plan.model(arch), plan.feature, plan.check_epochs
    frames = feature.segment_frames
    trial = TrialConfig(cfg, TrainConfig(epochs=epochs, batch_size=plan.check_batch))
    valid = synthetic(2 * plan.check_batch, cfg, frames, seed=1)
    feed = MemoryFeed(synthetic(plan.check_rows, cfg, frames, 0), valid, plan.check_batch, 0)
    run = RunPlan(feature.to_dict(), labels_of(cfg), frames, plan.check_rows // plan.check_batch)
    session = LocalSession(device=device)
    fit(trial, run, feed, session)
    losses = [m["train_loss"] for m in session.reports]
    bf16 = device.type == "cuda" and trial.train.amp  # as train_epoch decides
    checks.add(
        f"{arch}: training loss goes down",
        losses[-1] < losses[0],
        f"{losses[0]:.3f} -> {losses[-1]:.3f} over {epochs} epochs on {device.type} "
        f"(bf16 {'on' if bf16 else 'off'}, grad clip {trial.train.grad_clip})",
    )

    state = session.state
    assert state is not None  # rank 0 reports a checkpoint every epoch
    directory = save_checkpoint(state, work / arch / "checkpoint").parent
    loaded = load_checkpoint(directory)
    resumed = LocalSession(resume_from=loaded)  # on the CPU
    fit(trial.replace(train=trial.train.replace(epochs=epochs + 1)), run, feed, resumed)
    last = resumed.reports[-1]
    saved_on, loaded_on = tensor_devices(state), tensor_devices(loaded)
    checks.add(
        f"{arch}: checkpoint written on {device.type} loads and resumes on the CPU",
        loaded_on == {"cpu"}
        and [m["epoch"] for m in resumed.reports] == [epochs + 1]
        and math.isfinite(last["train_loss"]),
        f"saved on {sorted(saved_on)}, loaded on {sorted(loaded_on)}, "
        f"resumed epoch {last['epoch']} train_loss {last['train_loss']:.3f}",
    )

    model_dev = build_model(cfg)
    model_dev.load_state_dict(state["model"])
    model_dev = model_dev.to(device).eval()
    figures = {"train_loss": losses, "bf16": bf16}
    figures |= compare_eval(
        model_dev, model_from_checkpoint(directory)[0], valid, cfg.n_classes, device
    )
    checks.add(
        f"{arch}: evaluation on {device.type} matches the CPU",
        figures["eval_max_abs_diff"] <= figures["eval_bound"],
        f"largest logit difference {figures['eval_max_abs_diff']:.1e} "
        f"(<= {figures['eval_bound']:.1e}; with TF32 {figures['eval_max_abs_diff_tf32']:.1e})",
    )
    bundle = work / arch / "bundle"
    return figures | check_export(arch, model_dev, trial, feature, bundle, device, checks)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    mel: torch.Tensor,
    label: torch.Tensor,
    bf16: bool,
) -> None:
    """One optimizer step as ``train_epoch`` takes it (autocast forward, float32 loss with label
    smoothing, the default gradient clipping), without its per-step host synchronisation."""
    with torch.autocast(mel.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(mel)  # (batch, n_classes)
    loss = F.cross_entropy(logits.float(), label, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if GRAD_CLIP is not None:
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()


def timed(step: Callable[[], None], plan: Plan, device: torch.device) -> tuple[float, float | None]:
    """Seconds per step over ``plan.timed_steps`` after ``plan.warmup_steps``, and the peak
    device memory (MiB) of the timed steps."""
    for _ in range(plan.warmup_steps):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(plan.timed_steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / plan.timed_steps, peak_mib(device)


def setup(arch: str, plan: Plan, batch: int, device: torch.device) -> tuple[Any, ...]:
    """``arch``'s model (seeded) and optimizer on ``device`` and one random batch there."""
    cfg = plan.model(arch)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    mel = torch.randn(batch, cfg.n_mels, plan.feature.segment_frames, device=device)
    label = torch.randint(cfg.n_classes, (batch,), device=device)
    return model, make_optimizer(model, TrainConfig()), mel, label


def sweep(arch: str, plan: Plan, device: torch.device) -> list[dict[str, Any]]:
    """Training speed of ``arch`` at every batch size, with and without bf16 (without: float32,
    with PyTorch's default TF32 convolutions on CUDA), and the peak memory of its timed steps
    (weights, gradients, AdamW's state and activations)."""
    flops = model_cost(plan.model(arch), plan.feature.segment_frames).flops
    rows = []
    for batch in plan.batches:
        model, optimizer, mel, label = setup(arch, plan, batch, device)
        for bf16 in (True, False):
            row: dict[str, Any] = {"arch": arch, "batch": batch, "bf16": bf16}
            try:
                seconds, peak = timed(
                    partial(train_step, model, optimizer, mel, label, bf16), plan, device
                )
            except torch.OutOfMemoryError:  # where this device runs out is a figure too
                rows.append(row | {"error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            rows.append(row | {
                "samples_per_s": round(batch / seconds, 1), "step_ms": round(seconds * 1e3, 2),
                "peak_mem_mib": peak,
                "tflops_per_s": round(3 * flops * batch / seconds / 1e12, 2),  # fwd+bwd = 3 fwd
            })  # fmt: skip
        del model, optimizer, mel, label
    return rows


def feed_vs_bare(plan: Plan, device: torch.device) -> list[dict[str, Any]]:
    """MRNet's training samples/s through ``fit`` over a :class:`MemoryFeed` (host arrays,
    copied to the device batch by batch, one host sync per step), against a bare loop of the
    same steps over the same rows already on the device: the ceiling a Ray Train worker on
    this device can reach."""
    cfg, frames = plan.model("mrnet"), plan.feature.segment_frames
    train = synthetic(plan.feed_rows, cfg, frames, seed=2)
    valid = synthetic(plan.feed_batches[0], cfg, frames, seed=3)  # fit validates every epoch
    rows = []
    for batch in plan.feed_batches:
        trial = TrialConfig(cfg, TrainConfig(epochs=2, batch_size=batch))
        steps = plan.feed_rows // batch
        session = LocalSession(device=device)
        run = RunPlan(plan.feature.to_dict(), labels_of(cfg), frames, steps)
        fit(trial, run, MemoryFeed(train, valid, batch, seed=0), session)
        loop = session.reports[-1]["samples_per_s"]  # epoch 2: epoch 1 pays the first calls

        model, optimizer, _, _ = setup("mrnet", plan, batch, device)
        mel = torch.from_numpy(train.mel).to(device)  # (rows, n_mels, frames)
        label = torch.from_numpy(train.label).to(device)
        bf16 = device.type == "cuda" and trial.train.amp  # as train_epoch decides
        for _ in range(2):  # the first pass warms up, as fit's first epoch did
            start = time.perf_counter()
            for i in range(0, steps * batch, batch):
                train_step(model, optimizer, mel[i : i + batch], label[i : i + batch], bf16)
            sync(device)
        bare = steps * batch / (time.perf_counter() - start)
        rows.append({
            "arch": "mrnet", "batch": batch, "rows": plan.feed_rows,
            "epoch_loop_samples_per_s": round(loop, 1), "bare_samples_per_s": round(bare, 1),
            "ratio": round(loop / bare, 3),
        })  # fmt: skip
        del model, optimizer, mel, label
    return rows


def compile_probe(arch: str, plan: Plan, device: torch.device) -> dict[str, Any]:
    """Eager, then ``torch.compile``d training steps of ``arch`` at ``plan.compile_batch`` with
    bf16, side by side in this process (a child of the run: see :func:`run_compile`)."""
    batch = plan.compile_batch
    model, optimizer, mel, label = setup(arch, plan, batch, device)
    eager = partial(train_step, model, optimizer, mel, label, True)
    eager_s, eager_peak = timed(eager, plan, device)
    compiled = torch.compile(model, backend=plan.compile_backend)
    step = partial(train_step, compiled, optimizer, mel, label, True)
    start = time.perf_counter()
    step()  # compiles
    sync(device)
    first = time.perf_counter() - start
    compiled_s, compiled_peak = timed(step, plan, device)
    return {
        "status": "ok", "backend": plan.compile_backend, "batch": batch,
        "first_step_s": round(first, 1), "eager_samples_per_s": round(batch / eager_s, 1),
        "compiled_samples_per_s": round(batch / compiled_s, 1),
        "speedup": round(eager_s / compiled_s, 3),
        "eager_peak_mem_mib": eager_peak, "compiled_peak_mem_mib": compiled_peak,
    }  # fmt: skip


def run_compile(arch: str, plan: Plan, device: torch.device, timeout: float) -> dict[str, Any]:
    """:func:`compile_probe` in a child process killed after ``timeout`` seconds: a compiler
    that hangs, crashes or takes minutes costs at most that, and the run goes on."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--compile-probe", arch]
        command += ["--device", device.type, "--json", str(out)]
        command += ["--smoke"] if plan is SMOKE else []
        start = time.perf_counter()
        # A session of its own, so that the kill reaches inductor's compile workers too.
        child = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            _, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it ended at the last moment
                os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return {"status": "timeout", "limit_s": round(timeout, 1)}
        wall = round(time.perf_counter() - start, 1)
        if child.returncode != 0 or not out.is_file():
            error = " | ".join([line for line in err.splitlines() if line.strip()][-3:])
            return {"status": "failed", "wall_s": wall, "error": error[-1000:]}
        return json.loads(out.read_text()) | {"wall_s": wall}


def meta(plan: Plan, device: torch.device) -> dict[str, Any]:
    try:
        git = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # a copy of the tree without git
        commit = None
    cuda = device.type == "cuda"
    return {
        "plan": plan.name, "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpus": os.cpu_count(), "tf32_convolutions": torch.backends.cudnn.allow_tf32,
        "segment": [plan.feature.n_mels, plan.feature.segment_frames],
        "models": {arch: plan.model(arch).to_dict() for arch in ARCHS},
    }  # fmt: skip


def guarded(what: str, fn: Callable[[], Any], checks: Checks | None = None) -> Any:
    """``fn()``; an exception is printed and, for a check, recorded as its failure, so that
    one broken part of an untested path does not cost the rest of the run."""
    try:
        return fn()
    except Exception as e:
        traceback.print_exc()
        if checks is not None:
            checks.add(f"{what}: ran to the end", False, f"{type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}


def run(plan: Plan, device: torch.device, out: Path) -> int:
    """Every section in turn, the JSON rewritten after each; 0 when every check passed."""
    start = time.perf_counter()
    checks = Checks()
    results: dict[str, Any] = {"meta": meta(plan, device), "checks": checks.rows}
    results |= {"correctness": {}, "training": [], "feed": [], "compile": {}, "sections_s": {}}
    print(f"gpu check ({plan.name}) on {results['meta']['device_name'] or device.type}")

    @contextlib.contextmanager
    def section(name: str) -> Iterator[None]:
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        yield
        results["sections_s"][name] = round(time.perf_counter() - began, 1)
        write_atomic(out, json.dumps(results, indent=1) + "\n")
        print(f"   {name}: {results['sections_s'][name]:.1f} s", flush=True)

    with section("checks"), tempfile.TemporaryDirectory() as work:
        for arch in ARCHS:
            check = partial(check_arch, arch, plan, device, Path(work), checks)
            results["correctness"][arch] = guarded(arch, check, checks)
    with section("training speed"):
        for arch in ARCHS:
            rows = guarded(arch, partial(sweep, arch, plan, device))
            results["training"] += rows if isinstance(rows, list) else [{"arch": arch} | rows]
    with section("epoch loop against a bare loop"):
        rows = guarded("feed", partial(feed_vs_bare, plan, device))
        results["feed"] = rows if isinstance(rows, list) else [rows]
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the compile probes share this device
    with section("torch.compile against eager"):
        for i, arch in enumerate(plan.compile_archs, start=1):
            later = len(plan.compile_archs) - i
            left = plan.budget_s - (time.perf_counter() - start) - COMPILE_MIN_S * later
            limit = min(plan.compile_timeout_s, left)
            skip = {"status": "skipped", "reason": "time budget spent"}
            probe = run_compile(arch, plan, device, limit) if limit >= COMPILE_MIN_S else skip
            results["compile"][arch] = probe
            print(f"  {arch}: {probe}", flush=True)

    modules = {name.partition(".")[0] for name, m in sys.modules.items() if m is not None}
    loaded = sorted(modules & set(FORBIDDEN))
    checks.add(f"imports: none of {', '.join(FORBIDDEN)}", not loaded, ", ".join(loaded) or "none")
    results["total_s"] = round(time.perf_counter() - start, 1)
    results["ok"] = not checks.failed
    write_atomic(out, json.dumps(results, indent=1) + "\n")
    print_tables(results)
    failed = f"; FAILED: {', '.join(checks.failed)}" if checks.failed else ""
    print(f"{len(checks.rows) - len(checks.failed)}/{len(checks.rows)} checks passed{failed}; "
          f"{results['total_s']:.0f} s; figures in {out}")  # fmt: skip
    return 0 if results["ok"] else 1


def print_tables(results: dict[str, Any]) -> None:
    def row(*cells: Any) -> None:
        text = ("-" if c is None else f"{c:,}" if isinstance(c, int | float) else c for c in cells)
        print("| " + " | ".join(text) + " |")

    print("\n| arch | batch | bf16 samples/s | fp32 samples/s | bf16 peak MiB | fp32 peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    by_key = {(r["arch"], r.get("batch"), r.get("bf16")): r for r in results["training"]}
    for arch, batch in dict.fromkeys((r["arch"], r.get("batch")) for r in results["training"]):
        bf16, fp32 = by_key.get((arch, batch, True), {}), by_key.get((arch, batch, False), {})
        speed, peak = "samples_per_s", "peak_mem_mib"
        row(arch, batch, bf16.get(speed), fp32.get(speed), bf16.get(peak), fp32.get(peak))
    print("\n| compile, bf16 | status | eager samples/s | compiled samples/s | speed-up "
          "| first step s |\n|---|---|---:|---:|---:|---:|")  # fmt: skip
    for arch, r in results["compile"].items():
        keys = ("status", "eager_samples_per_s", "compiled_samples_per_s", "speedup")
        row(arch, *(r.get(k) for k in keys), r.get("first_step_s"))
    print("\n| epoch loop, mrnet | batch | fit + MemoryFeed samples/s | bare samples/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for r in results["feed"]:
        keys = ("batch", "epoch_loop_samples_per_s", "bare_samples_per_s", "ratio")
        row("", *(r.get(k) for k in keys))
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, type=Path, help="write the figures here")
    parser.add_argument("--smoke", action="store_true", help="small configs, seconds")
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), help="default: cuda where available (cpu: smoke)"
    )
    parser.add_argument(
        "--compile-probe", choices=ARCHS, help="one torch.compile probe (the run's own child)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    plan = SMOKE if args.smoke or device.type == "cpu" else FULL
    if plan.torch_threads is not None:
        torch.set_num_threads(plan.torch_threads)
    if args.compile_probe:
        write_atomic(args.json, json.dumps(compile_probe(args.compile_probe, plan, device)))
        return 0
    return run(plan, device, args.json)


if __name__ == "__main__":
    sys.exit(main())
