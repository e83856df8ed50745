"""Vision Transformers: patch tokens as activation maps, prefix tokens held fixed, DeepLIFT rules for LayerNorm,
softmax and attention (exact local accuracy), exact Shapley values on a tiny ViT, and the peers on the same maps."""

import itertools
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import head_values
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import liftcam_utils as lu
from liftcam_utils.engine.cam_input import prepare
from liftcam_utils.methods import shapley
from liftcam_utils.methods.registry import METHODS


def _torchvision_vit(hidden_dim=16, image_size=32, layers=2, seed=0):
    torch.manual_seed(seed)
    net = VisionTransformer(image_size=image_size, patch_size=8, num_layers=layers, num_heads=2,
                            hidden_dim=hidden_dim, mlp_dim=2 * hidden_dim, num_classes=5)
    nn.init.normal_(net.heads.head.weight)  # torchvision starts the classifier at zero: every logit would be 0
    return net.eval()


def _timm_vit(fused: bool, seed=0):
    torch.manual_seed(seed)
    net = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2,
                                                           num_heads=2, num_classes=5, reg_tokens=2)
    for block in net.blocks:
        block.attn.fused_attn = fused  # F.scaled_dot_product_attention, or timm's own q @ k^T, softmax, @ v
    return net.eval()


# (network, layer): block outputs, a cut inside a block (the residual stream around it held fixed), inside the MLP
_CUTS = [
    ("torchvision", "encoder.layers.encoder_layer_0"),
    ("torchvision", "encoder.layers.encoder_layer_1.ln_1"),
    ("timm_fused", "blocks.0"),
    ("timm_fused", "blocks.1.norm1"),
    ("timm", "blocks.0"),
    ("timm", "blocks.0.mlp.act"),
]


def _network(kind: str) -> nn.Module:
    return _torchvision_vit() if kind == "torchvision" else _timm_vit(fused=kind == "timm_fused")


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("kind, layer", _CUTS)
def test_the_head_of_the_token_maps_reproduces_the_network(kind, layer, images):
    net = _network(kind).double()
    split = lu.split_model(net, layer)
    maps, held = split.encode(images)
    prefix = 1 if kind == "torchvision" else 3
    assert split.tokens.prefix == prefix and split.tokens.grid == (4, 4)
    assert maps.shape[0] == 3 and maps.shape[2:] == (4, 4)
    with torch.no_grad():
        torch.testing.assert_close(split.bind(held).head(maps), net(images), rtol=0, atol=1e-12)
        # one image's head takes any batch of that image's maps
        torch.testing.assert_close(split.bind(held).for_image(2).head(maps[2:].expand(4, -1, -1, -1)),
                                   net(images[2:]).expand(4, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind, layer", _CUTS)
def test_liftcam_is_locally_accurate_on_every_transformer_cut(kind, layer, images):
    """Eq. 8 through LayerNorm, softmax attention, GELU, residual adds and the MLP: exact up to float64 rounding."""
    split = lu.split_model(_network(kind).double(), layer)
    target = torch.tensor([0, 3, 4])
    alpha = lu.coefficients("liftcam", split, images, target=target)
    full, empty, _ = head_values(split, images, target)
    assert (full - empty).abs().min() > 1e-6  # the maps move the target logit (timm starts with small weights)
    torch.testing.assert_close(alpha.sum(1).double(), full - empty, rtol=0, atol=1e-12)


def test_local_accuracy_in_float32_on_a_wider_vit():
    net = _torchvision_vit(hidden_dim=64, image_size=64, layers=3)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    split = lu.split_model(net, "encoder.layers.encoder_layer_1")
    alpha = lu.coefficients("liftcam", split, x)
    full, empty, _ = head_values(split, x)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-4, atol=1e-4)


def _hooked_logits(net: nn.Module, block: nn.Module, x: torch.Tensor, prefix: int, keep: torch.Tensor):
    """The network's logits with the patch tokens at ``block``'s output multiplied by ``keep`` (D,) per channel and
    the prefix tokens untouched: the channel game computed on the network itself, not through the split."""

    def mask(_module, _inputs, tokens):
        return torch.cat([tokens[:, :prefix], tokens[:, prefix:] * keep], 1)

    handle = block.register_forward_hook(mask)
    try:
        with torch.no_grad():
            return net(x)
    finally:
        handle.remove()


def test_prefix_tokens_are_held_fixed(images):
    """F(0) is the network with every patch token's channels set to 0 at the cut and the class token as it was; with
    another image's class token held, the same maps give other logits (the head reads the prefix)."""
    net = _torchvision_vit().double()
    split = lu.split_model(net, "encoder.layers.encoder_layer_0")
    maps, held = split.encode(images)
    bound = split.bind(held)
    with torch.no_grad():
        empty = bound.head(torch.zeros_like(maps))
        other = split.bind(tuple(h.roll(1, 0) for h in held)).head(maps)
    expected = _hooked_logits(net, net.encoder.layers[0], images, 1, torch.zeros(16, dtype=torch.float64))
    torch.testing.assert_close(empty, expected, rtol=0, atol=1e-12)
    assert (other - net(images).detach()).abs().max() > 1e-3


def _tiny_vit():
    """8 channels at the cut: all 2^8 coalitions are cheap."""
    torch.manual_seed(4)
    net = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16,
                            num_classes=4)
    nn.init.normal_(net.heads.head.weight)
    return net.eval().double()


