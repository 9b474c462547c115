"""The epoch loop, evaluation, metrics, augmentation and schedules, without Ray."""

from __future__ import annotations

import copy
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mrnet_ray.config import TrainConfig
from mrnet_ray.training.augment import mixup, random_crop, soft_targets, spec_augment
from mrnet_ray.training.loop import (
    evaluate,
    make_ema,
    make_optimizer,
    make_scheduler,
    train_epoch,
)
from mrnet_ray.training.metrics import EvalStats

CPU = torch.device("cpu")


class FirstFrame(nn.Module):
    """Logits = the first frame of each segment, so a test chooses every logit by hand."""

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return mel[:, :, 0]  # (batch, n_mels = n_classes)


def batch(logits: list[list[float]], labels: list[int], tracks: list[int]) -> dict:
    mel = torch.tensor(logits).unsqueeze(2).repeat(1, 1, 3)  # (batch, n_classes, 3 frames)
    return {"mel": mel, "label": torch.tensor(labels), "track_index": torch.tensor(tracks)}


# Track 10 (class 0): segments right, wrong, wrong; the mean logit is right.
# Track 11 (class 1): right, right, wrong; mean right. Track 12 (class 1): wrong, right; mean wrong.
SEGMENTS = [
    ([3.0, 0.0], 0, 10),
    ([0.0, 1.0], 0, 10),
    ([0.0, 1.0], 1, 11),
    ([0.0, 1.0], 0, 10),
    ([2.0, 0.0], 1, 12),
    ([0.0, 1.0], 1, 11),
    ([1.0, 0.0], 1, 11),
    ([0.0, 1.0], 1, 12),
]


def segment_batches(rows, size: int) -> list[dict]:
    return [
        batch(*map(list, zip(*rows[i : i + size], strict=True))) for i in range(0, len(rows), size)
    ]


def test_evaluate_aggregates_segments_per_track():
    # batches of 3 split every track across batches
    stats = evaluate(FirstFrame(), segment_batches(SEGMENTS, 3), 2, CPU)
    m = stats.metrics()
    assert m["valid_acc"] == pytest.approx(4 / 8)
    assert m["valid_track_acc"] == pytest.approx(2 / 3)
    # tracks: true (0, 1, 1), predicted (0, 1, 0): F1 is 2/3 for both classes
    assert m["valid_macro_f1"] == pytest.approx(2 / 3)
    logits = torch.tensor([r[0] for r in SEGMENTS])
    expected_loss = F.cross_entropy(logits, torch.tensor([r[1] for r in SEGMENTS]))
    assert m["valid_loss"] == pytest.approx(float(expected_loss), rel=1e-6)
    assert stats.track_count.tolist() == [3, 3, 2]
    assert stats.track_confusion.tolist() == [[1, 0], [1, 1]]


def test_merge_equals_evaluating_the_union():
    rng = np.random.default_rng(0)
    n, n_classes = 60, 4
    tracks = rng.integers(0, 15, n)
    labels = tracks % n_classes  # one label per track
    logits = rng.normal(size=(n, n_classes)).astype(np.float32)
    rows = [(logits[i].tolist(), int(labels[i]), int(tracks[i])) for i in range(n)]
    whole = evaluate(FirstFrame(), segment_batches(rows, 7), n_classes, CPU)
    order = rng.permutation(n)  # three "workers", each with a random share of segments
    shares = [
        evaluate(FirstFrame(), segment_batches([rows[i] for i in part], 5), n_classes, CPU)
        for part in np.array_split(order, 3)
    ]
    merged = shares[0].merge(shares[1:])
    assert merged.metrics() == pytest.approx(whole.metrics())
    assert np.array_equal(merged.track_index, whole.track_index)
    assert np.allclose(merged.track_logit_sum, whole.track_logit_sum)
    assert np.array_equal(merged.segment_confusion, whole.segment_confusion)
    assert merged.segments == n
    # an empty share (a worker with no validation rows) changes nothing
    assert EvalStats.empty(n_classes).merge([whole]).metrics() == pytest.approx(whole.metrics())


