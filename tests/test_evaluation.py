"""The batch runner: tidy rows, summaries, on-disk cache with resume, and Dask scale-out."""

import copy
import dataclasses
import functools
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

import liftcam_utils as lu
from liftcam_utils.datasets import Box, ImageRecord
from liftcam_utils.datasets.embedded import foolbox_imagenet
from liftcam_utils.datasets.synthetic_scenes import make_scenes
from liftcam_utils.datasets.synthetic_vqa import make_vqa
from liftcam_utils.evaluation import batch as E
from liftcam_utils.evaluation import cache as C
from liftcam_utils.evaluation import metrics as M
from liftcam_utils.files import write_atomically


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def make_tiny_model(network=_Tiny, *arguments):
    """A model of ``network(*arguments)`` with seeded weights, for 16 x 16 images of 3 classes."""
    torch.manual_seed(0)
    preprocess = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16), transforms.ToTensor(),
                                     transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    return lu.LoadedModel(name="tiny", net=network(*arguments).eval(), layer="features.1", preprocess=preprocess,
                          categories=["a", "b", "c"], weights=None)


def make_records():
    """Five seeded 16 x 16 noise images, each with a box of its label on its left half."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(5):
        pixels = (torch.rand(16, 16, 3, generator=generator) * 255).to(torch.uint8).numpy()
        out.append(ImageRecord(name=f"img{i}", labels=(i % 3,), boxes=(Box(i % 3, 0, 0, 8, 16),),
                               pixels=Image.fromarray(pixels)))
    return out


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def records():
    return make_records()


ALL = ("faithfulness", "insertion_deletion", "pointing", "cosine")


def test_rows_and_summary(tiny_model, records):
    result = E.evaluate(tiny_model, records, ["gradcam", "liftcam"], metrics=ALL, reference=("exact_shap", {}),
                        shard_size=2, progress=False)
    rows = result.rows
    assert len(rows) == 10 and list(rows["method"][:2]) == ["gradcam", "gradcam"]
    assert set(rows["image"]) == {f"img{i}" for i in range(5)}
    assert rows["target"].tolist()[:5] == [0, 1, 2, 0, 1]
    for column in ("IC", "AD", "ADD", "insertion_auc", "deletion_auc", "pointing", "cosine", "seconds"):
        assert rows[column].notna().all(), column
    # each row keeps its two curves at the 41 deltas; its AUCs are their trapezoid areas
    curve = rows.loc[0, "insertion_curve"]
    assert len(curve) == 41 and rows.loc[0, "insertion_auc"] == pytest.approx(np.trapezoid(curve, M.DELTAS.numpy()))
    # LIFT-CAM is exactly the Shapley value on this affine head
    assert rows.loc[rows["method"] == "liftcam", "cosine"].min() == pytest.approx(1.0, abs=1e-6)
    expected = rows.groupby("method")["AD"].mean()
    assert result.summary.loc["liftcam", "AD"] == pytest.approx(expected["liftcam"])
    assert list(result.summary.index) == ["gradcam", "liftcam"]
    table = E.paper_table({"set A": rows, "set B": rows}, "AD")
    assert list(table.columns) == ["set A", "set B"] and table.shape == (2, 2)


def test_cosine_is_undefined_for_per_pixel_methods(tiny_model, records):
    """HiResCAM has no alpha to compare with the reference's: its cosine is NaN, its other metrics are there."""
    rows = E.evaluate(tiny_model, records, ["hirescam", "eigencam"], metrics=("faithfulness", "cosine"),
                      reference=("exact_shap", {}), progress=False).rows
    cosine = rows.set_index("method")["cosine"]
    assert cosine["hirescam"].isna().all() and cosine["eigencam"].notna().all()
    assert rows["AD"].notna().all()


def test_road_is_a_metric_of_evaluate(tiny_model, records):
    """``metrics=("road",)``: each row's MoRF / LeRF curves at the 9 fractions are those of
    ``metrics.road_curves`` on the method's map with the authors' noise (0.01 on raw pixels, here
    0.02 after Normalize(0.5, 0.5)); the scores are the curves' means, and the summary averages them."""
    result = E.evaluate(tiny_model, records[:3], ["liftcam"], metrics=("road",), progress=False)
    rows = result.rows
    assert list(rows.columns) == [*E.ROW_COLUMNS, "road_morf", "road_lerf", "road_morf_curve", "road_lerf_curve"]
    x = torch.stack([tiny_model.preprocess(r.image()) for r in records[:3]])
    target = torch.tensor([r.label for r in records[:3]])
    saliency = lu.saliency("liftcam", tiny_model.split(), x, target)
    expected = M.road_curves(tiny_model.net, x, saliency, target, noise=torch.full((3, 1, 1), 0.02))
    for order in ("morf", "lerf"):
        curves = torch.tensor(rows[f"road_{order}_curve"].tolist())
        assert curves.shape == (3, 9)
        torch.testing.assert_close(curves, expected[order], atol=1e-5, rtol=1e-4)
        assert rows[f"road_{order}"].tolist() == pytest.approx(curves.mean(1).tolist())
        assert result.summary.loc["liftcam", f"road_{order}"] == pytest.approx(rows[f"road_{order}"].mean())
    # without noise the curves differ: the row used the authors' noise
    quiet = M.road_curves(tiny_model.net, x, saliency, target, noise=0.0)
    assert not torch.allclose(torch.tensor(rows["road_morf_curve"].tolist()), quiet["morf"], atol=1e-7, rtol=0)