def test_exact_shapley_values_on_a_tiny_vit_by_enumeration_on_the_network():
    """Eq. 6 by the Shapley formula over all 256 coalitions, each evaluated on the network with a hook (independent
    of the split and the game); ``exact_shap`` equals it, and LIFT-CAM is close to it without being equal."""
    net = _tiny_vit()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    split = lu.split_model(net, "encoder.layers.encoder_layer_0")
    target = torch.tensor([1, 2])
    n = 8
    value = {}
    for coalition in itertools.product((0.0, 1.0), repeat=n):
        logits = _hooked_logits(net, net.encoder.layers[0], x, 1, torch.tensor(coalition, dtype=torch.float64))
        value[coalition] = logits[torch.arange(2), target]
    expected = torch.zeros(2, n, dtype=torch.float64)
    for coalition, v in value.items():
        for k in range(n):
            if coalition[k]:
                size = int(sum(coalition)) - 1
                without = tuple(0.0 if j == k else c for j, c in enumerate(coalition))
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                expected[:, k] += weight * (v - value[without])
    exact = lu.coefficients("exact_shap", split, x, target=target)
    torch.testing.assert_close(exact.double(), expected, rtol=0, atol=1e-12)
    lift = lu.coefficients("liftcam", split, x, target=target).double()
    cosine = F.cosine_similarity(lift, expected)
    assert not torch.allclose(lift, expected, atol=1e-4)
    assert cosine.min() > 0.5, cosine


@pytest.mark.parametrize("estimator", list(shapley.ESTIMATORS))
def test_every_shapcam_estimator_is_unbiased_on_a_tiny_vit(estimator):
    """As for the CNN heads: over 200 seeds the mean estimate is within 4.5 standard errors of the exact values."""
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    inputs = prepare(lu.split_model(_tiny_vit().float(), "encoder.layers.encoder_layer_0"), x)
    exact = shapley.exact_shap(inputs).double()
    estimates = torch.stack([shapley.shapcam(inputs, 3, seed=seed, estimator=estimator)
                             for seed in range(200)]).double()
    standard_error = estimates.std(0) / 200 ** 0.5
    assert standard_error.max() > 0
    assert ((estimates.mean(0) - exact).abs() <= 4.5 * standard_error + 1e-6).all()
    torch.testing.assert_close(estimates.sum(-1), exact.sum(-1).expand(200, 1), rtol=1e-4, atol=1e-5)


_RUNS_ON_A_VIT = sorted(set(METHODS) - {"lrpcam"})


@pytest.mark.parametrize("method", _RUNS_ON_A_VIT)
def test_every_method_but_lrp_gives_a_map_on_a_vit(method):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    split = lu.split_model(_tiny_vit().float(), "encoder.layers.encoder_layer_0")
    options = {"n_permutations": 2} if method == "shapcam" else {}
    saliency = lu.saliency(method, split, x, **options)
    assert saliency.shape == (2, 16, 16) and torch.isfinite(saliency).all()


