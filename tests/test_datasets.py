"""Real-world data: preparation from each official layout (the shipped VOC fixture; small COCO-Stuff, ADE20K,
PASCAL-Context and SBD fixtures generated here), the ZS3 training labels, and step-indexed training samples."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from deop_lite import datasets
from deop_lite.datasets import DatasetNotFound, DatasetWorld, SegmentationDataset, prepare
from deop_lite.metrics import IGNORE_INDEX
from deop_lite.realworld import FIXTURE


def _image(path, h=40, w=56, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    out = tmp_path_factory.mktemp("voc")
    prepare("voc", FIXTURE, out, progress=False)
    return out


def test_voc_fixture_follows_the_zs3_protocol(voc):
    train, val = SegmentationDataset(voc, "train"), SegmentationDataset(voc, "val")
    assert (len(train), len(val)) == (10, 6)  # 11 train images: one showed only sheep (unseen) and was dropped
    assert train.unseen_classes == val.unseen_classes == ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
    unseen_ids = [val.class_names.index(c) for c in val.unseen_classes]
    for i in range(len(train)):
        label = train[i]["label"]
        assert not torch.isin(label, torch.tensor(unseen_ids)).any()  # unseen pixels ignored in training
        assert (label != IGNORE_INDEX).any()
    val_ids = torch.cat([val[i]["label"].unique() for i in range(len(val))])
    assert torch.isin(torch.tensor(unseen_ids), val_ids).sum() == 2  # sheep and sofa are evaluated
    item = val[0]
    assert item["image_raw"].shape[1:] == item["label"].shape and item["image_raw"].dtype == torch.float32
    counts = json.loads((voc / "train_label_count.json").read_text())
    assert list(counts) == list(train.seen_classes) and counts["person"] > 0


def test_prepare_is_idempotent(voc, capsys):
    before = {p: p.stat().st_mtime_ns for p in voc.rglob("*.png")}
    prepare("voc", FIXTURE, voc, progress=False)
    assert "exists, skipping" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in voc.rglob("*.png")}


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFound, match="host.robots.ox.ac.uk"):
        prepare("voc", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(DatasetNotFound, match="Prepare it first"):
        SegmentationDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare("cityscapes", tmp_path, tmp_path)


def test_incomplete_data_names_the_missing_file(tmp_path):
    import shutil
    shutil.copytree(FIXTURE, tmp_path / "raw")
    (tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "dlv3p_023.png").unlink()
    with pytest.raises(DatasetNotFound, match="cannot read the annotation of dlv3p_023"):
        prepare("voc", tmp_path / "raw", tmp_path / "out", splits=["val"], progress=False)


def test_coco_stuff_png_and_json_layouts_agree(tmp_path):
    """The stuffthingmaps PNGs (values = category id - 1) and the COCO JSON annotations give the same labels."""
    from pycocotools import mask as mask_utils
    h, w = 40, 56
    raw = np.full((h, w), 255, np.uint8)
    raw[:20] = 123  # grass (id 124): an unseen stuff class
    raw[20:, :28] = 0  # person (id 1)
    raw[20:, 28:] = 20  # cow (id 21): an unseen thing
    for layout in ("png", "json"):
        root = tmp_path / layout
        for split in ("train", "val"):
            _image(root / "images" / f"{split}2017" / "000000000001.jpg", h, w)
            if layout == "png":
                _png(root / "stuffthingmaps_trainval2017" / f"{split}2017" / "000000000001.png", raw)
                continue
            for kind, ids in (("stuff", [124]), ("instances", [1, 21])):
                anns = []
                for n, cat in enumerate(ids):
                    rle = mask_utils.encode(np.asfortranarray((raw == cat - 1).astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode()
                    anns.append({"id": n + 1, "image_id": 1, "category_id": cat, "segmentation": rle, "iscrowd": 0,
                                 "area": float((raw == cat - 1).sum()), "bbox": [0, 0, w, h]})
                (root / "annotations").mkdir(exist_ok=True)
                (root / "annotations" / f"{kind}_{split}2017.json").write_text(json.dumps({
                    "images": [{"id": 1, "file_name": "000000000001.jpg", "height": h, "width": w}],
                    "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in ids]}))
        prepare("coco_stuff", root, tmp_path / f"out_{layout}", progress=False)
    names = datasets.COCO_STUFF_CLASSES
    assert len(names) == len(datasets.COCO_STUFF_IDS) == 171 and set(datasets.COCO_STUFF_UNSEEN) <= set(names)
    png_val, json_val = (SegmentationDataset(tmp_path / f"out_{k}", "val")[0]["label"] for k in ("png", "json"))
    assert torch.equal(png_val, json_val)
    assert png_val[0, 0] == names.index("grass") and png_val[-1, 0] == names.index("person")
    assert png_val[-1, -1] == names.index("cow")
    train = SegmentationDataset(tmp_path / "out_png", "train")[0]["label"]
    assert set(train.unique().tolist()) == {names.index("person"), IGNORE_INDEX}  # grass and cow are unseen
    assert len(SegmentationDataset(tmp_path / "out_png", "train").seen_classes) == 156


def test_ade150_and_context59_read_their_official_files(tmp_path):
    from scipy.io import savemat
    ade = tmp_path / "ade" / "ADEChallengeData2016"
    _image(ade / "images" / "validation" / "ADE_val_00000001.jpg")
    raw = np.zeros((40, 56), np.uint8)
    raw[:, 28:] = 3  # sky
    _png(ade / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    prepare("ade150", tmp_path / "ade", tmp_path / "ade_out", progress=False)
    label = SegmentationDataset(tmp_path / "ade_out", "val")[0]["label"]
    assert label[0, 0] == IGNORE_INDEX and label[0, -1] == datasets.ADE150_CLASSES.index("sky")

    context = tmp_path / "context"
    _image(context / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2008_000002.jpg")
    (context / "VOCdevkit" / "VOC2010" / "ImageSets" / "Main").mkdir(parents=True)
    (context / "VOCdevkit" / "VOC2010" / "ImageSets" / "Main" / "val.txt").write_text("2008_000002\n")
    labels459 = ["accordion", *datasets.CONTEXT59_CLASSES, "zebra-crossing"]  # ids 1.. in this made-up order
    (context / "labels.txt").write_text("\n".join(f"{i + 1}: {n}" for i, n in enumerate(labels459)))
    label_map = np.ones((40, 56), np.uint16)  # accordion: not one of the 59 -> ignore
    label_map[:, 28:] = labels459.index("sky") + 1
    (context / "trainval").mkdir()
    savemat(context / "trainval" / "2008_000002.mat", {"LabelMap": label_map})
    prepare("context59", context, tmp_path / "context_out", progress=False)
    dataset = SegmentationDataset(tmp_path / "context_out", "val")
    label = dataset[0]["label"]
    assert label[0, 0] == IGNORE_INDEX and label[0, -1] == datasets.CONTEXT59_CLASSES.index("sky")
    assert dataset.seen_classes == () and dataset.unseen_classes == datasets.CONTEXT59_CLASSES  # cross-dataset


def test_voc_trains_on_sbd_without_validation_images(tmp_path):
    from scipy.io import savemat
    root = tmp_path / "raw"
    voc = root / "VOCdevkit" / "VOC2012"
    for image_id in ("a", "b", "c"):
        _image(voc / "JPEGImages" / f"{image_id}.jpg")
    segmentation = np.full((40, 56), 15, np.uint8)  # person
    _png(voc / "SegmentationClass" / "a.png", segmentation)
    _png(voc / "SegmentationClass" / "b.png", segmentation)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("b\n")
    sbd = root / "benchmark_RELEASE" / "dataset" / "cls"
    sbd.mkdir(parents=True)
    for image_id in ("b", "c"):  # b is a VOC val image: SBD must not bring it into training
        savemat(sbd / f"{image_id}.mat", {"GTcls": {"Segmentation": np.full((40, 56), 13, np.uint8)}})
    prepare("voc", root, tmp_path / "out", progress=False)
    train = SegmentationDataset(tmp_path / "out", "train")
    assert [item["id"] for item in train.items] == ["a", "c"]
    assert train[1]["label"].unique().tolist() == [datasets.VOC_CLASSES.index("horse")]


def test_training_batches_split_the_same_samples_over_processes(voc):
    world = DatasetWorld(voc, crop=64)
    whole = world.training_batch(step=3, batch_size=4)
    halves = [world.training_batch(step=3, batch_size=4, share=r, shares=2) for r in range(2)]
    assert whole["image_raw"].shape == (4, 3, 64, 64) and whole["label"].shape == (4, 64, 64)
    assert torch.equal(whole["image_raw"], torch.cat([h["image_raw"] for h in halves]))
    assert torch.equal(whole["label"], torch.cat([h["label"] for h in halves]))
    assert not torch.equal(whole["label"], world.training_batch(step=4, batch_size=4)["label"])
    assert world.class_names == SegmentationDataset(voc, "train").class_names and len(world.unseen_classes) == 5
    with pytest.raises(ValueError, match="divisible"):
        world.training_batch(0, batch_size=3, shares=2)
