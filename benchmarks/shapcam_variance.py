"""SHAP-CAM's estimators at equal cost: orderings needed to reach cosine 0.999 to a high-P reference.

    .venv/bin/python benchmarks/shapcam_variance.py [--photo 0] [--layer _blocks.15._swish@0] [--seeds 3]
                                                    [--reference 2000] [--threads 1]

One embedded photo (``load_dataset("photos")``), EfficientNet-Lite0 cut at its non-linear layer, the predicted
class. Every estimator evaluates P orderings, N - 1 head evaluations each (the empty and full coalitions once), so
cost is counted in orderings: P(N - 1) head evaluations. The control variate adds no head evaluation, but its fit
and the readout of ``z^2`` on every prefix take time, hence the measured seconds per ordering beside each row.

The references: SHAP-CAM with ``--reference`` plain orderings, whose own noise is estimated from the spread of its
per-ordering marginals (relative variance ``r_ref``), and as many stratified antithetic orderings (another seed),
much less noisy. Against a noisy reference an estimate with relative variance ``r`` has
``1 - cos ~ (r + r_ref) / 2``, so the plain reference caps the attainable cosine at about ``1 - r_ref / 2``; the
"noise-corrected" column subtracts ``r_ref / 2`` from ``1 - cos``.

Curves are means over ``--seeds`` seeds. Plain, antithetic and plain + control are prefix-consistent (the first P
orderings of a longer run are the design of P), so one run of the largest cost gives every P; the stratified
designs depend on P and run once per grid cost. The cost to 0.999 interpolates ``log(1 - cos)`` linearly in
``log P`` between the two grid costs around the crossing.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import liftcam_utils as lu
from liftcam_utils.datasets import load_dataset
from liftcam_utils.engine.cam_input import prepare
from liftcam_utils.engine.channel_game import ChannelGame
from liftcam_utils.evaluation import metrics
from liftcam_utils.methods import shapley

TARGET = 0.999
REPORTED_COSTS = (10, 20, 50, 100, 200, 400)
PREFIX_GRID = (10, 20, 30, 40, 50, 60, 70, 80, 100, 130, 160, 200, 260, 330, 400)
DESIGN_GRID = (10, 20, 35, 50, 70, 100, 200, 400)
# (name, estimator, control, prefix-consistent)
ESTIMATORS = [
    ("plain", "plain", None, True),
    ("antithetic", "antithetic", None, True),
    ("plain + quadratic control", "plain", "quadratic", True),
    ("stratified", "stratified", None, False),
    ("stratified antithetic", "stratified_antithetic", None, False),
    ("stratified + quadratic control", "stratified", "quadratic", False),
]
REFERENCE_SEED = 10_000


def _marginals(game: ChannelGame, orderings: torch.Tensor) -> torch.Tensor:
    """Each ordering's marginal contributions, (P, N) float64."""
    return torch.cat([game.marginals(group) for group in orderings.split(game.orderings_per_batch)])


def plain_reference(game: ChannelGame, n_orderings: int, seed: int) -> tuple[torch.Tensor, float]:
    """SHAP-CAM with ``n_orderings`` plain orderings and its relative variance ``tr Var / ||alpha||^2``, estimated
    from the spread of the per-ordering marginals."""
    total = torch.zeros(game.n, dtype=torch.float64)
    squares = torch.zeros_like(total)
    for group in shapley.random_orderings(game.n, n_orderings, seed).split(256):
        marginals = _marginals(game, group)
        total += marginals.sum(0)
        squares += marginals.square().sum(0)
    alpha = total / n_orderings
    variance = (squares / n_orderings - alpha.square()) * n_orderings / (n_orderings - 1)
    return alpha, float(variance.sum() / n_orderings / alpha.square().sum())


def curve(inputs, game: ChannelGame, estimator: str, control: str | None, prefix: bool, seed: int
          ) -> dict[int, torch.Tensor]:
    """The estimate at every grid cost, for one seed."""
    if not prefix:
        return {p: shapley.shapcam(inputs, p, seed=seed, estimator=estimator, control=control)[0].double()
                for p in DESIGN_GRID}
    offset = torch.zeros(game.n, dtype=torch.float64)
    if control is not None:
        offset = game.quadratic_control.shapley
        game = game.minus(game.quadratic_control)
    orderings = shapley.ESTIMATORS[estimator](game.n, PREFIX_GRID[-1], seed)
    sums = _marginals(game, orderings).cumsum(0)
    return {p: sums[p - 1] / p + offset for p in PREFIX_GRID}


