"""Time every CAM method on one 224 x 224 image, as a multiple of one plain forward pass.

    .venv/bin/python benchmarks/methods.py [--model efficientnet_lite0] [--layer NAME]
                                            [--repeats 5] [--device cpu|cuda]

All timings come from the same run, interleaved with forward passes, so the ratios hold even on
a noisy machine. Each entry is the median of ``--repeats`` runs (slow methods run once).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import liftcam_utils as lu
from liftcam_utils.engine.head_ops import is_affine_head

SLOW = {"scorecam"}  # N full forward passes: timed once


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0", choices=lu.MODEL_NAMES)
    parser.add_argument("--layer", default=None, help="CAM layer (default: the model's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--methods", nargs="*", default=list(lu.METHODS))
    args = parser.parse_args()

    weights = "default" if args.model == "efficientnet_lite0" else None  # timing only
    model = lu.load_model(args.model, weights=weights, device=args.device)
    split = model.split(args.layer)
    device = model.device
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)

    def forward():
        with torch.no_grad():
            model.net(x)

    for _ in range(3):
        forward()
    rows = []
    for method in args.methods:
        if method == "exact_shap" and not is_affine_head(split.head):
            continue  # exhaustive over 2^N coalitions: not defined at this size
        lu.coefficients(method, split, x)  # warm-up
        repeats = 1 if method in SLOW else args.repeats
        method_times, forward_times = [], []
        for _ in range(repeats):
            forward_times.append(_timed(forward, device))
            method_times.append(_timed(lambda m=method: lu.coefficients(m, split, x), device))
        seconds = statistics.median(method_times)
        rows.append((method, seconds, seconds / statistics.median(forward_times)))

    threads = torch.get_num_threads()
    print(f"model {args.model}, layer {split.layer}, device {device} "
          f"({platform.processor() or platform.machine()}, {threads} threads), torch {torch.__version__}")
    print("| method | seconds / image | x forward pass |")
    print("|---|---:|---:|")
    for method, seconds, ratio in rows:
        print(f"| {method} | {seconds:.4f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
