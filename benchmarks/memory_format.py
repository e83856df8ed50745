"""Channels-last against the default (NCHW) memory order, for the two kinds of forward pass that dominate
the workbook's run time on a CPU:

* the metrics' forward passes of the whole network on perturbed images (insertion / deletion, ROAD,
  IC / AD / ADD): ``liftcam_utils.evaluation.metrics.target_probability``;
* SHAP-CAM's evaluations of the head on coalitions of channels (``ChannelGame``'s head after the
  channel-mixing op), e.g. notebook 03's references.

The metrics use channels-last on the CPU (faster there); the channel game keeps NCHW (on
EfficientNet-Lite0's 7 x 7 state after the mixing op channels-last is several times slower).

    .venv/bin/python benchmarks/memory_format.py [--repeats 7] [--batch 4]

Both orders are timed in the same run, interleaved (A, B, A, B, ...), on the same inputs; each line gives
the median seconds of each and their ratio, and the largest difference of the outputs (float rounding).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import liftcam_utils as lu
from liftcam_utils.engine.cam_input import prepare
from liftcam_utils.engine.channel_game import ChannelGame

MODELS = {"efficientnet_lite0": ("_blocks.15._swish@0", 224), "shapes_vgg": (None, 96)}


def interleaved(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a()`` and of ``b()``, timed alternately ``repeats`` times after one warm-up each."""
    a(), b()
    times = {a: [], b: []}
    for _ in range(repeats):
        for fn in (a, b):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return statistics.median(times[a]), statistics.median(times[b])


def whole_network(model, size: int, batch: int, repeats: int) -> dict:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    outputs = {}

    def run(memory_format):
        def forward():
            with torch.no_grad():
                outputs[memory_format] = model.net(x.contiguous(memory_format=memory_format))
        return forward

    nchw, channels_last = interleaved(run(torch.contiguous_format), run(torch.channels_last), repeats)
    difference = (outputs[torch.contiguous_format] - outputs[torch.channels_last]).abs().max().item()
    return {"work": f"whole network, batch {batch}", "NCHW s": nchw, "channels-last s": channels_last,
            "max |difference|": difference}


def head_on_coalitions(model, layer, size: int, repeats: int) -> dict | None:
    split = model.split(layer)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    game = ChannelGame.of(prepare(split, x), 0)
    if game._factored is None or game._base.dim() != 3:
        return None  # no (C, h, w) state after a channel-mixing op: nothing to lay out channels-last
    coalitions = (torch.rand(512, game.n, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    states = game._base.flatten() + coalitions @ game._contributions
    shape = game._base.shape
    outputs = {}

    def run(memory_format):
        def rest():
            with torch.no_grad():
                outputs[memory_format] = game._factored.target_logits(
                    states.view(-1, *shape).contiguous(memory_format=memory_format), game.target, game._readout)
        return rest

    nchw, channels_last = interleaved(run(torch.contiguous_format), run(torch.channels_last), repeats)
    difference = (outputs[torch.contiguous_format] - outputs[torch.channels_last]).abs().max().item()
    return {"work": f"head after the mixing op, {len(coalitions)} coalitions", "NCHW s": nchw,
            "channels-last s": channels_last, "max |difference|": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4, help="images per forward pass (evaluate's shard size)")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved runs")
    print("| model | work | NCHW (s) | channels-last (s) | NCHW / channels-last | max abs difference |")
    print("|---|---|---|---|---|---|")
    for name, (layer, size) in MODELS.items():
        model = lu.load_model(name)
        for row in (whole_network(model, size, args.batch, args.repeats),
                    head_on_coalitions(model, layer, size, args.repeats)):
            if row is not None:
                print(f"| {name} | {row['work']} | {row['NCHW s']:.4f} | {row['channels-last s']:.4f} | "
                      f"{row['NCHW s'] / row['channels-last s']:.2f} | {row['max |difference|']:.1e} |")


if __name__ == "__main__":
    main()