def test_pointing_without_a_box_of_the_target_is_undefined(tiny_model, records):
    # img1's only box is of another class; img3 has none: their game is undefined, not a score of 0
    changed = list(records)
    changed[1] = ImageRecord(name="img1", labels=(1,), boxes=(Box(2, 0, 0, 8, 16),), pixels=records[1].pixels)
    changed[3] = ImageRecord(name="img3", labels=(0,), pixels=records[3].pixels)
    result = E.evaluate(tiny_model, changed, ["liftcam"], metrics=("pointing",), progress=False)
    pointing = result.rows.set_index("image")["pointing"]
    assert pointing[["img1", "img3"]].isna().all() and pointing.drop(["img1", "img3"]).notna().all()
    assert result.summary.loc["liftcam", "pointing"] == pytest.approx(pointing.dropna().mean())


def _target_probabilities(model, records, output):
    """Each record's target probability under ``output``, computed directly from the network's logits."""
    x = torch.stack([model.preprocess(r.image()) for r in records])
    with torch.no_grad():
        logits = model.net(x)
    probabilities = logits.sigmoid() if output == "sigmoid" else logits.softmax(1)
    return probabilities[torch.arange(len(records)), torch.tensor([r.label for r in records])]


def test_evaluate_scores_a_multi_label_model_by_the_sigmoid_of_the_targets_logit(shapes):
    """shapes_vgg is trained with binary cross-entropy: Y is the sigmoid of the target's logit, and the
    insertion curve with every pixel kept is Y again; read as single-label it would be the softmax."""
    scenes = make_scenes(3, seed=5).records
    assert shapes.output == "sigmoid"
    rows = E.evaluate(shapes, scenes, ["gradcam"], metrics=("faithfulness", "insertion_deletion"),
                      progress=False).rows
    sigmoid = _target_probabilities(shapes, scenes, "sigmoid").numpy()
    np.testing.assert_allclose(rows["Y"], sigmoid, rtol=1e-5)
    np.testing.assert_allclose([curve[-1] for curve in rows["insertion_curve"]], sigmoid, rtol=1e-5)
    softmax = _target_probabilities(shapes, scenes, "softmax").numpy()
    as_single_label = E.evaluate(dataclasses.replace(shapes, output="softmax"), scenes, ["gradcam"],
                                 progress=False).rows
    np.testing.assert_allclose(as_single_label["Y"], softmax, rtol=1e-5)
    assert not np.allclose(sigmoid, softmax, rtol=1e-2)


def test_a_model_names_a_valid_output_function(tiny_model, records):
    """Softmax unless said otherwise; anything but softmax or sigmoid is refused, naming the model and the valid
    values, when the model is made and, set afterwards, when it is evaluated."""
    assert tiny_model.output == "softmax" and dataclasses.replace(tiny_model, output="sigmoid").output == "sigmoid"
    with pytest.raises(ValueError, match=r"model 'tiny': output must be one of \('softmax', 'sigmoid'\) "
                                         r"\('softmax': a single-label classifier.*got 'logits'"):
        dataclasses.replace(tiny_model, output="logits")
    tiny_model.output = "probit"
    with pytest.raises(ValueError, match=r"model 'tiny': output must be one of \('softmax', 'sigmoid'\).*'probit'"):
        E.evaluate(tiny_model, records, ["gradcam"], progress=False)


def test_a_dask_worker_scores_with_the_output_function_it_receives(tiny_model, records):
    """What a Dask worker receives is the pickled model: its output function travels with it."""
    sigmoid = dataclasses.replace(tiny_model, output="sigmoid")
    received = pickle.loads(pickle.dumps(sigmoid))
    assert received.output == "sigmoid"
    specs = E.method_specs(["gradcam"])
    remote = E._remote_shard(received, "cpu", "features.1", records[:2], specs, ("faithfulness",), "mean", None)
    local = E._shard_rows(sigmoid, "features.1", records[:2], specs, ("faithfulness",), "mean", None)
    pd.testing.assert_frame_equal(remote[specs[0]].drop(columns="seconds"), local[specs[0]].drop(columns="seconds"))
    np.testing.assert_allclose(remote[specs[0]]["Y"], _target_probabilities(sigmoid, records[:2], "sigmoid"),
                               rtol=1e-5)


