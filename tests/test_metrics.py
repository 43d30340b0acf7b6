import math

import pytest
import torch

from deop_lite.metrics import SegmentationMeter, harmonic_mean

IGN = 255


def test_hand_computed_case_with_absent_and_false_positive_classes():
    # Classes: a (seen), b (seen), c (unseen), d (unseen, never in the ground truth but predicted once).
    label = torch.tensor([[0, 0, 1, 1, 2, IGN]])
    pred = torch.tensor([[0, 1, 1, 3, 2, 0]])
    meter = SegmentationMeter(["a", "b", "c", "d"])
    meter.update(pred, label)
    r = meter.compute(seen_classes=["a", "b"], unseen_classes=["c", "d"])
    # a: TP 1, FP 0, FN 1 -> 1/2; b: TP 1, FP 1, FN 1 -> 1/3; c: 1/1; d: predicted, never true -> 0,
    # and it counts in the means (detectron2's convention).
    assert r["IoU"]["a"] == pytest.approx(50) and r["IoU"]["b"] == pytest.approx(100 / 3)
    assert r["IoU"]["c"] == pytest.approx(100) and r["IoU"]["d"] == 0
    assert r["seen"] == pytest.approx((50 + 100 / 3) / 2) and r["unseen"] == pytest.approx(50)
    assert r["hIoU"] == pytest.approx(harmonic_mean(r["seen"], 50))
    assert r["pAcc"] == pytest.approx(100 * 3 / 5)  # the ignored pixel is not counted
    assert r["mIoU"] == pytest.approx((50 + 100 / 3 + 100 + 0) / 4)


def test_a_class_neither_present_nor_predicted_is_left_out():
    meter = SegmentationMeter(["a", "b", "c"])
    meter.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    r = meter.compute(seen_classes=["a", "c"], unseen_classes=["b"])
    assert math.isnan(r["IoU"]["c"])
    assert r["seen"] == pytest.approx(50) and r["mIoU"] == pytest.approx(25)


def test_all_ignore_image_changes_nothing():
    meter = SegmentationMeter(["a", "b"])
    meter.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    before = meter.confusion.clone()
    meter.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), IGN))
    assert torch.equal(meter.confusion, before)


def test_accumulates_over_batches_like_one_big_batch():
    torch.manual_seed(0)
    label, pred = torch.randint(0, 3, (4, 8, 8)), torch.randint(0, 3, (4, 8, 8))
    whole, parts = SegmentationMeter("abc"), SegmentationMeter("abc")
    whole.update(pred, label)
    for i in range(4):
        parts.update(pred[i:i + 1], label[i:i + 1])
    assert torch.equal(whole.confusion, parts.confusion)


def test_bad_input():
    meter = SegmentationMeter(["a", "b"])
    with pytest.raises(ValueError, match="same shape"):
        meter.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="class ids"):
        meter.update(torch.tensor([5]), torch.tensor([0]))


def test_ground_truth_masks_let_a_classifier_be_scored_alone():
    import torch

    from deop_lite.metrics import evaluate_segmentation, ground_truth_masks
    label = torch.tensor([[[0, 0, 2], [255, 1, 2]]])  # (1, 2, 3)
    masks = ground_truth_masks(label, 3)  # (1, 3, 2, 3)
    assert masks.shape == (1, 3, 2, 3) and masks.sum(1).tolist() == [[[1, 1, 1], [0, 1, 1]]]
    dataset = [{"image_raw": torch.zeros(3, 2, 3), "label": label[0]}]
    # a classifier given one ground-truth mask per class that confuses classes 1 and 2
    swap_1_and_2 = lambda batch: ground_truth_masks(batch["label"], 3)[:, [0, 2, 1]].argmax(1)
    result = evaluate_segmentation(swap_1_and_2, dataset, ["a", "b", "c"], ["a", "b"], ["c"], thing_classes=["b", "c"])
    assert result["IoU"] == {"a": 100.0, "b": 0.0, "c": 0.0} and result["things"] == 0.0


