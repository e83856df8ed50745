"""SHAP-CAM orderings per second: our engine vs a naive batched full-head implementation.

    .venv/bin/python benchmarks/shapcam.py [--orderings 20] [--device cpu|cuda]

Same run, same image, same model and layer for both. The naive baseline evaluates the whole
head on every prefix of every ordering (N - 1 per ordering, batched); ours factors the head
(``liftcam_utils.head_factoring``) and sums channel contributions along each ordering.
"""

from __future__ import annotations

import argparse
import time

import torch

import liftcam_utils as lu
from liftcam_utils.cam import prepare
from liftcam_utils.methods.shapley import random_orderings

CASES = [
    ("efficientnet_lite0", "_blocks.15", "default"),
    ("efficientnet_lite0", "_blocks.15._swish@0", "default"),
    ("vgg16", None, None),
]


def naive_shapcam(inputs, orderings, batch_size=256):
    """Algorithm 1 with the full head on every prefix (N - 1 evaluations per ordering, batched)."""
    maps, c = inputs.maps[0], inputs.target[0]
    n = maps.shape[0]
    alpha = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        empty = inputs.split.head(torch.zeros_like(maps)[None])[0, c]
        full = inputs.split.head(maps[None])[0, c]
        for ordering in orderings:
            rank = torch.empty_like(ordering)
            rank[ordering] = torch.arange(n)
            masks = (rank[None, :] < torch.arange(1, n)[:, None]).to(maps)
            inner = torch.cat([inputs.split.head(maps[None] * m[:, :, None, None])[:, c]
                               for m in masks.split(batch_size)])
            path = torch.cat([empty[None], inner, full[None]]).double().cpu()
            alpha[ordering] += path.diff()
    return alpha / len(orderings)


def _time(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--orderings", type=int, default=20)
    parser.add_argument("--naive-orderings", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | layer | N | naive orderings/s | ours orderings/s | speed-up | SHAP-CAM_10k (ours) "
          "| max abs diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, layer, weights in CASES:
        torch.manual_seed(0)
        model = lu.load_model(name, weights=weights, device=args.device)
        split = model.split(layer)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(model.device)
        with lu.eval_mode(model.net):
            inputs = prepare(split, x)
        n = inputs.num_maps
        few = random_orderings(n, args.naive_orderings, seed=0)
        naive_seconds, naive_alpha = _time(naive_shapcam, inputs, few)
        ours_few = lu.coefficients("shapcam", split, x, n_permutations=args.naive_orderings, seed=0)
        difference = (ours_few[0].double().cpu() - naive_alpha).abs().max().item()
        ours_seconds, _ = _time(lu.coefficients, "shapcam", split, x, n_permutations=args.orderings, seed=0)
        naive_rate = args.naive_orderings / naive_seconds
        ours_rate = args.orderings / ours_seconds
        print(f"| {name} | {split.layer} | {n} | {naive_rate:.2f} | {ours_rate:.2f} | {ours_rate / naive_rate:.1f}x "
              f"| {10_000 / ours_rate / 60:.1f} min | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