def test_rows_do_not_depend_on_shard_size(tiny_model, records):
    one = E.evaluate(tiny_model, records, ["liftcam", "scorecam"], shard_size=1, progress=False).rows
    many = E.evaluate(tiny_model, records, ["liftcam", "scorecam"], shard_size=5, progress=False).rows
    columns = ["Y", "O", "D", "IC", "AD", "ADD"]
    for method in ("liftcam", "scorecam"):
        a = one[one["method"] == method][columns].reset_index(drop=True)
        b = many[many["method"] == method][columns].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=1e-4)


def test_cache_is_read_and_an_interrupted_run_resumes(tiny_model, records, tmp_path, monkeypatch):
    calls = []
    real = E._shard_rows

    def counting(model, layer, shard, specs, *rest):
        calls.append(([r.name for r in shard], [s.label for s in specs]))
        if len(calls) == 2 and crash:
            raise RuntimeError("power cut")
        return real(model, layer, shard, specs, *rest)

    monkeypatch.setattr(E, "_shard_rows", counting)
    crash = True
    with pytest.raises(RuntimeError, match="power cut"):
        E.evaluate(tiny_model, records, ["gradcam"], shard_size=2, cache_dir=tmp_path, progress=False)
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]
    crash, calls[:] = False, []
    first = E.evaluate(tiny_model, records, ["gradcam"], shard_size=2, cache_dir=tmp_path, progress=False)
    assert [names for names, _ in calls] == [["img2", "img3"], ["img4"]]  # resumed after shard 1
    calls.clear()
    again = E.evaluate(tiny_model, records, ["gradcam", "liftcam"], shard_size=2, cache_dir=tmp_path,
                       progress=False)
    assert all(specs == ["liftcam"] for _, specs in calls)  # gradcam read from the cache
    pd.testing.assert_frame_equal(again.rows[again.rows["method"] == "gradcam"].reset_index(drop=True), first.rows)
    calls.clear()
    E.evaluate(tiny_model, records, ["gradcam"], shard_size=2, cache_dir=tmp_path, absent="black", progress=False)
    assert len(calls) == 3  # another baseline is another key


@pytest.fixture
def computed(monkeypatch):
    """The (image names, method labels) of every shard ``evaluate`` computes rather than reads."""
    calls = []
    real = E._shard_rows

    def counting(model, layer, shard, specs, *rest):
        calls.append(([r.name for r in shard], [s.label for s in specs]))
        return real(model, layer, shard, specs, *rest)

    monkeypatch.setattr(E, "_shard_rows", counting)
    return calls


def _cached_run(model, records, methods, cache_dir):
    return E.evaluate(model, records, methods, metrics=("faithfulness", "pointing"), shard_size=1,
                      cache_dir=cache_dir, progress=False).rows


def test_json_round_trip_is_exact():
    frame = pd.DataFrame({"image": ["a", "b", "c"], "target": [0, 7, 2], "method": "SHAP-CAM_10",
                          "seconds": 0.1 + 0.2, "AD": [1 / 3, np.nan, 1e-300], "IC": [np.inf, -0.0, 2 / 7],
                          "insertion_curve": [[0.1, 1 / 3], [2 / 7, 0.5], [1e-300, 1.0]]})
    pd.testing.assert_frame_equal(C.frame_from_json(C.frame_to_json(frame)), frame, check_exact=True)


def test_rerun_reads_the_cache_exactly(tiny_model, records, tmp_path, computed):
    first = _cached_run(tiny_model, records[:3], ["gradcam", "liftcam"], tmp_path)
    assert len(computed) == 3
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json"] * 6  # one per (shard, method); no pickle
    computed.clear()
    again = _cached_run(tiny_model, records[:3], ["gradcam", "liftcam"], tmp_path)
    assert computed == []
    pd.testing.assert_frame_equal(again, first, check_exact=True)


