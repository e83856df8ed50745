"""SHAP-CAM orderings per second: our engine vs two batched full-head implementations.

    .venv/bin/python benchmarks/shapcam.py [--orderings 32] [--baseline-orderings 2] [--repeats 3]
                                           [--full-run] [--threads 1] [--device cpu|cuda]

Same run, same image, model, layer and body output for every row; the three are timed in turn,
``--repeats`` times, and each rate is the median. Both baselines run the whole head on maps masked
by a coalition, ``batch_size`` coalitions at a time:

* literal: Algorithm 1 as written, ``v(S u {k})`` and ``v(S)`` evaluated separately for each of
  the N players of an ordering: 2N head evaluations per ordering;
* prefix-sharing: each prefix of an ordering evaluated once, the empty and full coalitions once
  for all orderings: N - 1 head evaluations per ordering.

Ours (``ChannelGame``) factors the head (``liftcam_utils.engine.head_factoring``), sums channel
contributions along the orderings and runs only the rest of the head per prefix. Its rate is over
the orderings alone; its one-off cost per image (contributions, ``F^c(0)``, ``F^c(A)``) is a column
of its own and enters the SHAP-CAM_10k estimate. On a machine shared with other jobs, ``--threads 1``
keeps the timings stable: two threads that wait for each other at every op suffer most from a
busy CPU. ``--full-run`` also times
``coefficients("shapcam", n_permutations=10000)`` end to end (body included) on the first case run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import liftcam_utils as lu
from liftcam_utils.engine.cam_input import prepare
from liftcam_utils.engine.channel_game import ChannelGame
from liftcam_utils.methods.shapley import random_orderings

CASES = [
    ("efficientnet_lite0", "_blocks.15", "default"),
    ("efficientnet_lite0", "_blocks.15._swish@0", "default"),
    ("vgg16", None, None),
]


def _head_values(inputs, masks, batch_size):
    """``F^c`` of the maps masked by each row of ``masks`` (M, N), ``batch_size`` rows at a time."""
    maps, c = inputs.maps[0], inputs.target[0]
    return torch.cat([inputs.split.head(maps[None] * chunk[:, :, None, None])[:, c]
                      for chunk in masks.to(maps).split(batch_size)]).double().cpu()


def _ranks(ordering):
    rank = torch.empty_like(ordering)
    rank[ordering] = torch.arange(len(ordering))
    return rank


@torch.no_grad()
def literal_shapcam(inputs, orderings, batch_size=256):
    """Algorithm 1 as written: for each player ``k`` of an ordering, ``v(S u {k}) - v(S)`` with both
    coalitions evaluated by the full head (2N evaluations per ordering, batched)."""
    n = inputs.num_maps
    alpha = torch.zeros(n, dtype=torch.float64)
    for ordering in orderings:
        before = _ranks(ordering)[None, :] < torch.arange(n)[:, None]  # row i: S, the players before the i-th
        with_k = before.clone()
        with_k[torch.arange(n), ordering] = True  # S u {k}
        values = _head_values(inputs, torch.cat([with_k, before]), batch_size)
        alpha[ordering] += values[:n] - values[n:]
    return alpha / len(orderings)


@torch.no_grad()
def prefix_shapcam(inputs, orderings, batch_size=256):
    """Each prefix of an ordering evaluated once by the full head (N - 1 evaluations per ordering; the
    empty and full coalitions once for all orderings)."""
    n = inputs.num_maps
    ends = _head_values(inputs, torch.stack([torch.zeros(n), torch.ones(n)]), batch_size)
    alpha = torch.zeros(n, dtype=torch.float64)
    for ordering in orderings:
        prefixes = _ranks(ordering)[None, :] < torch.arange(1, n)[:, None]
        path = torch.cat([ends[:1], _head_values(inputs, prefixes, batch_size), ends[1:]])
        alpha[ordering] += path.diff()
    return alpha / len(orderings)


def ours_setup(inputs):
    """The one-off work per image: the game's contributions and its two end values."""
    game = ChannelGame(inputs, 0)
    return game, game.ends


def ours_shapcam(game, orderings):
    """The same estimate from our engine, ``orderings_per_batch`` orderings at a time."""
    total = sum(game.marginals(group).sum(0) for group in orderings.split(game.orderings_per_batch))
    return total / len(orderings)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--orderings", type=int, default=32, help="orderings per timing of ours")
    parser.add_argument("--baseline-orderings", type=int, default=2, help="orderings per timing of each baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-run", action="store_true",
                        help="also time SHAP-CAM_10k end to end on the first case run")
    parser.add_argument("--cases", type=int, nargs="*", default=list(range(len(CASES))),
                        help="indices into CASES: " + ", ".join(f"{i}: {m} {layer or 'default layer'}"
                                                                for i, (m, layer, _) in enumerate(CASES)))
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 keeps timings stable on a shared machine")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | layer | N | literal (2N) orderings/s | prefix-sharing (N - 1) orderings/s | ours orderings/s "
          "| ours / literal | ours / prefix-sharing | ours one-off (s) | SHAP-CAM_10k (ours, est.) "
          "| max abs diff vs literal / prefix |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    full_runs = []
    for name, layer, weights in (CASES[i] for i in args.cases):
        torch.manual_seed(0)
        model = lu.load_model(name, weights=weights, device=args.device)
        split = model.split(layer)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(model.device)
        with lu.eval_mode(model.net):
            inputs = prepare(split, x)
        n = inputs.num_maps
        few = random_orderings(n, args.baseline_orderings, seed=0)
        many = random_orderings(n, args.orderings, seed=1)
        runs = {"literal": [], "prefix": [], "ours": [], "setup": []}  # orderings/s; setup: seconds
        for _ in range(args.repeats):  # interleaved, so that load from other jobs hits all three alike
            seconds, literal = _timed(literal_shapcam, inputs, few)
            runs["literal"].append(args.baseline_orderings / seconds)
            seconds, prefix = _timed(prefix_shapcam, inputs, few)
            runs["prefix"].append(args.baseline_orderings / seconds)
            seconds, (game, _) = _timed(ours_setup, inputs)
            runs["setup"].append(seconds)
            seconds, _ = _timed(ours_shapcam, game, many)
            runs["ours"].append(args.orderings / seconds)
        rate = {key: statistics.median(values) for key, values in runs.items()}
        ours_few = ours_shapcam(game, few)
        differences = [(ours_few - reference).abs().max().item() for reference in (literal, prefix)]
        estimate = rate["setup"] + 10_000 / rate["ours"]
        print(f"| {name} | {split.layer} | {n} | {rate['literal']:.2f} | {rate['prefix']:.2f} | {rate['ours']:.1f} "
              f"| {rate['ours'] / rate['literal']:.1f}x | {rate['ours'] / rate['prefix']:.1f}x | {rate['setup']:.2f} "
              f"| {estimate / 60:.1f} min | {differences[0]:.1e} / {differences[1]:.1e} |", flush=True)
        if args.full_run and not full_runs:
            seconds, _ = _timed(lu.coefficients, "shapcam", split, x, n_permutations=10_000, seed=0)
            full_runs.append(f"| {name} | {split.layer} | {seconds / 60:.1f} min |")
    if full_runs:
        print("\n| model | layer | SHAP-CAM_10k end to end (body, contributions, 10,000 orderings) |")
        print("|---|---|---:|")
        print("\n".join(full_runs))


if __name__ == "__main__":
    main()
