"""Synthetic scenes: reproducible one by one, with boxes and masks that match the drawn pixels."""

import numpy as np
import pytest

from liftcam_utils.datasets import Box, ImageRecord
from liftcam_utils.datasets.synthetic_scenes import (
    SCENE_CLASSES,
    SceneSet,
    generate_scene,
    make_scenes,
    multi_hot,
)

N_SCENES = 60


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(3, index, size=96) for index in range(N_SCENES)]


def test_classes_have_distinct_shapes_and_colours():
    assert len(SCENE_CLASSES) >= 6
    assert len({c.shape for c in SCENE_CLASSES}) == len(SCENE_CLASSES)
    assert len({c.colour for c in SCENE_CLASSES}) == len(SCENE_CLASSES)


def test_same_seed_and_index_give_identical_scenes():
    first, second = generate_scene(7, 12), generate_scene(7, 12)
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1:3] == second[1:3]
    np.testing.assert_array_equal(first[3], second[3])


def test_other_index_or_seed_gives_other_scenes():
    image = generate_scene(7, 12)[0].tobytes()
    assert generate_scene(7, 13)[0].tobytes() != image
    assert generate_scene(8, 12)[0].tobytes() != image


def test_scene_does_not_depend_on_the_scenes_before_it():
    scenes = make_scenes(3, seed=5, start=10)
    assert scenes.records[2].image().tobytes() == generate_scene(5, 12)[0].tobytes()


def test_sizes_labels_and_object_counts(scenes):
    counts = set()
    for image, labels, boxes, mask in scenes:
        assert image.mode == "RGB" and image.size == (96, 96)
        assert mask.shape == (96, 96) and np.issubdtype(mask.dtype, np.integer)
        assert 1 <= len(labels) <= 3
        assert len(set(labels)) == len(labels)
        assert all(0 <= label < len(SCENE_CLASSES) for label in labels)
        assert [b.label for b in boxes] == list(labels)
        assert set(np.unique(mask)) <= set(range(len(labels) + 1))
        counts.add(len(labels))
    assert counts == {1, 2, 3}
    assert generate_scene(0, 0, size=128)[0].size == (128, 128)


def test_boxes_are_the_bounding_boxes_of_unoccluded_masks(scenes):
    unoccluded = 0
    for _, _, boxes, mask in scenes:
        for j, box in enumerate(boxes):
            ys, xs = np.nonzero(mask == j + 1)
            assert len(xs) > 0, "every object stays visible"
            visible = Box(box.label, xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # the box holds every visible pixel, ...
            assert (box.x0 <= visible.x0 and box.y0 <= visible.y0
                    and visible.x1 <= box.x1 and visible.y1 <= box.y1)
            assert 0 <= box.x0 < box.x1 <= 96 and 0 <= box.y0 < box.y1 <= 96
            # ... and equals their bounding box where no later object overlaps it
            later = (mask > j + 1)[int(box.y0):int(box.y1), int(box.x0):int(box.x1)]
            if j == len(boxes) - 1 or not later.any():
                assert box == visible
                unoccluded += 1
    assert unoccluded >= N_SCENES


def test_limited_overlap(scenes):
    for _, _, boxes, mask in scenes:
        for j, box in enumerate(boxes):
            visible = (mask == j + 1).sum()
            # each later object hides at most a quarter of it, so at least half stays visible;
            # every shape fills at least ~1/3 of its box (the star least), hence 1/6 of the box
            assert visible >= (box.x1 - box.x0) * (box.y1 - box.y0) / 6


def test_mask_pixels_have_the_class_colour(scenes):
    for image, labels, _, mask in scenes:
        pixels = np.asarray(image)
        for j, label in enumerate(labels):
            assert (pixels[mask == j + 1] == SCENE_CLASSES[label].colour).all()


def test_background_is_cluttered(scenes):
    image, _, _, mask = scenes[0]
    background = np.asarray(image)[mask == 0].astype(float)
    assert background.std(axis=0).min() > 5  # textured, not flat


def test_make_scenes_records_and_masks():
    scenes = make_scenes(4, seed=2)
    assert isinstance(scenes, SceneSet) and len(scenes) == 4 and len(scenes.masks) == 4
    for index, (record, mask) in enumerate(zip(scenes.records, scenes.masks, strict=True)):
        image, labels, boxes, expected_mask = generate_scene(2, index)
        assert isinstance(record, ImageRecord)
        assert record.name == f"scene_2_{index:05d}"
        assert record.labels == labels and record.boxes == boxes
        assert record.image().tobytes() == image.tobytes()
        np.testing.assert_array_equal(mask, expected_mask)
    targets = multi_hot(scenes.records)
    assert targets.shape == (4, len(SCENE_CLASSES))
    assert [tuple(np.flatnonzero(t)) for t in targets] == [tuple(sorted(r.labels)) for r in scenes.records]