def test_lrp_cam_refuses_attention_with_a_clear_error():
    split = lu.split_model(_tiny_vit().float(), "encoder.layers.encoder_layer_0")
    with pytest.raises(lu.UnsupportedHeadOpError, match="LayerNorm|softmax|products"):
        lu.coefficients("lrpcam", split, torch.randn(1, 3, 16, 16))


def test_the_head_of_a_token_cut_needs_its_held_inputs(images):
    split = lu.split_model(_torchvision_vit().double(), "encoder.layers.encoder_layer_1.ln_1")
    maps, held = split.encode(images)
    assert len(held) == 2  # the class token and the residual stream around ln_1
    with pytest.raises(ValueError, match="bind them first"):
        split.head(maps)
    with pytest.raises(ValueError, match="holds 2 input"):
        split.bind(held[:1])
    with pytest.raises(ValueError, match="multiple of 3"):
        split.bind(held).head(maps[:2])


class _MaskedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.register_buffer("mask", torch.ones(4, 4, dtype=torch.bool).tril())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        tokens = self.features(x).flatten(2).transpose(1, 2)
        return self.fc(F.scaled_dot_product_attention(tokens, tokens, tokens, attn_mask=self.mask).mean(1))


def test_masked_attention_is_refused():
    split = lu.split_model(_MaskedAttention().eval(), "features.1")
    with pytest.raises(lu.UnsupportedHeadOpError, match="unmasked attention"):
        lu.coefficients("liftcam", split, torch.randn(1, 3, 2, 2))


def _patch_tokens_as_maps(tokens: torch.Tensor, prefix: int, side: int = 4) -> torch.Tensor:
    """pytorch-grad-cam's documented transform for ViTs: drop the prefix tokens, tokens to a (B, D, h, w) grid."""
    return tokens[:, prefix:].reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)


@pytest.mark.parametrize("kind", ["timm_fused", "torchvision"])
def test_gradcam_equals_pytorch_grad_cam_with_its_vit_transform(kind):
    """Grad-CAM at the last block's first LayerNorm (``blocks[-1].norm1``), as pytorch-grad-cam documents it for
    ViTs: the same weights and the same maps to float precision."""
    net = _network(kind)
    layer, module, prefix = (("blocks.1.norm1", net.blocks[-1].norm1, 3) if kind == "timm_fused"
                             else ("encoder.layers.encoder_layer_1.ln_1", net.encoder.layers[-1].ln_1, 1))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    target = [1, 4]
    split = lu.split_model(net, layer)
    alpha = lu.coefficients("gradcam", split, x, target=target)
    peer = GradCAM(model=net, target_layers=[module], reshape_transform=lambda t: _patch_tokens_as_maps(t, prefix))
    targets = [ClassifierOutputTarget(c) for c in target]
    peer.activations_and_grads(x)
    outputs = net(x)
    peer.model.zero_grad()
    sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward()
    activations = peer.activations_and_grads.activations[0].numpy()
    gradients = peer.activations_and_grads.gradients[0].numpy()
    weights = peer.get_cam_weights(x, module, targets, activations, gradients)
    torch.testing.assert_close(alpha, torch.from_numpy(weights), rtol=1e-5, atol=1e-7)
    ours = lu.saliency("gradcam", split, x, target=target)
    theirs = torch.from_numpy(peer(input_tensor=x, targets=targets))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_captum_deeplift_breaks_summation_to_delta_on_the_vit_head_where_liftcam_keeps_it(images):
    """Captum 0.9.0's DeepLift on the same bound head, maps and zero baseline: it has no rule for LayerNorm and
    attention (their plain gradients stand in), and its own convergence delta shows it (more than 10 % of
    F(A) - F(0) on every image); LIFT-CAM's contributions add up to float64 rounding."""
    from captum.attr import DeepLift

    inputs = prepare(lu.split_model(_torchvision_vit().double(), "encoder.layers.encoder_layer_0"), images)
    head = inputs.split.head
    with torch.no_grad():
        change = inputs.target_logits(head(inputs.maps)) - inputs.target_logits(head(torch.zeros_like(inputs.maps)))
    _, delta = DeepLift(head).attribute(inputs.maps.clone(), baselines=torch.zeros_like(inputs.maps),
                                        target=inputs.target, return_convergence_delta=True)
    ours = lu.coefficients("liftcam", inputs.split, images, target=inputs.target).double().sum(1) - change
    assert (delta.detach().abs() > 0.1 * change.abs()).all(), (delta, change)
    assert ours.abs().max() < 1e-12


