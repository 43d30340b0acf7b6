"""ZS3 segmentation metrics from a confusion matrix, with detectron2's SemSegEvaluator conventions.

- Pixels labelled ``ignore_index`` are not counted.
- IoU_c = TP / (TP + FP + FN) over the whole dataset. A class that is neither in the ground truth nor
  predicted has no IoU (NaN) and is left out of every mean; a class that is predicted but absent from
  the ground truth has IoU 0 and *counts* in the means (detectron2: the sum of IoUs of classes with
  ground truth, divided by the number of classes with ground truth or predictions).
- mIoU(seen), mIoU(unseen) average over the classes of each set that have IoU; hIoU is their harmonic
  mean (ZS3Net's protocol). Pixel accuracy = correctly labelled / all labelled pixels.
Results are percentages, as in the paper's tables.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import runtime

IGNORE_INDEX = 255
"""The label of pixels that are never scored or trained on (VOC's boundaries, and unseen classes in training labels),
in the toy and the real world alike."""


def seen_label_map(class_names: Sequence[str], seen_classes: Sequence[str]) -> torch.Tensor:
    """(256,) int64 lookup: label id (an index into ``class_names``) -> index among ``seen_classes``, the training
    classes; every other id -> ``IGNORE_INDEX``."""
    label_map = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
    for i, name in enumerate(seen_classes):
        label_map[list(class_names).index(name)] = i
    return label_map


def semantic_targets(label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """One target segment per class present in a label map (MaskFormer's semantic targets).

    Args:
        label: (H, W) int64 class ids or ``ignore_index``.
    Returns:
        classes (T,) int64 and masks (T, H, W) float in {0, 1}.
    """
    classes = label.unique()
    classes = classes[classes != ignore_index]
    return classes, (label[None] == classes[:, None, None]).float()


METRICS = ("pAcc", "mIoU", "seen", "unseen", "hIoU", "things")
"""The summary metrics of :meth:`SegmentationMeter.compute`, in the order tables print them."""


def bootstrap_counts(scenes: int, samples: int = 1000, seed: int = 0) -> torch.Tensor:
    """(samples, S) float64: how many times each of the S scenes is drawn in each bootstrap resample (S draws with
    replacement; a fixed seed, so intervals are reproducible). Any per-scene sum (S, ...) resamples as
    ``counts @ sums``; every interval of this package draws its scenes here."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(scenes, (samples, scenes), generator=generator)  # (samples, S)
    return torch.zeros(samples, scenes, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(samples, scenes, dtype=torch.float64))  # (samples, S)


def _percentiles(rows: list[dict[str, float]], level: float) -> dict[str, tuple[float, float]]:
    """metric -> the central ``level`` interval of its values over bootstrap ``rows``."""
    tail = (1 - level) / 2 * 100
    return {key: tuple(np.nanpercentile([r[key] for r in rows], [tail, 100 - tail]).tolist())
            for key in METRICS if key in rows[0]}


class SegmentationMeter:
    """Accumulates a (C, C) confusion matrix over a dataset without keeping predictions.

    >>> meter = SegmentationMeter(["a", "b"])
    >>> meter.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    >>> meter.compute()["pAcc"]
    50.0
    """

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX, per_scene: bool = False):
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(len(self.class_names), len(self.class_names), dtype=torch.int64)
        self.scene_confusions: list[torch.Tensor] | None = [] if per_scene else None  # (C, C) per image, for intervals

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``label`` are (B, H, W) int class ids (one image per leading index)."""
        if pred.shape != label.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} must have the same shape")
        for scene_pred, scene_label in zip(pred, label) if self.scene_confusions is not None else [(pred, label)]:
            confusion = self._confusion(scene_pred, scene_label)  # (C, C) rows: truth
            self.confusion += confusion
            if self.scene_confusions is not None:
                self.scene_confusions.append(confusion)

    def _confusion(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        n = len(self.class_names)
        valid = label != self.ignore_index
        pred, label = pred[valid].long().cpu(), label[valid].long().cpu()
        if len(label) and (label.max() >= n or pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"class ids must lie in [0, {n}) or equal ignore_index {self.ignore_index}")
        return torch.bincount(label * n + pred, minlength=n * n).view(n, n)

    def interval(self, seen_classes: Sequence[str], unseen_classes: Sequence[str],
                 thing_classes: Sequence[str] | None = None, samples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
        """The ``level`` bootstrap interval of each metric of :meth:`compute`: the scenes resampled with
        replacement ``samples`` times (a fixed seed, so the interval is reproducible); metric -> (low, high).
        Needs ``per_scene=True``. Two results whose intervals overlap widely are not told apart by these scenes."""
        rows = self._bootstrap(self._resampling_counts(samples, seed), seen_classes, unseen_classes, thing_classes)
        return _percentiles(rows, level)

    def difference_interval(self, other: SegmentationMeter, seen_classes: Sequence[str],
                            unseen_classes: Sequence[str], thing_classes: Sequence[str] | None = None,
                            samples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
        """The bootstrap interval of each metric's difference, this meter's minus ``other``'s, both measured on
        the same scenes: each resample draws the same scenes for both, so what the scenes share cancels. It is
        about as wide as one meter's own :meth:`interval`, far narrower than two unpaired intervals would allow a
        difference; a difference whose interval holds 0 is not told apart by these scenes."""
        counts = self._resampling_counts(samples, seed)
        if len(other.scene_confusions or []) != counts.shape[1]:
            raise ValueError("a paired interval needs two per-scene meters updated with the same scenes")
        mine = self._bootstrap(counts, seen_classes, unseen_classes, thing_classes)
        theirs = other._bootstrap(counts, seen_classes, unseen_classes, thing_classes)
        return _percentiles([{key: a[key] - b[key] for key in METRICS if key in a} for a, b in zip(mine, theirs)],
                            level)

    def _resampling_counts(self, samples: int, seed: int) -> torch.Tensor:
        if not self.scene_confusions:
            raise ValueError("intervals need the per-scene confusions: build the meter with per_scene=True")
        return bootstrap_counts(len(self.scene_confusions), samples, seed)  # (samples, S)

    def _bootstrap(self, counts: torch.Tensor, seen_classes: Sequence[str], unseen_classes: Sequence[str],
                   thing_classes: Sequence[str] | None) -> list[dict[str, float]]:
        """:meth:`compute` of each resample: ``counts`` (samples, S) weighs the S per-scene confusions."""
        scenes = torch.stack(self.scene_confusions).double()  # (S, C, C)
        confusions = (counts @ scenes.flatten(1)).view(len(counts), *scenes.shape[1:])  # (samples, C, C)
        rows = []
        for confusion in confusions:
            meter = SegmentationMeter(self.class_names, self.ignore_index)
            meter.confusion = confusion
            rows.append(meter.compute(seen_classes, unseen_classes, thing_classes))
        return rows

    def per_class_iou(self) -> np.ndarray:
        """(C,) IoU in percent; NaN for classes neither present nor predicted."""
        conf = self.confusion.double().numpy()
        tp = np.diag(conf)
        union = conf.sum(1) + conf.sum(0) - tp  # TP + FN + FP
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100 * np.where(union > 0, tp / union, np.nan)

    def compute(self, seen_classes: Sequence[str] | None = None, unseen_classes: Sequence[str] | None = None,
                thing_classes: Sequence[str] | None = None) -> dict:
        """mIoU (all classes), pAcc, and with a split also mIoU over seen and unseen and their hIoU; with
        ``thing_classes`` also ``things``, the mIoU over those."""
        iou = self.per_class_iou()
        conf = self.confusion.double()
        total = conf.sum().item()
        result = {"mIoU": _nanmean(iou), "pAcc": 100 * conf.diag().sum().item() / total if total else float("nan"),
                  "IoU": dict(zip(self.class_names, iou.tolist()))}
        if seen_classes is not None and unseen_classes is not None:
            seen = _nanmean(iou[[self.class_names.index(c) for c in seen_classes]])
            unseen = _nanmean(iou[[self.class_names.index(c) for c in unseen_classes]])
            result.update(seen=seen, unseen=unseen, hIoU=harmonic_mean(seen, unseen))
        if thing_classes is not None:
            result["things"] = _nanmean(iou[[self.class_names.index(c) for c in thing_classes]])
        return result


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def harmonic_mean(seen: float, unseen: float) -> float:
    """hIoU = 2 * seen * unseen / (seen + unseen); 0 when both are 0."""
    return 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else 0.0


METRIC_COLUMNS = ("pAcc", "seen", "unseen", "hIoU", "things")


def format_table(results: dict[str, dict], columns: Sequence[str] = METRIC_COLUMNS, decimals: int = 1) -> str:
    """One row per named result, one column per metric that the first result has (by default percentages with
    1 decimal; e.g. ``columns=("R@30", "R@50"), decimals=3`` for proposal recall). A result with an ``interval``
    (``evaluate_segmentation(..., interval=True)``) prints each metric's 95 % bootstrap interval beside it.

    >>> print(format_table({"baseline": {"pAcc": 44.2, "seen": 15.5, "unseen": 17.5, "hIoU": 16.5}}))
                 pAcc   seen unseen   hIoU
    baseline     44.2   15.5   17.5   16.5
    """
    columns = [c for c in columns if c in next(iter(results.values()))]
    width = max(len(name) for name in results) + 2
    intervals = any("interval" in r for r in results.values())
    cell = max(7, decimals + 5) + (14 if intervals else 0)

    def show(r: dict, c: str) -> str:
        if "interval" not in r:
            return f"{r[c]:{cell}.{decimals}f}"
        low, high = r["interval"][c]
        return f"{r[c]:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]".rjust(cell)

    lines = [" " * width + "".join(f"{c:>{cell}s}" for c in columns)]
    lines += [f"{name:{width}s}" + "".join(show(r, c) for c in columns) for name, r in results.items()]
    if intervals:
        scenes = {r.get("scenes") for r in results.values()}
        lines.append("[low, high]: the 95 % bootstrap interval over " + (f"the {scenes.pop()} scenes" if len(scenes) == 1
                                                                        and None not in scenes else "the scenes"))
    return "\n".join(lines)


def ground_truth_masks(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One mask per class from a label map: (B, H, W) ids (``IGNORE_INDEX`` allowed) -> (B, C, H, W) float
    in {0, 1}; classes absent from an image get an empty mask, which every classifier here skips."""
    return F.one_hot(label.clamp(max=num_classes), num_classes + 1)[..., :num_classes].permute(0, 3, 1, 2).float()


@torch.no_grad()
def evaluate_segmentation(predict, dataset, class_names: Sequence[str], seen_classes: Sequence[str],
                          unseen_classes: Sequence[str], batch_size: int = 16, progress: bool | None = None,
                          thing_classes: Sequence[str] | None = None, interval: bool = False) -> dict:
    """Run ``predict`` over a dataset and return :meth:`SegmentationMeter.compute` with the ZS3 split (and
    ``scenes``, how many), with ``interval=True`` also each metric's 95 % bootstrap interval over the scenes.

    Args:
        predict: a batch {"image_raw": (B, 3, H, W) in [0, 1], "label": (B, H, W)} -> (B, H, W) class indices into
            ``class_names``. A segmenter reads the images only; a classifier given the ground-truth masks
            (:func:`ground_truth_masks`) reads the labels too (``world.classifies_ground_truth``).
        dataset: items with ``image_raw`` (3, H, W) and full ``label`` (H, W), ids indexing ``class_names``.
        progress: show a progress bar; default: not in CI mode.
        thing_classes: also report ``things``, their mIoU.
    """
    return evaluate_labellings(lambda batch: {"": predict(batch)}, dataset, class_names, seen_classes, unseen_classes,
                               batch_size, progress, thing_classes, interval)[""]


@torch.no_grad()
def evaluate_labellings(predict, dataset, class_names: Sequence[str], seen_classes: Sequence[str],
                        unseen_classes: Sequence[str], batch_size: int = 16, progress: bool | None = None,
                        thing_classes: Sequence[str] | None = None, interval: bool = False) -> dict[str, dict]:
    """:func:`evaluate_segmentation` of several labellings of the same images in one pass over the dataset:
    ``predict`` maps a batch to {name: (B, H, W) class indices}; returns {name: that labelling's result}."""
    meters = _accumulate(predict, dataset, class_names, batch_size, progress, per_scene=interval)
    results = {}
    for name, meter in meters.items():
        results[name] = {**meter.compute(seen_classes, unseen_classes, thing_classes), "scenes": len(dataset)}
        if interval:
            results[name]["interval"] = meter.interval(seen_classes, unseen_classes, thing_classes)
    return results


@torch.no_grad()
def compare_segmentation(predict, reference, dataset, class_names: Sequence[str], seen_classes: Sequence[str],
                         unseen_classes: Sequence[str], batch_size: int = 16, progress: bool | None = None,
                         thing_classes: Sequence[str] | None = None) -> dict[str, list[float]]:
    """How much ``predict`` beats ``reference`` on the same scenes (both as in :func:`evaluate_segmentation`):
    metric -> [difference, low, high], with the 95 % paired bootstrap interval of
    :meth:`SegmentationMeter.difference_interval`."""
    meters = _accumulate(lambda batch: {"ours": predict(batch), "theirs": reference(batch)}, dataset, class_names,
                         batch_size, progress, per_scene=True)
    ours, theirs = meters["ours"], meters["theirs"]
    split = (seen_classes, unseen_classes, thing_classes)
    interval, ours_result, theirs_result = ours.difference_interval(theirs, *split), ours.compute(*split), \
        theirs.compute(*split)
    return {key: [ours_result[key] - theirs_result[key], *interval[key]] for key in interval}


def _accumulate(predict, dataset, class_names: Sequence[str], batch_size: int, progress: bool | None,
                per_scene: bool) -> dict[str, SegmentationMeter]:
    """``predict`` (a batch -> {name: (B, H, W) labels}) run over ``dataset``, one meter per name."""
    meters: dict[str, SegmentationMeter] = {}
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluate", leave=False,
                      disable=runtime.CI if progress is None else not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = {"image_raw": torch.stack([it["image_raw"] for it in items]),  # (B, 3, H, W)
                 "label": torch.stack([it["label"] for it in items])}  # (B, H, W)
        for name, labels in predict(batch).items():
            meters.setdefault(name, SegmentationMeter(class_names, per_scene=per_scene)).update(labels.cpu(),
                                                                                               batch["label"])
    return meters
