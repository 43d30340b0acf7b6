import numpy as np
import pytest
import torch

from deop_lite import toyworld as tw


def test_classes_and_split_mirror_the_paper():
    assert len(tw.CLASS_NAMES) >= 16 and len(set(tw.CLASS_NAMES)) == len(tw.CLASS_NAMES)
    assert len(tw.SEEN_CLASSES) == 3 * len(tw.CLASS_NAMES) // 4
    assert set(tw.UNSEEN_CLASSES) & set(tw.STUFF_CLASSES) and set(tw.UNSEEN_CLASSES) & set(tw.THING_CLASSES)
    assert set(tw.SEEN_CLASSES) | set(tw.UNSEEN_CLASSES) == set(tw.CLASS_NAMES)


def test_same_seed_gives_byte_identical_scenes():
    for index in range(20):
        a = tw.make_scene(tw.scene_rng("val", index))
        b = tw.make_scene(tw.scene_rng("val", index))
        assert a.image.tobytes() == b.image.tobytes() and a.label.tobytes() == b.label.tobytes()
        assert a.caption == b.caption
    other = tw.make_scene(tw.scene_rng("train", 0))
    assert other.image.tobytes() != tw.make_scene(tw.scene_rng("val", 0)).image.tobytes()


@pytest.mark.parametrize("config", [tw.ToyWorldConfig(), tw.ToyWorldConfig.segmentation()], ids=["64px", "128px"])
def test_captions_name_exactly_the_visible_classes(config):
    for index in range(200):
        scene = tw.make_scene(tw.scene_rng("train", index), config)
        counts = np.bincount(scene.label.ravel(), minlength=256)
        visible = {tw.CLASS_NAMES[i] for i in range(len(tw.CLASS_NAMES)) if counts[i] >= config.min_visible}
        assert set(scene.classes) == visible
        words = set(scene.caption.replace(".", " ").replace(",", " ").split())
        assert {c for c in tw.CLASS_NAMES if c in words} == set(scene.classes), scene.caption


def test_captions_vary():
    captions = {tw.make_scene(tw.scene_rng("train", i)).caption.split(" ")[0] for i in range(200)}
    assert len(captions) >= 5


def test_zs3_protocol_hides_unseen_only_in_training_labels():
    unseen_ids = [tw.CLASS_NAMES.index(c) for c in tw.UNSEEN_CLASSES]
    train, val = tw.ToyScenes("train", 64), tw.ToyScenes("val", 64)
    train_labels = torch.stack([train[i]["label"] for i in range(64)])
    val_labels = torch.stack([val[i]["label"] for i in range(64)])
    assert not torch.isin(train_labels, torch.tensor(unseen_ids)).any()
    assert torch.isin(val_labels, torch.tensor(unseen_ids)).any()
    # Images are kept: the training item's image is the scene's own, unseen pixels included.
    scene = train.scene(3)
    assert torch.equal(train[3]["image_raw"], torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255)


def test_dataset_items():
    item = tw.ToyScenes("val", 4, tw.ToyWorldConfig.segmentation())[2]
    assert item["image_raw"].shape == (3, 128, 128) and item["image_raw"].dtype == torch.float32
    assert 0 <= item["image_raw"].min() and item["image_raw"].max() <= 1
    assert item["label"].shape == (128, 128) and item["label"].dtype == torch.int64
    with pytest.raises(IndexError):
        tw.ToyScenes("val", 4)[4]
    with pytest.raises(ValueError, match="split"):
        tw.ToyScenes("validation", 4)


def test_single_class_images():
    images, targets = tw.single_class_images(2, class_names=["sky", "ladybird"])
    assert images.shape == (4, 3, 64, 64) and targets.tolist() == [0, 0, 1, 1]


def test_unknown_class_names_are_rejected_with_the_vocabulary():
    with pytest.raises(ValueError, match="this model knows: sky, grass"):
        tw.check_class_names(["sky", "giraffe"])
    with pytest.raises(ValueError, match="kind"):
        tw.make_scene(np.random.default_rng(0), kind="indoor")


def test_segmentation_scenes_have_the_statistics_chosen_from_real_data():
    """About a third of the pixels are things (COCO-Stuff: stuff covers 69 %), 2-5 things a scene (COCO: 3.5
    categories an image), diameters spread log-uniformly from a fifth to nine tenths of the side."""
    config = tw.ToyWorldConfig.segmentation()
    thing_ids = [tw.CLASS_NAMES.index(c) for c in tw.THING_CLASSES]
    scenes = [tw.make_scene(tw.scene_rng("val", i), config) for i in range(200)]
    coverage = np.mean([np.isin(s.label, thing_ids).mean() for s in scenes])
    assert 0.28 < coverage < 0.38, coverage
    drawn = [len(np.intersect1d(np.unique(s.label), thing_ids)) for s in scenes]  # things still visible
    assert max(drawn) <= 5 and np.mean(drawn) > 2.5


def test_things_are_assembled_from_parts_that_scale_with_them():
    """A thing is several colours (its parts), and its look at 2x the size is its look at 1x, upscaled."""
    for name in tw.THING_CLASSES:
        scene = tw.make_scene(tw.scene_rng("val", 7), tw.ToyWorldConfig(image_size=96), kind="object", classes=(name,))
        inside = scene.label == tw.CLASS_NAMES.index(name)
        colours = {tuple(c // 40) for c in scene.image[inside]}
        assert len(colours) >= 3, name
    small, large = (np.zeros((s, s, 3), np.float32) for s in (48, 96))
    for canvas, side in ((small, 48), (large, 96)):
        tw._draw_thing(np.random.default_rng(0), canvas, np.full((side, side), 255, np.uint8), "ladybird",
                       0.8 * side, (side / 2, side / 2), (215, 40, 40))
    assert np.abs(large[::2, ::2] - small).mean() < 25  # the same parts in the same places, up to the pixel grid


def test_pre_training_windows_show_things_at_the_segmentation_scale():
    config = tw.ToyWorldConfig()
    assert config.canvas == tw.ToyWorldConfig.segmentation().image_size
    scene = tw.make_scene(tw.scene_rng("train", 3), config, kind="scene")
    assert scene.image.shape == (config.image_size, config.image_size, 3) and scene.label.shape == (64, 64)