def test_bootstrap_interval_brackets_the_metric_and_shrinks_with_more_scenes():
    from deop_lite.metrics import format_table
    generator = torch.Generator().manual_seed(0)

    def meter(scenes: int) -> SegmentationMeter:
        m = SegmentationMeter(["a", "b", "c"], per_scene=True)
        label = torch.randint(3, (scenes, 8, 8), generator=generator)
        noise = torch.randint(3, (scenes, 8, 8), generator=generator)
        m.update(torch.where(torch.rand(scenes, 8, 8, generator=generator) < 0.7, label, noise), label)
        return m

    small, large = meter(20), meter(400)
    for m in (small, large):
        result, interval = m.compute(["a", "b"], ["c"]), m.interval(["a", "b"], ["c"])
        for key in ("pAcc", "seen", "unseen", "hIoU"):
            assert interval[key][0] <= result[key] <= interval[key][1], key
    width = lambda m: m.interval(["a", "b"], ["c"])["hIoU"][1] - m.interval(["a", "b"], ["c"])["hIoU"][0]
    assert width(large) < width(small) / 2  # ~1/sqrt(scenes)
    assert small.interval(["a", "b"], ["c"]) == small.interval(["a", "b"], ["c"])  # a fixed seed: reproducible
    row = {**small.compute(["a", "b"], ["c"]), "interval": small.interval(["a", "b"], ["c"]), "scenes": 20}
    assert "95 % bootstrap interval over the 20 scenes" in format_table({"model": row})


def test_paired_interval_cancels_what_the_scenes_share():
    """Two models on the same scenes: the interval of their difference is narrower than either model's own, holds
    the measured difference, and is exactly zero for a model against itself."""
    generator = torch.Generator().manual_seed(0)
    label = torch.randint(3, (60, 8, 8), generator=generator)
    hard = torch.rand(60, 1, 1, generator=generator)  # (S, 1, 1) how hard each scene is, shared by both models
    noise = torch.randint(3, (60, 8, 8), generator=generator)
    meters = {}
    for name, skill in (("better", 0.1), ("worse", 0.0)):
        meters[name] = SegmentationMeter(["a", "b", "c"], per_scene=True)
        right = torch.rand(60, 8, 8, generator=generator) < (1 - hard + skill).clamp(max=1)  # (S, 8, 8)
        meters[name].update(torch.where(right, label, noise), label)
    better, worse = meters["better"], meters["worse"]
    split = (["a", "b"], ["c"])
    difference = better.difference_interval(worse, *split)["hIoU"]
    measured = better.compute(*split)["hIoU"] - worse.compute(*split)["hIoU"]
    assert difference[0] <= measured <= difference[1]
    own = better.interval(*split)["hIoU"]
    assert difference[1] - difference[0] < own[1] - own[0]
    assert better.difference_interval(better, *split)["hIoU"] == (0.0, 0.0)
    with pytest.raises(ValueError, match="same scenes"):
        better.difference_interval(SegmentationMeter(["a", "b", "c"], per_scene=True), *split)


def test_compare_segmentation_gives_the_difference_of_two_evaluations_with_its_paired_interval():
    from deop_lite.metrics import compare_segmentation, evaluate_segmentation
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(3, (12, 8, 8), generator=generator)
    dataset = [{"image_raw": torch.rand(3, 8, 8, generator=generator), "label": label} for label in labels]
    split = (["a", "b", "c"], ["a", "b"], ["c"])
    noise = torch.randint(3, (12, 8, 8), generator=generator)
    by_image = {float(item["image_raw"].sum()): i for i, item in enumerate(dataset)}
    index = lambda batch: [by_image[float(image.sum())] for image in batch["image_raw"]]  # which scenes a batch holds
    # two labellers: right on 3 of 4 pixels and on 1 of 2; noise elsewhere
    good = lambda batch: torch.where(torch.arange(64).view(8, 8) % 4 > 0, labels[index(batch)], noise[index(batch)])
    bad = lambda batch: torch.where(torch.arange(64).view(8, 8) % 2 > 0, labels[index(batch)], noise[index(batch)])
    gain = compare_segmentation(good, bad, dataset, *split, batch_size=5)
    measured = evaluate_segmentation(good, dataset, *split)["hIoU"] - evaluate_segmentation(bad, dataset, *split)["hIoU"]
    assert gain["hIoU"][0] == pytest.approx(measured) and gain["hIoU"][1] <= measured <= gain["hIoU"][2]
    assert compare_segmentation(good, good, dataset, *split)["hIoU"] == [0.0, 0.0, 0.0]
