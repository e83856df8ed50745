"""Our CAM methods vs pytorch-grad-cam and Captum: seconds per image, in one run.

    .venv/bin/pip install grad-cam      # the peers (Captum is already a test dependency)
    .venv/bin/python benchmarks/peers.py [--model efficientnet_lite0|vgg16] [--skip-scorecam] [--threads 1]
                                         [--methods gradcam scorecam ...]

Same image, model and layer for every row. Each row times, back to back, one forward pass of the
network, our method and the peer's, so that load from other jobs hits the three alike; "x forward"
divides by that row's forward pass. Each time is the median of 3 runs after a warm-up, except the
N-forward-pass methods (both Score-CAMs, the peer's Ablation-CAM, which reruns the network for
every batch of ablated maps): one run, no warm-up. Rows where a peer cannot run (it raises) say so.
Every row includes the body's forward pass.

EfficientNet-Lite0's default layer is the second call of the shared module ``_swish``; the peers
hook modules, not calls, so their layer may be another call of it (pytorch-grad-cam's ScoreCAM then
runs far fewer forward passes than the 1280 of that layer): compare those rows with care, or use
``--model vgg16``, whose layer is called once. Score-CAM: both sides run N full forward passes
(N = channels of the layer); pytorch-grad-cam batches them 16 at a time, ours uses its default (one
at a time on a CPU).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import liftcam_utils as lu

METHODS = ("gradcam", "gradcam++", "xgradcam", "ablationcam", "scorecam", "liftcam")
ONE_RUN = {"scorecam"}  # N forward passes on both sides
PEER_ONE_RUN = {"scorecam", "ablationcam"}


def _seconds(fn, repeats: int) -> float | str:
    """Median of ``repeats`` timed runs after one warm-up run (no warm-up for a single run), or why
    it fails."""
    try:
        if repeats > 1:
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


def _ratio(numerator: float | str, denominator: float | str) -> str:
    both = isinstance(numerator, float) and isinstance(denominator, float)
    return f"{numerator / denominator:.1f}x" if both else "-"


def _peers(model, split, x, target):
    """``{method: (peer name, callable)}`` for pytorch-grad-cam's CAMs and Captum's DeepLift and LayerGradCam."""
    from captum.attr import DeepLift, LayerGradCam
    from pytorch_grad_cam import AblationCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer_name = split.layer.partition("@")[0]
    targets = [ClassifierOutputTarget(int(target))]
    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "ablationcam": AblationCAM,
               "scorecam": ScoreCAM}
    peers = {}
    for ours, peer in classes.items():
        def run(peer=peer):
            # a copy per peer: pytorch-grad-cam's AblationCAM swaps the target layer and, when it fails,
            # leaves the swapped layer in the model
            net = copy.deepcopy(model.net)
            with peer(model=net, target_layers=[net.get_submodule(layer_name)]) as cam:
                cam(input_tensor=x, targets=targets)
        peers[ours] = ("pytorch-grad-cam " + peer.__name__, run)

    def deeplift():  # the body forward too, as in ours
        with torch.no_grad():
            maps = split.body(x)
        DeepLift(split.head).attribute(maps, baselines=torch.zeros_like(maps), target=int(target))

    peers["liftcam"] = ("Captum DeepLift on the head", deeplift)
    peers["captum-gradcam"] = ("Captum LayerGradCam", lambda: LayerGradCam(
        model.net, model.net.get_submodule(layer_name)).attribute(x, target=int(target)))
    return peers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0", choices=("efficientnet_lite0", "vgg16"))
    parser.add_argument("--skip-scorecam", action="store_true")
    parser.add_argument("--methods", nargs="*", default=list(METHODS) + ["captum-gradcam"], help="rows to run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 keeps timings stable on a shared machine")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = lu.load_model(args.model, weights="default" if args.model == "efficientnet_lite0" else None,
                          device="cpu")
    split = model.split()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model.net(x).argmax(1)[0]
        n_maps = split.body(x).shape[1]
    peers = _peers(model, split, x, target)

    def forward():
        with torch.no_grad():
            model.net(x)

    print(f"{args.model}, layer {split.layer} ({n_maps} maps), CPU, "
          f"{torch.get_num_threads()} threads")
    print("| method | forward (s) | ours (s) | ours x forward | peer | peer (s) | peer x forward | peer / ours |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    methods = [m for m in args.methods if not (m == "scorecam" and args.skip_scorecam)]
    for method in methods:
        forward_seconds = _seconds(forward, 3)
        ours = "-"
        if method in METHODS:
            ours = _seconds(lambda m=method: lu.coefficients(m, split, x, target=int(target)),
                            1 if method in ONE_RUN else 3)
        name, peer = peers[method]
        theirs = _seconds(peer, 1 if method in PEER_ONE_RUN else 3)
        row = "gradcam" if method == "captum-gradcam" else method
        print(f"| {row} | {forward_seconds:.3f} | {_text(ours)} | {_ratio(ours, forward_seconds)} | {name} "
              f"| {_text(theirs)} | {_ratio(theirs, forward_seconds)} | {_ratio(theirs, ours)} |", flush=True)


if __name__ == "__main__":
    main()