def cost_to_target(costs, cosines) -> str:
    """The first grid cost with a mean cosine >= TARGET and the log-log interpolated crossing before it (none
    where the first grid cost is already there, or the corrected cosine reaches 1)."""
    for i, (cost, cosine) in enumerate(zip(costs, cosines, strict=True)):
        if cosine >= TARGET:
            if i == 0 or cosine >= 1:
                return f"<= {cost}"
            (c0, e0), (c1, e1) = (costs[i - 1], 1 - cosines[i - 1]), (cost, 1 - cosine)
            slope = (math.log(e1) - math.log(e0)) / (math.log(c1) - math.log(c0))
            crossing = c0 * math.exp((math.log(1 - TARGET) - math.log(e0)) / slope)
            return f"{crossing:.0f} ({cost})"
    return f"> {costs[-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--photo", type=int, default=0, help="index into load_dataset('photos')")
    parser.add_argument("--layer", default="_blocks.15._swish@0")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reference", type=int, default=2000, help="orderings of each reference")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = lu.load_model("efficientnet_lite0")
    record = load_dataset("photos")[args.photo]
    split = model.split(args.layer)
    with lu.eval_mode(model.net):
        inputs = prepare(split, model.preprocess(record.image())[None].to(model.device))
        game = ChannelGame.of(inputs, 0)
        target = int(inputs.target[0])
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); photo {record.name}, "
              f"class {target} ({model.categories[target]}), layer {split.layer}, N = {game.n}, "
              f"F(A) - F(0) = {float(game.ends[1] - game.ends[0]):.4f}")

        start = time.perf_counter()
        reference, reference_noise = plain_reference(game, args.reference, REFERENCE_SEED)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        second = shapley.shapcam(inputs, args.reference, seed=REFERENCE_SEED + 1,
                                 estimator="stratified_antithetic")[0].double()
        second_seconds = time.perf_counter() - start
        between = float(metrics.cosine_similarity(reference, second))
        print(f"plain reference: {args.reference} orderings, {seconds:.0f} s ({seconds / args.reference:.3f} s per "
              f"ordering); its relative variance r_ref = {reference_noise:.2e} caps the expected cosine of an exact "
              f"estimate at {1 - reference_noise / 2:.5f}")
        print(f"stratified antithetic reference: {args.reference} orderings, {second_seconds:.0f} s; cosine to the "
              f"plain reference {between:.5f} (expected from r_ref alone: {1 - reference_noise / 2:.5f})")

        results, rates = {}, {}
        for name, estimator, control, prefix in ESTIMATORS:
            start = time.perf_counter()
            runs = [curve(inputs, game, estimator, control, prefix, seed) for seed in range(args.seeds)]
            grid = PREFIX_GRID if prefix else DESIGN_GRID
            orderings = args.seeds * (grid[-1] if prefix else sum(grid))
            rates[name] = (time.perf_counter() - start) / orderings
            results[name] = {
                reference_name: [sum(float(metrics.cosine_similarity(run[p], ref)) for run in runs) / len(runs)
                                 for p in grid]
                for reference_name, ref in (("plain", reference), ("stratified", second))}
            results[name]["error"] = [sum(float((run[p] - reference).norm() / reference.norm()) for run in runs)
                                      / len(runs) for p in grid]
            results[name]["grid"] = grid
            print(f"  {name}: {rates[name]:.3f} s per ordering", flush=True)

    print(f"\nOrderings' cost to a mean cosine >= {TARGET} over {args.seeds} seeds: interpolated (first grid cost)")
    print("| estimator | vs plain reference | noise-corrected (1 - cos - r_ref / 2) | vs stratified reference "
          "| s / ordering | cosine at 50 (plain ref.) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, _, _, _ in ESTIMATORS:
        row = results[name]
        grid = row["grid"]
        corrected = [cosine + reference_noise / 2 for cosine in row["plain"]]
        print(f"| {name} | {cost_to_target(grid, row['plain'])} | {cost_to_target(grid, corrected)} "
              f"| {cost_to_target(grid, row['stratified'])} | {rates[name]:.3f} "
              f"| {row['plain'][grid.index(50)]:.5f} |")
    for key, title in (("plain", "mean cosine to the plain reference"),
                       ("error", "mean relative error ||alpha - ref|| / ||ref|| to the plain reference")):
        print(f"\n{title}, by cost in orderings")
        print("| estimator | " + " | ".join(str(c) for c in REPORTED_COSTS) + " |")
        print("|---|" + "---:|" * len(REPORTED_COSTS))
        for name, _, _, _ in ESTIMATORS:
            row = results[name]
            print(f"| {name} | " + " | ".join(f"{row[key][row['grid'].index(c)]:.{5 if key == 'plain' else 4}f}"
                                              for c in REPORTED_COSTS) + " |")


if __name__ == "__main__":
    main()
