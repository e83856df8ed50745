"""What the workbook's two heaviest loops cost before and after their last changes, timed in one run:

* the metrics' forward passes (``evaluate`` scores every map on hundreds of perturbed images): the network as
  loaded against its copy with the batch norms folded into their convolutions
  (:func:`liftcam_utils.engine.inference_net.inference_net`), both channels-last as the metrics run them;
* Ablation-CAM at EfficientNet-Lite0's 1152-channel cut (N head evaluations per image through the factored
  head, notebook 05's mosaics and 04's photos): each coalition "all but channel k" as the earlier code built it
  (a sparse product for the one term, then both ends computed for every row and one kept by ``torch.where``),
  against the row taken and subtracted in place (``ChannelGame._mixed``); and a mosaic's four targets (one image,
  four classes, as notebook 05 evaluates them) with and without the second to fourth games sharing the first's
  contributions.

    .venv/bin/python benchmarks/scoring.py [--repeats 5]

Each pair is timed alternately (A, B, A, B, ...) after one warm-up of each; the table gives the medians, their
ratio and the largest difference of the results (float rounding).
"""

from __future__ import annotations

import argparse
import platform

import torch
from memory_format import interleaved  # benchmarks/: the same interleaved timing

import liftcam_utils as lu
from liftcam_utils.datasets import load_dataset
from liftcam_utils.engine.cam_input import prepare
from liftcam_utils.engine.channel_game import ChannelGame
from liftcam_utils.engine.inference_net import inference_net
from liftcam_utils.methods.perturbation import ablationcam

LAYER = "_blocks.15._swish@0"


def forward_rows(repeats: int) -> list[tuple]:
    rows = []
    for name, size in (("efficientnet_lite0", 224), ("shapes_vgg", 96)):
        net = lu.load_model(name).net.eval()
        x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
        x = x.contiguous(memory_format=torch.channels_last)
        folded = inference_net(net, x[:1])
        out = {}

        def run(module, key, x=x, out=out):
            def forward():
                with torch.no_grad():
                    out[key] = module(x)
            return forward

        before, after = interleaved(run(net, "net"), run(folded, "folded"), repeats)
        rows.append((name, "forward pass, batch 4: as loaded / batch norms folded", before, after,
                     (out["net"] - out["folded"]).abs().max().item()))
    return rows


def _previous_mixed(game: ChannelGame, coalitions: torch.Tensor) -> torch.Tensor:
    """The earlier ``ChannelGame._mixed``: a sparse product for one term per row, both ends for every row."""
    sparse = coalitions.sum(1, keepdim=True) <= game.n / 2
    terms = torch.where(sparse, coalitions, 1 - coalitions)
    sums = torch.sparse.mm(terms.to_sparse(), game._contributions)
    return torch.where(sparse, game._base.flatten() + sums, game._full.flatten() - sums)


def ablation_rows(repeats: int) -> list[tuple]:
    model = lu.load_model("efficientnet_lite0")
    photo = load_dataset("photos", model=model)[0]
    x = model.preprocess(photo.image())[None]
    split = model.split(LAYER)
    game = ChannelGame(prepare(split, x), 0)
    without_one = 1 - torch.eye(game.n)
    out = {}

    def values(mixed, key):
        def run():
            out[key] = torch.cat([game._rest(mixed(chunk)) for chunk in without_one.split(game.batch_size)])
        return run

    with torch.no_grad():
        before, after = interleaved(values(lambda c: _previous_mixed(game, c), "previous"),
                                    values(game._mixed, "rows"), repeats)
    rows = [("efficientnet_lite0", f"Ablation-CAM's {game.n} coalitions of one image: previous sums / rows taken",
             before, after, (out["previous"] - out["rows"]).abs().max().item())]

    targets = torch.tensor([photo.label, 1, 2, 3])
    mosaic = x.expand(4, -1, -1, -1)

    def four(shared):
        def run():
            if shared:
                out[shared] = ablationcam(prepare(split, mosaic, targets))
            else:  # each target in a CamInput of its own: no game to share with
                out[shared] = torch.cat([ablationcam(prepare(split, x, targets[i:i + 1])) for i in range(4)])
        return run

    before, after = interleaved(four(False), four(True), repeats)
    rows.append(("efficientnet_lite0", "Ablation-CAM, one image with 4 targets: a game each / games sharing "
                 "contributions", before, after, (out[False] - out[True]).abs().max().item()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved runs")
    print("| model | work: before / after | before (s) | after (s) | before / after | max abs difference |")
    print("|---|---|---:|---:|---:|---:|")
    for name, work, before, after, difference in forward_rows(args.repeats) + ablation_rows(args.repeats):
        print(f"| {name} | {work} | {before:.4f} | {after:.4f} | {before / after:.2f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
