"""Size, compute and CPU training speed of the MRNet family, as a markdown table.

For each model: trainable parameters, forward FLOPs of one segment (``model_cost``), and the
median time of a forward + backward step on a batch of segments, with a fixed number of
torch threads. Segments have the default ``FeatureConfig``'s shape (128 mel bands, 3 s =
129 frames at 22,050 Hz / hop 512). The full-size rows use ``MRNetConfig``'s default widths
(C=512, GPU-sized); the demo rows use C=64.

    python benchmarks/bench_model.py            # 5 timed steps per model
    python benchmarks/bench_model.py --quick    # 2 timed steps per model
    python benchmarks/bench_model.py --json OUT # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from mrnet_ray.config import FeatureConfig, MRNetConfig
from mrnet_ray.nn import build_model, model_cost

ARCHS = ("mrnet", "ecapa", "shortchunk")
SIZES = {"full": MRNetConfig(), "demo": MRNetConfig(channels=64)}


def step_seconds(cfg: MRNetConfig, batch: int, frames: int, steps: int) -> float:
    """Median wall time of ``steps`` forward + backward passes, after one warm-up pass."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = torch.randn(batch, cfg.n_mels, frames)  # (batch, n_mels, frames)
    y = torch.randint(cfg.n_classes, (batch,))
    times = []
    for _ in range(steps + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        nn.functional.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timed steps instead of 5")
    parser.add_argument("--batch", type=int, default=16, help="segments per step (16)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (2)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    feature = FeatureConfig()
    frames, steps = feature.segment_frames, 2 if args.quick else 5

    print(
        f"batch {args.batch}, {feature.n_mels} mels x {frames} frames "
        f"({feature.segment_seconds:g} s), {args.threads} threads, median of {steps} steps\n"
    )
    print("| model | size | C | params | GFLOPs / segment | fwd+bwd ms / batch | samples / s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for size, base in SIZES.items():
        for arch in ARCHS:
            cfg = base.replace(arch=arch, n_mels=feature.n_mels)
            cost = model_cost(cfg, frames)
            seconds = step_seconds(cfg, args.batch, frames, steps)
            print(
                f"| {arch} | {size} | {cfg.channels} | {cost.params / 1e6:.2f} M "
                f"| {cost.flops / 1e9:.2f} | {seconds * 1e3:.0f} | {args.batch / seconds:.1f} |"
            )
            rows.append({
                "model": arch, "size": size, "channels": cfg.channels, "params": cost.params,
                "gflops_per_segment": round(cost.flops / 1e9, 3),
                "step_ms": round(seconds * 1e3, 1), "samples_per_s": round(args.batch / seconds, 2),
            })  # fmt: skip
    if args.json:
        result = {"batch": args.batch, "threads": args.threads, "frames": frames, "rows": rows}
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