def separable(n: int, n_mels: int = 6, frames: int = 16, seed: int = 0) -> list[dict]:
    """Class c lifts mel band c: trivially separable segments, batches of 8."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (n,), generator=g)
    mel = torch.randn(n, n_mels, frames, generator=g)
    mel[torch.arange(n), label] += 2.0
    return [
        {"mel": mel[i : i + 8], "label": label[i : i + 8], "track_index": torch.arange(i, i + 8)}
        for i in range(0, n, 8)
    ]


class MeanLinear(nn.Module):
    def __init__(self, n_mels: int = 6, n_classes: int = 3) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(n_mels)
        self.linear = nn.Linear(n_mels, n_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(mel).mean(dim=2))  # (batch, n_classes)


def test_train_epoch_steps_and_learns():
    torch.manual_seed(0)
    batches = separable(96)
    model = MeanLinear()
    cfg = TrainConfig(
        epochs=5,
        lr=0.05,
        warmup_fraction=0.1,
        mixup_alpha=0.2,
        freq_mask=1,
        time_mask=4,
        crop_frames=12,
    )
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=len(batches))
    before = evaluate(model, batches, 3, CPU).metrics()["valid_acc"]
    for _ in range(cfg.epochs):
        out = train_epoch(model, batches, optimizer, scheduler, cfg, CPU, n_classes=3)
    assert out["samples"] == 96 and out["seconds"] > 0
    assert scheduler.last_epoch == cfg.epochs * len(batches)
    assert set(out) == {"train_loss", "train_acc", "samples", "seconds", "lr"}
    after = evaluate(model, batches, 3, CPU).metrics()
    assert after["valid_acc"] > max(before, 0.9)
    assert model.training  # evaluate restores the mode it found


def test_weight_decay_spares_biases_and_norms():
    groups = make_optimizer(MeanLinear(), TrainConfig(weight_decay=0.1)).param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in groups] == [1, 3]  # linear weight | norm w, b, linear b


def lrs(cfg: TrainConfig, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=steps // cfg.epochs)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_warm_up_then_decay(schedule):
    cfg = TrainConfig(epochs=4, lr=1e-2, warmup_fraction=0.2, schedule=schedule)
    lr = lrs(cfg, 100)
    peak = int(np.argmax(lr))
    assert 15 <= peak <= 21 and lr[peak] == pytest.approx(1e-2, rel=1e-3)
    assert all(a < b for a, b in pairwise(lr[: peak + 1]))  # warm-up rises
    assert all(a >= b for a, b in pairwise(lr[peak:]))  # then decays
    assert lr[-1] < 1e-2 * 0.01
    start = 1e-2 / 25 if schedule == "onecycle" else 1e-2 / 20
    assert lr[0] == pytest.approx(start, rel=1e-3)


def test_random_crop_takes_a_window_of_each_segment():
    mel = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    crop = random_crop(mel, 4)
    assert crop.shape == (2, 3, 4)
    for i in range(2):
        start = int(crop[i, 0, 0] - mel[i, 0, 0])
        assert torch.equal(crop[i], mel[i, :, start : start + 4])
    with pytest.raises(ValueError, match="crop_frames=11"):
        random_crop(mel, 11)


def test_spec_augment_masks_bands_with_the_segment_mean():
    torch.manual_seed(1)
    mel = torch.randn(16, 20, 50) + 100.0  # no cell equals its segment's mean by chance
    out = spec_augment(mel, freq_mask=5, time_mask=10, n_masks=1)
    assert out.shape == mel.shape
    changed = out != mel
    assert changed.any()
    fill = mel.mean(dim=(1, 2), keepdim=True).expand_as(mel)
    assert torch.allclose(out[changed], fill[changed])
    for i in range(16):  # one frequency band (<= 5 bands wide) and one time span (<= 10)
        rows = changed[i].all(dim=1).sum()
        cols = changed[i].all(dim=0).sum()
        assert rows <= 5 and cols <= 10
    assert torch.equal(spec_augment(mel, freq_mask=0, time_mask=0, n_masks=2), mel)


def test_mixup_mixes_inputs_and_labels_alike():
    torch.manual_seed(2)
    target = soft_targets(torch.tensor([0, 1, 2, 3, 0, 1]), 4, 0.1)  # (batch, n_classes)
    assert torch.allclose(target.sum(dim=1), torch.ones(6))
    mel = target.unsqueeze(2).repeat(1, 1, 5)  # each segment spells out its own target
    mixed_mel, mixed_target = mixup(mel, target, alpha=0.4)
    assert mixed_mel.shape == mel.shape and mixed_target.shape == target.shape
    assert torch.allclose(mixed_mel[:, :, 0], mixed_target)
    assert torch.allclose(mixed_target.sum(dim=1), torch.ones(6))
    assert not torch.allclose(mixed_target, target)
    same_mel, same_target = mixup(mel, target, alpha=0.0)
    assert same_mel is mel and same_target is target


def test_schedule_holds_its_last_value_past_the_end():
    # a shard a little larger than planned, or a resumed run, must not break the schedule
    cfg = TrainConfig(epochs=1, schedule="onecycle")
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=5)
    for _ in range(8):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr / 25e4)


def test_ema_follows_the_weights_by_its_decay_each_step():
    torch.manual_seed(0)
    batches = separable(32)
    model = MeanLinear()
    cfg = TrainConfig(epochs=1, lr=0.05, ema_decay=0.9, label_smoothing=0.0)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=len(batches))
    ema = make_ema(model, cfg)
    expected = {k: None for k, _ in model.named_parameters()}
    for batch in batches:
        train_epoch(model, [batch], optimizer, scheduler, cfg, CPU, n_classes=3, ema=ema)
        for name, p in model.named_parameters():
            prev = expected[name]
            expected[name] = p.detach().clone() if prev is None else 0.9 * prev + 0.1 * p.detach()
    averaged = dict(ema.module.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value)
    assert int(ema.n_averaged) == len(batches)
    assert make_ema(model, TrainConfig()) is None  # off by default


def test_a_run_with_ema_checkpoints_the_average_and_resumes_exactly():
    from mrnet_ray.config import MRNetConfig, TrialConfig
    from mrnet_ray.shards import SplitArrays
    from mrnet_ray.training.feed import MemoryFeed
    from mrnet_ray.training.fit import TRAINED_KEY, LocalSession, RunPlan, fit

    class Keeping(LocalSession):
        def report(self, metrics, state):
            super().report(metrics, state)
            self.states = [*getattr(self, "states", []), copy.deepcopy(state)]

    rng = np.random.default_rng(0)
    split = SplitArrays(rng.normal(size=(16, 4, 16)).astype(np.float32), np.arange(16) % 2,
                        np.arange(16), [])  # fmt: skip
    model = MRNetConfig(n_mels=4, n_classes=2, channels=8, res2_scale=2, dilations=(1,),
                        route_depths=((1,),), se_channels=4, attention_channels=4,
                        embedding_dim=4)  # fmt: skip
    trial = TrialConfig(model, TrainConfig(epochs=3, batch_size=4, ema_decay=0.9))
    feed, plan = MemoryFeed(split, split, 4, 0), RunPlan({}, ["a", "b"], 16, 4)
    whole = Keeping()
    fit(trial, plan, feed, whole)
    resumed = LocalSession(resume_from=whole.states[0])
    fit(trial, plan, feed, resumed)
    losses = [r["valid_loss"] for r in whole.reports]
    assert [r["valid_loss"] for r in resumed.reports] == losses[1:]
    end = whole.state
    assert end["ema_steps"] == 3 * 4
    assert any(not torch.equal(end["model"][k], end[TRAINED_KEY][k]) for k in end["model"])
    for key in ("model", TRAINED_KEY):
        for name, value in end[key].items():
            assert torch.equal(value, resumed.state[key][name]), (key, name)
