"""LIFT-CAM and SHAP-CAM on torchvision's ViT-B/16 at 224 x 224: time in forward passes, orderings per second.

    .venv/bin/python benchmarks/vit.py [--threads 2] [--repeats 3] [--orderings 2] [--weights FILE]

Random weights unless ``--weights`` names a state dict (timings do not depend on the weights; the classifier is
drawn at random, since torchvision starts it at zero). One image, the default layer (the input of the last block:
768 channels on the 14 x 14 patch grid). Each row is timed back to back with a forward pass of the whole network,
so that load from other jobs hits both alike, and divided by it ("x forward"). Times are medians of ``--repeats``
runs after a warm-up, except SHAP-CAM (one run of ``--orderings`` orderings: 767 head evaluations each).
LIFT-CAM's time includes the body's forward pass, as every method's does.

Then, on ``shapes_vit`` (64 channels, where many orderings are affordable): the orderings SHAP-CAM's stratified
estimator needs for cosine 0.999 to a reference of 2,048 orderings drawn with another seed, on two scenes (the
quadratic control variate needs a head that factors into channelwise sums, which a transformer block does not).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from peers import _seconds  # median of timed runs after a warm-up (none for one run)
from torch import nn

import liftcam_utils as lu
from liftcam_utils.datasets import load_dataset, select


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--orderings", type=int, default=2)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = lu.load_model("vit_b_16", weights=args.weights, device="cpu")
    if args.weights is None:
        nn.init.normal_(model.net.heads.head.weight, std=0.02)
    split = model.split()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            model.net(x)

    print(f"ViT-B/16, layer {split.layer!r}, one 224 x 224 image, {args.threads} threads")
    print(f"{'method':<22}{'seconds':>10}{'forward s':>12}{'x forward':>12}")
    for method in ("gradcam", "liftcam"):
        ours = _seconds(lambda m=method: lu.coefficients(m, split, x), args.repeats)
        reference = _seconds(forward, args.repeats)
        print(f"{method:<22}{ours:>10.3f}{reference:>12.3f}{ours / reference:>12.2f}")
    inputs_time = _seconds(forward, args.repeats)
    shapcam = _seconds(lambda: lu.coefficients("shapcam", split, x, n_permutations=args.orderings, seed=0), 1)
    reference = _seconds(forward, args.repeats)
    print(f"{f'shapcam P={args.orderings}':<22}{shapcam:>10.3f}{reference:>12.3f}{shapcam / reference:>12.2f}")
    print(f"SHAP-CAM: {args.orderings / shapcam:.3f} orderings per second "
          f"(forward pass {min(inputs_time, reference):.3f} s)")
    _orderings_for_cosine()


def _orderings_for_cosine(target_cosine: float = 0.999) -> None:
    vit = lu.load_model("shapes_vit", device="cpu")
    records = select(load_dataset("scenes", model=vit), 2, 0)
    x = torch.stack([vit.preprocess(r.image()) for r in records])
    target = torch.tensor([r.label for r in records])
    split = vit.split()
    start = time.perf_counter()
    reference = lu.coefficients("shapcam", split, x, target, n_permutations=2048, seed=10_000,
                                estimator="stratified").double()
    rate = 2 * 2048 / (time.perf_counter() - start)
    cosines = {p: F.cosine_similarity(lu.coefficients("shapcam", split, x, target, n_permutations=p, seed=0,
                                                      estimator="stratified").double(), reference).min().item()
               for p in (16, 32, 64, 128, 256, 512)}
    enough = next((p for p, c in cosines.items() if c >= target_cosine), None)
    print(f"shapes_vit, 2 scenes: {rate:.0f} orderings per second; smallest cosine to 2,048 orderings by P: "
          + ", ".join(f"{p}: {c:.5f}" for p, c in cosines.items()) + f"; cosine {target_cosine} from P = {enough}")


if __name__ == "__main__":
    main()