def test_changed_records_are_recomputed(tiny_model, records, tmp_path, computed):
    _cached_run(tiny_model, records[:3], ["gradcam"], tmp_path)
    pixels = np.array(records[0].image())
    pixels[5, 7, 1] ^= 1
    changed = [dataclasses.replace(records[0], pixels=Image.fromarray(pixels)),  # same name, one pixel
               dataclasses.replace(records[1], labels=(2,)),
               dataclasses.replace(records[2], boxes=(Box(2, 0, 0, 4, 4),))]
    for i, record in enumerate(changed):
        computed.clear()
        rows = _cached_run(tiny_model, [*changed[:i + 1], *records[i + 1:3]], ["gradcam"], tmp_path)
        assert computed == [([record.name], ["gradcam"])]
    assert rows["target"].tolist() == [0, 2, 2]
    fresh = _cached_run(tiny_model, changed, ["gradcam"], None)
    pd.testing.assert_frame_equal(rows.drop(columns="seconds"), fresh.drop(columns="seconds"))


def test_weights_changed_in_place_are_recomputed(tiny_model, records, tmp_path, computed):
    before = _cached_run(tiny_model, records[:2], ["liftcam"], tmp_path)
    copied = dataclasses.replace(tiny_model, net=copy.deepcopy(tiny_model.net))
    assert C.weights_digest(copied.net) == C.weights_digest(tiny_model.net)  # the contents count, not the object
    computed.clear()
    with torch.no_grad():
        tiny_model.net.fc.bias[0] += 1.0  # same name and weights argument, other weights
    after = _cached_run(tiny_model, records[:2], ["liftcam"], tmp_path)
    assert len(computed) == 2 and not after["Y"].equals(before["Y"])
    computed.clear()
    tiny_model.net.load_state_dict(copied.net.state_dict())
    pd.testing.assert_frame_equal(_cached_run(tiny_model, records[:2], ["liftcam"], tmp_path), before)
    assert computed == []  # the original weights again: their entries are read


def test_vqa_key_follows_the_question_encoder_and_the_question(tmp_path, computed):
    torch.manual_seed(0)
    model = lu.load_model("shapes_vqa", weights=None, device="cpu")
    scene = make_vqa(1, seed=5).records
    record = scene[0]

    def run(record):
        return E.evaluate(model, [record], ["gradcam"], cache_dir=tmp_path, progress=False).rows

    first = run(record)
    with torch.no_grad():
        model.net.qst_encoder.fc.bias[0] += 1.0  # folded into the fixed model's buffers, not its modules
    second = run(record)
    assert len(computed) == 2 and not second["Y"].equals(first["Y"])
    run(dataclasses.replace(record, question=scene[1].question))
    assert len(computed) == 3


def test_each_label_of_a_method_has_its_own_entry(tiny_model, records, tmp_path, computed):
    methods = {"Grad-CAM": ("gradcam", {}), "Grad-CAM again": ("gradcam", {})}
    rows = _cached_run(tiny_model, records[:2], methods, tmp_path)
    assert len(list(tmp_path.iterdir())) == 4 and computed == [(["img0"], list(methods)), (["img1"], list(methods))]
    computed.clear()
    again = _cached_run(tiny_model, records[:2], methods, tmp_path)
    assert computed == [] and again["method"].tolist() == ["Grad-CAM"] * 2 + ["Grad-CAM again"] * 2
    pd.testing.assert_frame_equal(again, rows, check_exact=True)


def _relu_to_softplus(model):
    model.net.features[1] = nn.Softplus()


def _average_to_max_pool(model):
    model.net.pool = nn.AdaptiveMaxPool2d(1)


def _wider_padding(model):
    model.net.features[0].padding = (2, 2)


def _dilation(model):
    model.net.features[0].dilation = (2, 2)


def _other_preprocess(model):
    model.preprocess = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16), transforms.ToTensor(),
                                           transforms.Normalize((0.4, 0.5, 0.5), (0.5, 0.5, 0.5))])


def _assign_data(model):
    model.net.fc.bias.data = model.net.fc.bias.data + 1.0


def _copy_into_data(model):
    model.net.fc.weight.data.copy_(model.net.fc.weight.data * 2.0)


def _write_through_numpy(model):
    model.net.fc.bias.detach().numpy()[0] += 1.0


def _half_then_float(model):
    model.net.half().float()


def _sigmoid_output(model):
    model.output = "sigmoid"  # the same network, read as multi-label: other confidences


@pytest.mark.parametrize("change", [_relu_to_softplus, _average_to_max_pool, _wider_padding, _dilation,
                                    _other_preprocess, _assign_data, _copy_into_data, _write_through_numpy,
                                    _half_then_float, _sigmoid_output], ids=lambda change: change.__name__.strip("_"))
def test_a_changed_model_is_recomputed(tiny_model, records, tmp_path, computed, change):
    """Every change to what the model computes, including weight writes that PyTorch does not count, is a new key."""
    _cached_run(tiny_model, records[:1], ["gradcam"], tmp_path)
    change(tiny_model)
    computed.clear()
    _cached_run(tiny_model, records[:1], ["gradcam"], tmp_path)
    assert computed == [(["img0"], ["gradcam"])] and len(list(tmp_path.iterdir())) == 2


