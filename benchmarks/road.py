"""ROAD's noisy linear imputation (Rong et al., ICML 2022): seconds per image (224 x 224), ours against
pytorch-grad-cam's ``NoisyLinearImputer`` and our previous implementation, on the same masks, in one run.

    .venv/bin/pip install grad-cam      # the peer
    .venv/bin/python benchmarks/road.py [--photos 3] [--methods gradcam random] [--repeats 3] [--size 224]

Embedded photos (``load_dataset("photos")``) through EfficientNet-Lite0 (its shipped weights); for each photo
and method, the 18 masks that ``metrics.road_curves`` imputes (MoRF and LeRF at ``metrics.ROAD_FRACTIONS``,
10 % to 90 %, ties in the seeded order of ``road_curves``). "seconds / image" is the time to impute all 18 of
them, without noise on every side (pytorch-grad-cam draws its noise from torch's global generator, ours from a
seed: with noise 0 the three must agree to rounding). Each repeat times the three back to back on the same
masks, so that load from other jobs hits them alike; each number is the median of ``--repeats`` repeats, and
the ratios divide numbers of the same row. ``--size 96`` resizes the preprocessed photos to 96 x 96, the size of
the synthetic scenes, before the maps are computed.

* pytorch-grad-cam ``NoisyLinearImputer`` (grad-cam 1.5.7, from the authors' code): the system assembled in a
  ``lil_matrix``, unknowns in row-major order, ``spsolve`` (SuperLU, COLAMD ordering).
* previous: our ``noisy_linear_imputation`` before this solver, as it was: the same system assembled with
  NumPy, unknowns in row-major order, ``splu`` with COLAMD, the 3 channels in one solve, image by image with
  tensor indexing around it and the noise field drawn at every call.
* ours: ``metrics.noisy_linear_imputation``: unknowns in nested-dissection order, ``splu`` in that order in
  symmetric mode (``metrics._RoadSystem``).

"max abs diff" compares our imputed images with pytorch-grad-cam's and with the previous ones (float32 on every
side), over all masks of the row.

A second table times ours on all the photos at once, one batch per mask position (as ``evaluate`` passes a shard
of images to ``road_curves``): the distinct masks of a batch are factorised one after the other (``workers=1``)
or side by side in ``torch.get_num_threads()`` threads (the default), with the same result.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np
import scipy
import torch
from scipy import sparse
from scipy.sparse.linalg import splu

import liftcam_utils as lu
from liftcam_utils.datasets import load_dataset
from liftcam_utils.evaluation import metrics as M


def _previous_values(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """(C, n) removed values (row-major) as the previous solver computed them: row-major unknowns, COLAMD."""
    height, width = removed.shape
    rows, columns = np.nonzero(removed)
    n_removed = len(rows)
    if n_removed == removed.size:
        return np.zeros((image.shape[0], n_removed))
    unknown = np.full(removed.shape, -1)
    unknown[rows, columns] = np.arange(n_removed)
    diagonal = np.zeros(n_removed)
    right_hand_side = np.zeros((n_removed, image.shape[0]))
    equations, unknowns, weights = [], [], []
    for row_offset, column_offset, weight in M.ROAD_NEIGHBOURS:
        neighbour_rows, neighbour_columns = rows + row_offset, columns + column_offset
        inside = np.flatnonzero((neighbour_rows >= 0) & (neighbour_rows < height)
                                & (neighbour_columns >= 0) & (neighbour_columns < width))
        neighbour_rows, neighbour_columns = neighbour_rows[inside], neighbour_columns[inside]
        diagonal[inside] += weight
        neighbour = unknown[neighbour_rows, neighbour_columns]
        coupled = neighbour >= 0
        equations.append(inside[coupled])
        unknowns.append(neighbour[coupled])
        weights.append(np.full(coupled.sum(), -weight))
        right_hand_side[inside[~coupled]] += weight * image[:, neighbour_rows[~coupled], neighbour_columns[~coupled]].T
    system = (sparse.csc_matrix((np.concatenate(weights), (np.concatenate(equations), np.concatenate(unknowns))),
                                shape=(n_removed, n_removed)) + sparse.diags(diagonal, format="csc"))
    return splu(system, permc_spec="COLAMD").solve(right_hand_side).T


def _previous_imputation(x: torch.Tensor, removed: torch.Tensor, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """``noisy_linear_imputation`` as it was before this solver: the noise field drawn at every call, then
    image by image, tensor to NumPy and back, around :func:`_previous_values`."""
    field = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * noise
    removed = (removed != 0).cpu()
    imputed = x.detach().clone()
    for index in range(len(x)):
        where = removed[index]
        if where.any():
            values = _previous_values(x[index].detach().cpu().double().numpy(), where.numpy())
            imputed[index][:, where] = (torch.from_numpy(values) + field[:, where]).to(x)
    return imputed


def _masks(saliency: torch.Tensor) -> list[torch.Tensor]:
    """The (1, H, W) MoRF and LeRF masks of ``road_curves`` at every ROAD fraction, for a (1, H, W) map."""
    ranking = M._relevance_ranking(saliency, 0)
    return [mask for fraction in M.ROAD_FRACTIONS.tolist()
            for mask in (M._top_of(saliency, ranking, fraction), M._bottom_of(saliency, ranking, fraction))]


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--photos", type=int, default=3, help="the first photos of load_dataset('photos')")
    parser.add_argument("--methods", nargs="*", default=["gradcam", "random"],
                        help="maps to rank the pixels by (random: a flat region, ties in the seeded order)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="image side (the photos are resized to it)")
    args = parser.parse_args()
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    warnings.filterwarnings("ignore", message="__array_wrap__ must accept context", category=DeprecationWarning)
    model = lu.load_model("efficientnet_lite0", device="cpu")
    split = model.split()
    records = load_dataset("photos")[:args.photos]
    x = torch.stack([model.preprocess(record.image()) for record in records])
    if args.size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(args.size, args.size), mode="bilinear", antialias=True)
    peer = NoisyLinearImputer(noise=0.0)

    def peer_images(image, masks):
        return [peer(image[0], (mask[0] == 0).to(torch.float32)) for mask in masks]

    def previous_images(image, masks):
        return [_previous_imputation(image, mask) for mask in masks]

    def our_images(image, masks):
        return [M.noisy_linear_imputation(image, mask, noise=0.0) for mask in masks]

    fractions = ", ".join(f"{p:.0%}" for p in M.ROAD_FRACTIONS.tolist())
    print(f"{args.size} x {args.size} images; {platform.machine()} CPU, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, scipy {scipy.__version__}, load average at start {os.getloadavg()[0]:.1f}; "
          f"{len(M.ROAD_FRACTIONS) * 2} masks per image (MoRF and LeRF at {fractions}), median of {args.repeats}")
    print("| photo | map | pytorch-grad-cam (s / image) | previous (s / image) | ours (s / image) "
          "| grad-cam / ours | previous / ours | max abs diff vs grad-cam / previous |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    totals = {"peer": [], "previous": [], "ours": []}
    batches = {}
    for method in args.methods:
        maps = lu.saliency(method, split, x)
        per_image = [_masks(maps[index:index + 1]) for index in range(len(records))]
        batches[method] = [torch.cat(masks) for masks in zip(*per_image, strict=True)]
        for index, record in enumerate(records):
            image, masks = x[index:index + 1], per_image[index]
            times = {"peer": [], "previous": [], "ours": []}
            for _ in range(args.repeats):
                seconds, theirs = _timed(lambda image=image, masks=masks: peer_images(image, masks))
                times["peer"].append(seconds)
                seconds, before = _timed(lambda image=image, masks=masks: previous_images(image, masks))
                times["previous"].append(seconds)
                seconds, ours = _timed(lambda image=image, masks=masks: our_images(image, masks))
                times["ours"].append(seconds)
            to_peer = max((a[0] - b).abs().max().item() for a, b in zip(ours, theirs, strict=True))
            to_previous = max((a - b).abs().max().item() for a, b in zip(ours, before, strict=True))
            medians = {key: statistics.median(values) for key, values in times.items()}
            for key, value in medians.items():
                totals[key].append(value)
            print(f"| {record.name} | {method} | {medians['peer']:.3f} | {medians['previous']:.3f} "
                  f"| {medians['ours']:.3f} | {medians['peer'] / medians['ours']:.1f}x "
                  f"| {medians['previous'] / medians['ours']:.1f}x | {to_peer:.1e} / {to_previous:.1e} |", flush=True)
    means = {key: statistics.mean(values) for key, values in totals.items()}
    print(f"| mean | | {means['peer']:.3f} | {means['previous']:.3f} | {means['ours']:.3f} "
          f"| {means['peer'] / means['ours']:.1f}x | {means['previous'] / means['ours']:.1f}x | |")

    threads = torch.get_num_threads()
    print(f"\nours on the {len(records)} photos as one batch per mask (as in evaluate's shards), distinct masks "
          f"factorised in 1 thread or in {threads} (the default, torch.get_num_threads()); median of {args.repeats}")
    print(f"| map | 1 thread (s / image) | {threads} threads (s / image) | speed-up |")
    print("|---|---:|---:|---:|")
    for method, masks in batches.items():
        times = {1: [], threads: []}
        results = {}
        for _ in range(args.repeats):
            for workers in times:
                seconds, results[workers] = _timed(lambda masks=masks, workers=workers: [
                    M.noisy_linear_imputation(x, mask, noise=0.0, workers=workers) for mask in masks])
                times[workers].append(seconds / len(records))
        assert all(torch.equal(a, b) for a, b in zip(results[1], results[threads], strict=True))
        one, many = statistics.median(times[1]), statistics.median(times[threads])
        print(f"| {method} | {one:.3f} | {many:.3f} | {one / many:.2f}x |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
