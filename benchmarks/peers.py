"""Our CAM methods vs pytorch-grad-cam and Captum: seconds per image, in one run.

    .venv/bin/pip install grad-cam      # the peers (Captum is already a test dependency)
    .venv/bin/python benchmarks/peers.py [--model efficientnet_lite0|vgg16] [--skip-scorecam]

Same image, model and layer for every row; each time is the median of 3 runs after a warm-up (Score-CAM: 1).
Rows where a peer cannot run (it raises) say so. EfficientNet-Lite0's default layer is the second call of
the shared module ``_swish``; the peers hook modules, not calls, so their layer may be another call of it
(pytorch-grad-cam's ScoreCAM then runs far fewer forward passes than the 1280 of that layer): compare those rows
with care, or use ``--model vgg16``, whose layer is called once.
Score-CAM: both sides run N full forward passes (N = channels of the layer); pytorch-grad-cam batches
them 16 at a time, ours uses its default (one at a time on a CPU).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import liftcam_utils as lu


def _seconds(fn, repeats: int = 3) -> float | str:
    """Median of ``repeats`` timed runs after one warm-up run, or why it fails."""
    try:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]
    except Exception as error:  # a peer that fails on this model is a result, not a crash
        return f"fails: {type(error).__name__}"


def _text(seconds: float | str) -> str:
    return f"{seconds:.3f}" if isinstance(seconds, float) else seconds


def _peer_rows(model, split, x, target, skip_scorecam):
    from captum.attr import DeepLift, LayerGradCam
    from pytorch_grad_cam import AblationCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer_name = split.layer.partition("@")[0]
    targets = [ClassifierOutputTarget(int(target))]
    peers = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "ablationcam": AblationCAM}
    if not skip_scorecam:
        peers["scorecam"] = ScoreCAM
    rows = {}
    for ours, peer in peers.items():
        def run(peer=peer):
            # a copy per peer: pytorch-grad-cam's AblationCAM swaps the target layer and, when it fails,
            # leaves the swapped layer in the model
            net = copy.deepcopy(model.net)
            with peer(model=net, target_layers=[net.get_submodule(layer_name)]) as cam:
                cam(input_tensor=x, targets=targets)
        rows[ours] = ("pytorch-grad-cam " + peer.__name__, _seconds(run, 1 if ours == "scorecam" else 3))
    def deeplift():  # the body forward too, as in ours
        with torch.no_grad():
            maps = split.body(x)
        DeepLift(split.head).attribute(maps, baselines=torch.zeros_like(maps), target=int(target))

    rows["captum-gradcam"] = ("Captum LayerGradCam", _seconds(
        lambda: LayerGradCam(model.net, model.net.get_submodule(layer_name)).attribute(x, target=int(target))))
    rows["liftcam"] = ("Captum DeepLift on the head", _seconds(deeplift))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0", choices=("efficientnet_lite0", "vgg16"))
    parser.add_argument("--skip-scorecam", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = lu.load_model(args.model, weights="default" if args.model == "efficientnet_lite0" else None,
                          device="cpu")
    split = model.split()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model.net(x).argmax(1)[0]
    forward = _seconds(lambda: model.net(x))
    peers = _peer_rows(model, split, x, target, args.skip_scorecam)
    print(f"{args.model}, layer {split.layer}, CPU, {torch.get_num_threads()} threads; "
          f"one forward pass {forward:.3f} s")
    print("| method | ours (s) | peer | peer (s) | peer / ours |")
    print("|---|---:|---|---:|---:|")
    for method in ("gradcam", "gradcam++", "xgradcam", "ablationcam", "scorecam", "liftcam"):
        if method == "scorecam" and args.skip_scorecam:
            continue
        ours = _seconds(lambda m=method: lu.coefficients(m, split, x, target=int(target)),
                        1 if method == "scorecam" else 3)
        name, theirs = peers[method]
        ratio = f"{theirs / ours:.1f}x" if isinstance(theirs, float) and isinstance(ours, float) else "-"
        print(f"| {method} | {_text(ours)} | {name} | {_text(theirs)} | {ratio} |", flush=True)
    name, theirs = peers["captum-gradcam"]
    print(f"| gradcam | - | {name} | {_text(theirs)} | - |")


if __name__ == "__main__":
    main()