def test_the_output_function_is_part_of_the_cache_key(tiny_model):
    """Same network, same weights, softmax or sigmoid: other Y, O, D, so another key."""
    sigmoid = dataclasses.replace(tiny_model, output="sigmoid")
    assert sigmoid.net is tiny_model.net
    softmax_print, sigmoid_print = C.model_fingerprint(tiny_model, "features.1"), C.model_fingerprint(sigmoid,
                                                                                                     "features.1")
    assert {k for k in softmax_print if softmax_print[k] != sigmoid_print[k]} == {"output"}
    assert C.cache_key({"model": softmax_print}) != C.cache_key({"model": sigmoid_print})


def test_a_preprocessing_known_only_by_its_address_is_keyed_with_a_warning(tiny_model):
    """A lambda prints its memory address, which another process does not share: the key cannot be found again
    there (never a wrong hit), and the user is told why; torchvision's transforms describe themselves, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C.model_fingerprint(tiny_model, "features.1")
    wrapped = dataclasses.replace(tiny_model, preprocess=transforms.Compose(
        [transforms.Lambda(lambda image: image), *tiny_model.preprocess.transforms]))
    with pytest.warns(UserWarning, match="described by a memory address.*never found by another"):
        C.model_fingerprint(wrapped, "features.1")


@pytest.fixture
def global_forward_hook():
    handle = nn.modules.module.register_module_forward_hook(lambda module, inputs, output: output)
    yield
    handle.remove()


@pytest.mark.parametrize("hook", [
    lambda model: model.net.fc.register_forward_hook(lambda module, inputs, output: output * 2),
    lambda model: model.net.features[0].register_forward_pre_hook(lambda module, inputs: (inputs[0] * 2,)),
    lambda model: model.net.register_full_backward_hook(lambda module, grad_in, grad_out: None),
], ids=["forward", "forward-pre", "backward"])
def test_a_network_with_hooks_is_refused_by_the_cache(tiny_model, records, tmp_path, hook):
    hook(tiny_model)
    with pytest.raises(ValueError, match="has hooks registered .*remove the hooks .* or evaluate without cache_dir"):
        _cached_run(tiny_model, records[:1], ["gradcam"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_global_module_hook_is_refused_by_the_cache(tiny_model, records, tmp_path, global_forward_hook):
    with pytest.raises(ValueError, match="global module hooks are registered"):
        _cached_run(tiny_model, records[:1], ["gradcam"], tmp_path)


@pytest.mark.parametrize("value", [torch.tensor(0.25), np.array(0.25), (0.25,), Box(0, 0, 0, 1, 1), [np.int64(1)]],
                         ids=["tensor", "array", "tuple", "object", "numpy-int-in-list"])
def test_method_options_must_be_json_values(tiny_model, records, value):
    """``tensor(0.2500)`` prints alike for many values: no option whose text in a key is not exact."""
    with pytest.raises(TypeError, match=r"option 'epsilon' of 'LRP'.* must be JSON values: str, int, finite float, "
                                        r"bool, None, and lists and dicts"):
        E.evaluate(tiny_model, records, {"LRP": ("lrpcam", {"epsilon": value})}, progress=False)


def _drop_a_column(text):
    stored = json.loads(text)
    stored["columns"] = [c for c in stored["columns"] if c["name"] != "AD"]
    return json.dumps(stored)


def _edit_column(name, **entries):
    """A damage: the stored column ``name`` with new ``entries`` (a callable gets the old entry)."""
    def damage(text):
        stored = json.loads(text)
        [column] = [c for c in stored["columns"] if c["name"] == name]
        for key, value in entries.items():
            column[key] = value(column[key]) if callable(value) else value
        return json.dumps(stored)
    return damage


SCORES, CURVES = ("faithfulness", "pointing"), ("insertion_deletion",)
DAMAGES = {  # name: (damage, metrics of the run)
    "truncated": (lambda text: text[:len(text) // 2], SCORES),
    "not-json": (lambda text: "not json at all", SCORES),
    "wrong-columns": (_drop_a_column, SCORES),
    "nan": (_edit_column("Y", values=lambda values: [np.nan, *values[1:]]), SCORES),
    "inf": (_edit_column("AD", values=lambda values: [values[0], np.inf]), SCORES),
    "scalar-for-every-row": (_edit_column("Y", values=0.5), SCORES),
    "wrong-target": (_edit_column("target", values=[0, 2]), SCORES),
    "short-curve": (_edit_column("insertion_curve", values=lambda curves: [curves[0][:40], curves[1]]), CURVES),
    "nested-curve": (_edit_column("deletion_curve", values=lambda curves: [[curves[0]], curves[1]]), CURVES),
    "dtype-object": (_edit_column("Y", dtype="object"), SCORES),
    "dtype-category": (_edit_column("AD", dtype="category"), SCORES),
    "deep-nesting": (lambda text: "[" * 100_000 + "]" * 100_000, SCORES),
}


def _one_shard_run(model, records, cache_dir, metrics=SCORES):
    return E.evaluate(model, records[:2], ["liftcam"], metrics=metrics, shard_size=2, cache_dir=cache_dir,
                      progress=False).rows


@pytest.mark.parametrize(("damage", "metrics"), DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_file_is_recomputed_with_a_warning(tiny_model, records, tmp_path, computed, damage, metrics):
    run = functools.partial(_one_shard_run, tiny_model, records, tmp_path, metrics)
    good = run()
    [file] = tmp_path.iterdir()
    file.write_text(damage(file.read_text()))
    computed.clear()
    with pytest.warns(UserWarning, match=f"cache file .*{file.name} is damaged"):
        redone = run()
    assert len(computed) == 1
    pd.testing.assert_frame_equal(redone.drop(columns="seconds"), good.drop(columns="seconds"))
    computed.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reread = run()
    assert computed == [] and list(tmp_path.iterdir()) == [file]  # overwritten with a good file
    pd.testing.assert_frame_equal(reread, redone, check_exact=True)


def test_a_folder_at_a_cache_path_is_left_alone_and_its_rows_recomputed(tiny_model, records, tmp_path, computed):
    good = _one_shard_run(tiny_model, records, tmp_path)
    [file] = tmp_path.iterdir()
    file.unlink()
    file.mkdir()
    computed.clear()
    with pytest.warns(UserWarning, match=f"cache path .*{file.name} is not a file") as caught:
        redone = _one_shard_run(tiny_model, records, tmp_path)
    assert any("rows not stored" in str(w.message) for w in caught)
    assert len(computed) == 1 and list(tmp_path.iterdir()) == [file] and list(file.iterdir()) == []
    pd.testing.assert_frame_equal(redone.drop(columns="seconds"), good.drop(columns="seconds"))


def test_undefined_metrics_are_read_back_from_the_cache(tiny_model, records, tmp_path, computed):
    """NaN means "undefined" for the pointing game (no box of the target) and the cosine (per-pixel weights)."""
    def run():
        return E.evaluate(tiny_model, [dataclasses.replace(records[0], boxes=())], ["hirescam"],
                          metrics=("pointing", "cosine"), reference=("exact_shap", {}), cache_dir=tmp_path,
                          progress=False).rows

    first = run()
    assert first[["pointing", "cosine"]].isna().all().all()
    computed.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = run()
    assert computed == []
    pd.testing.assert_frame_equal(again, first, check_exact=True)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.pkl"
    target.write_text("the complete old result")

    def crash(temporary):
        Path(temporary).write_text("half a result")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, crash)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pkl"] and target.read_text() == "the complete old result"
    write_atomically(target, functools.partial(C.write_frame, pd.DataFrame({"a": [1]})))
    assert C.frame_from_json(target.read_text())["a"].tolist() == [1] and oct(target.stat().st_mode)[-3:] == "644"


def test_box_mask_follows_resize_and_crop():
    """A 40 x 20 image, Resize(10) -> 20 x 10, CenterCrop(10) keeps columns 5..14 of the resized image."""
    record = ImageRecord(name="r", labels=(1,), boxes=(Box(1, 0, 0, 20, 20), Box(2, 20, 0, 40, 20)),
                         pixels=Image.new("RGB", (40, 20)))
    preprocess = transforms.Compose([transforms.Resize(10), transforms.CenterCrop(10), transforms.ToTensor()])
    mask = E.box_mask_after_preprocess(record, preprocess, 1, (10, 10))
    # label 1's box covers the left half: resized columns 0..9, i.e. cropped columns 0..4
    assert mask[:, :5].min() == 1 and mask[:, 5:].max() == 0


def test_bad_arguments_name_what_is_valid(tiny_model, records):
    with pytest.raises(ValueError, match="unknown metrics.*valid metrics: faithfulness"):
        E.evaluate(tiny_model, records, ["gradcam"], metrics=["speed"])
    with pytest.raises(ValueError, match="needs a reference method"):
        E.evaluate(tiny_model, records, ["gradcam"], metrics=["cosine"])
    with pytest.raises(ValueError, match="unknown method 'gradcamm'"):
        E.evaluate(tiny_model, records, ["gradcamm"])
    with pytest.raises(ValueError, match=r"n_images must be in 1 \.\. 5"):
        E.evaluate(tiny_model, records, ["gradcam"], n_images=6)


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ({"dataset": []}, ValueError, r"the dataset is empty; evaluate needs at least one ImageRecord"),
    ({"methods": []}, ValueError, r"no methods given; name at least one of: gradcam, "),
    ({"methods": {}}, ValueError, r"no methods given; name at least one of: gradcam, "),
    ({"methods": "gradcam"}, TypeError, r"methods must be a list of method names such as \['gradcam'\] or a dict"),
    ({"methods": {"G": "gradcam"}}, TypeError, r"'G' must be a \(method name, options dict\) pair"),
    ({"shard_size": 0}, ValueError, r"shard_size must be a positive int \(images per shard\), got 0"),
    ({"shard_size": -1}, ValueError, r"shard_size must be a positive int \(images per shard\), got -1"),
    ({"shard_size": 2.0}, TypeError, r"shard_size must be a positive int \(images per shard\), got 2.0"),
    ({"metrics": "faithfulness"}, TypeError,
     r"metrics must be a list of metric names such as \['faithfulness'\], not the str 'faithfulness'"),
    ({"n_images": True}, TypeError,
     r"n_images must be an int in 1 \.\. 5 \(the dataset's size\) or None \(every record\), got True"),
    ({"n_images": 0}, ValueError, r"n_images must be in 1 \.\. 5"),
], ids=["empty-dataset", "no-methods", "no-methods-dict", "methods-str", "method-not-a-pair", "shard-size-0",
        "shard-size-negative", "shard-size-float", "metrics-str", "n-images-bool", "n-images-0"])
def test_edge_arguments_name_what_is_valid(tiny_model, records, arguments, error, message):
    arguments = {"dataset": records, "methods": ["gradcam"], **arguments}
    with pytest.raises(error, match=message):
        E.evaluate(tiny_model, arguments.pop("dataset"), arguments.pop("methods"), progress=False, **arguments)


def test_seeded_selection():
    items = list(range(20))
    assert E.select(items, 5, seed=3) == E.select(items, 5, seed=3)
    assert E.select(items, 5, seed=3) != E.select(items, 5, seed=4)
    assert E.select(items, None, seed=0) == items


def test_dask_local_cluster_gives_the_in_process_numbers(lite0):
    photos = foolbox_imagenet()[:3]
    local = E.evaluate(lite0, photos, ["gradcam", "liftcam"], shard_size=2, progress=False).rows
    remote = E.evaluate(lite0, photos, ["gradcam", "liftcam"], shard_size=2, dask_scheduler="local",
                        device="cpu", progress=False).rows
    columns = ["image", "method", "target", "Y", "O", "D", "IC"]
    pd.testing.assert_frame_equal(local[columns], remote[columns], atol=1e-5, rtol=1e-4)
    # percentages divide by Y: float noise of another process's thread count, amplified, stays < 1e-3 points
    pd.testing.assert_frame_equal(local[["AD", "ADD"]], remote[["AD", "ADD"]], atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def two_workers():
    """The address of a Dask cluster of two worker processes on this machine: each has its own memory,
    so a worker sees this process's model only through what ``evaluate`` sends it."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def test_dask_workers_compute_with_the_weights_of_this_process(two_workers):
    """Weights edited after loading: the workers must not reload them from the file, nor keep those of an
    earlier run."""
    model = lu.load_model("shapes_vgg", device="cpu")
    scenes = make_scenes(2, seed=3).records
    for edit in range(2):
        with torch.no_grad():
            model.net.features[0].weight.mul_(0.5)
            model.net.classifier[-1].bias.add_(2.0)
        local = E.evaluate(model, scenes, ["liftcam"], shard_size=1, progress=False).rows
        remote = E.evaluate(model, scenes, ["liftcam"], shard_size=1, dask_scheduler=two_workers, progress=False).rows
        pd.testing.assert_frame_equal(remote.drop(columns="seconds"), local.drop(columns="seconds"),
                                      check_exact=True, obj=f"rows after edit {edit}")
        # the workers score with the model's output function too: shapes_vgg's sigmoid
        np.testing.assert_allclose(remote["Y"], _target_probabilities(model, scenes, "sigmoid"), rtol=1e-5)