def test_cascading_randomisation_runs_through_the_transformer_head():
    """Adebayo et al.'s test on a ViT: every parameterised module of the head, attention included, is re-drawn by
    its own initialisation; once the classifier is random, LIFT-CAM's maps change."""
    from liftcam_utils.evaluation import sanity

    net = _torchvision_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    rows, _ = sanity.parameter_randomisation(net, "encoder.layers.encoder_layer_0", x, ["liftcam"],
                                             modes=["cascading"])
    layers = list(dict.fromkeys(rows["layer"]))
    assert layers[:3] == ["none", "heads.head", "encoder.ln"]
    assert "encoder.layers.encoder_layer_1.self_attention" in layers
    assert rows[rows["layer"] == "heads.head"]["spearman"].max() < 0.99


def test_liftcam_on_the_trained_shapes_vit_is_locally_accurate_in_float32_with_bounded_coefficients():
    """The committed ViT in float32: the reference (empty patch tokens) puts LayerNorm's normaliser at 1/sqrt(eps)
    and can push a half's softmax sum towards 0; the rules keep every multiplier bounded, so the contributions add
    up to float32 rounding and none is far larger than F(A) - F(0) (ill-conditioned rules gave |alpha| of 1e6)."""
    model = lu.load_model("shapes_vit", device="cpu")
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    split = model.split()
    alpha = lu.coefficients("liftcam", split, x)
    full, empty, _ = head_values(split, x)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-4, atol=1e-5)
    assert alpha.abs().max() < 10 * (full - empty).abs().max()


def test_the_head_computes_the_class_token_row_alone():
    """A ViT classifier reads the class token only: the bound head's last attention takes that row as its only
    query (keys and values: every token), and its logits, LIFT-CAM and SHAP-CAM equal those of the full block."""
    from liftcam_utils.engine.split import _bind_placeholders

    model = lu.load_model("shapes_vit", device="cpu")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    split = model.split()
    maps, held = split.encode(x)
    bound = split.bind(held)
    full_head = _bind_placeholders(split.open_head, held)
    attention = [n for n in bound.head.graph.nodes if n.op == "call_module" and n.target.endswith("self_attention")]
    assert len(attention) == 1 and attention[0].args[0] is not attention[0].args[1]  # query: the class token row
    with torch.no_grad():
        torch.testing.assert_close(bound.head(maps), full_head(maps), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bound.head(maps), model.net(x), rtol=1e-5, atol=1e-5)


def test_vit_b_16_at_its_default_layer():
    """torchvision's ViT-B/16 (random weights, the classifier drawn at random): the default cut gives 768 token maps
    on the 14 x 14 patch grid, the bound head reproduces the network, and LIFT-CAM is locally accurate there."""
    torch.manual_seed(0)
    model = lu.load_model("vit_b_16", weights=None, device="cpu")
    nn.init.normal_(model.net.heads.head.weight, std=0.02)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    split = model.split()
    maps, held = split.encode(x)
    assert split.layer == "encoder.layers.encoder_layer_10" and maps.shape == (1, 768, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(split.bind(held).head(maps), model.net(x), rtol=1e-4, atol=1e-4)
    alpha = lu.coefficients("liftcam", split, x)
    full, empty, _ = head_values(split, x)
    torch.testing.assert_close(alpha.sum(1), full - empty, rtol=1e-4, atol=1e-4)


class _ReadsAColumn(nn.Module):
    """``fc(mean of the maps)[:, 0]``: an index like the class token's, of a tensor that has no token rows."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, maps):
        return self.fc(maps.mean((2, 3)))[:, 0:1] + self.fc(maps.mean((2, 3)))[:, 0][:, None]


def test_the_row_saving_keeps_the_head_where_it_would_change_it():
    from torch import fx

    from liftcam_utils.engine.tokens import compute_read_rows_only

    head = fx.symbolic_trace(_ReadsAColumn().eval())
    probe = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    kept = compute_read_rows_only(head, probe)
    torch.testing.assert_close(kept(probe), head(probe))