# run in a child process: evaluate the tiny model on the records with a cache, each shard slowed down so that the
# parent can kill the child in the middle of one
INTERRUPTED_RUN = """
import sys
import time

sys.path[:0] = [{root!r}, {tests!r}]
import test_evaluation as T
from liftcam_utils.evaluation import batch as E

compute = E._shard_rows


def slowly(*arguments):
    time.sleep(0.4)
    return compute(*arguments)


E._shard_rows = slowly
E.evaluate(T.make_tiny_model(), T.make_records(), ["gradcam", "liftcam"], shard_size=1, cache_dir={cache!r},
           progress=False)
"""


def _cache_files(folder):
    return {p.name for p in folder.glob("*.json") if not p.name.startswith(".")}  # not a half-written temporary


def test_a_killed_run_resumes_to_the_rows_of_an_uninterrupted_run(records, tmp_path, computed):
    tests = Path(__file__).parent
    code = INTERRUPTED_RUN.format(root=str(tests.parent), tests=str(tests), cache=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _cache_files(tmp_path):
        assert child.poll() is None, f"the run ended before its first shard was cached: {child.stderr.read()}"
        assert time.monotonic() < deadline, "no shard cached within 120 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    finished = _cache_files(tmp_path)
    assert 0 < len(finished) < 10  # killed after its first shard, before its last
    model = make_tiny_model()
    resumed = E.evaluate(model, records, ["gradcam", "liftcam"], shard_size=1, cache_dir=tmp_path, progress=False)
    recomputed = [(image, label) for images, labels in computed for image in images for label in labels]
    assert len(recomputed) == len(set(recomputed)) == 10 - len(finished)  # no finished shard computed again
    assert _cache_files(tmp_path) >= finished and len(_cache_files(tmp_path)) == 10
    uninterrupted = E.evaluate(model, records, ["gradcam", "liftcam"], shard_size=1, progress=False)
    pd.testing.assert_frame_equal(resumed.rows.drop(columns="seconds"), uninterrupted.rows.drop(columns="seconds"),
                                  check_exact=True)


class _DiesInItsFirstWorker(_Tiny):
    """:class:`_Tiny`, except that in a process other than the one that built it, the first forward pass
    (traced, when a shard is cut at its layer) kills that process, once over all processes: the one that
    creates ``marker`` first."""

    def __init__(self, marker):
        super().__init__()
        self.marker, self.home = str(marker), os.getpid()

    def forward(self, x):
        if os.getpid() != self.home:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def test_a_dask_worker_killed_mid_shard_loses_and_repeats_no_rows(records, tmp_path):
    """The local cluster's only worker dies in a shard, and the model it held with it: the model is sent
    again to the worker Dask starts in its place, and every shard not yet done is computed there."""
    model = make_tiny_model(_DiesInItsFirstWorker, tmp_path / "killed")
    local = E.evaluate(model, records, ["gradcam", "liftcam"], shard_size=1, progress=False).rows
    remote = E.evaluate(model, records, ["gradcam", "liftcam"], shard_size=1, dask_scheduler="local",
                        progress=False).rows
    assert (tmp_path / "killed").exists()  # the worker died in a shard
    pd.testing.assert_frame_equal(remote.drop(columns="seconds"), local.drop(columns="seconds"), check_exact=True)


def test_the_local_dask_worker_keeps_the_memory_it_frees():
    """Dask's default ``MALLOC_TRIM_THRESHOLD_=65536`` made every forward pass on its worker three times slower;
    the local cluster's worker starts without it, and with one thread."""
    from dask.distributed import Client

    def environment():
        import torch
        return os.environ.get("MALLOC_TRIM_THRESHOLD_"), torch.get_num_threads()

    with E.local_cluster() as cluster, Client(cluster) as client:
        assert list(client.run(environment).values()) == [(None, 1)]


def test_methods_with_equal_maps_are_scored_once_with_the_same_numbers(tiny_model, records, monkeypatch):
    """ShapleyCAM's maps equal Grad-CAM's (logit utility): the metrics run once for both, and each row holds
    the numbers an evaluation of that method alone gives. A method with other maps is scored on its own."""
    metrics = ("faithfulness", "insertion_deletion", "road", "pointing")
    alone = {m: E.evaluate(tiny_model, records, [m], metrics=metrics, shard_size=5, progress=False).rows
             for m in ("gradcam", "shapleycam", "liftcam")}
    calls = []
    curves = M.insertion_deletion_curves
    monkeypatch.setattr(M, "insertion_deletion_curves", lambda *a, **k: calls.append(1) or curves(*a, **k))
    together = E.evaluate(tiny_model, records, ["gradcam", "shapleycam", "liftcam"], metrics=metrics, shard_size=5,
                          progress=False).rows
    assert len(calls) == 2  # one shard: Grad-CAM's maps (shared with ShapleyCAM), LIFT-CAM's
    for method, rows in alone.items():
        mine = together[together["method"] == method].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine.drop(columns="seconds"), rows.drop(columns="seconds"), check_exact=True)
    ad = {m: together.loc[together["method"] == m, "AD"].to_numpy() for m in ("gradcam", "liftcam")}
    assert not np.array_equal(ad["gradcam"], ad["liftcam"])  # other maps, other scores
