"""A world: what every training stage and every evaluation needs from the data, whatever the data is.

Two implementations: the toy world (``toyworld.ToyWorld``, procedural scenes, the default) and each real dataset
(``datasets.DatasetWorld``: PASCAL VOC, COCO-Stuff, ...). The stages of ``deop_lite.stages`` take a world and a
config, so that notebook 07's real-world training is notebook 04's call with another world.

>>> from deop_lite.toyworld import ToyWorld
>>> world = ToyWorld()
>>> len(world.class_names), world.unseen_classes
(16, ('grass', 'road', 'fish', 'car'))
>>> batch = world.training_batch(step=0, batch_size=2)
>>> tuple(batch["image_raw"].shape), tuple(batch["label"].shape)
((2, 3, 128, 128), (2, 128, 128))
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .checks import InputError
from .metrics import evaluate_segmentation, ground_truth_masks
from .proposals import Refinement


class World:
    """Class names with their zero-shot split, a seeded training stream that shards across processes, a
    validation set, and the post-processing its proposals get at evaluation.

    Attributes:
        name: what the world is called in tables and logs.
        class_names: every class, in label-id order; ``seen_classes`` + ``unseen_classes`` split them.
        thing_classes: classes whose mIoU is also reported as ``things`` (None: not reported).
        refinement: the post-process of proposals at evaluation (``proposals.Refinement``; None: the network's own
            masks).
    """
    name: str
    class_names: tuple[str, ...]
    seen_classes: tuple[str, ...]
    unseen_classes: tuple[str, ...]
    thing_classes: tuple[str, ...] | None = None
    refinement: Refinement | None = None

    def training_batch(self, step: int, batch_size: int, share: int = 0, shares: int = 1) -> dict:
        """Share ``share`` of ``shares`` of global training batch ``step``: {"image_raw": (B/shares, 3, H, W) in
        [0, 1], "label": (B/shares, H, W) int64 ids into ``class_names``, unseen classes ``IGNORE_INDEX``}. A pure
        function of its arguments: W processes see together exactly what one process sees, and a resumed run
        sees what an uninterrupted one saw."""
        raise NotImplementedError

    def training_set(self) -> torch.utils.data.Dataset:
        """The training images as a dataset (items ``image_raw``, ``label`` with unseen classes hidden), read in
        order by the offline prompt stage to cut out seen-class segments."""
        raise NotImplementedError

    def validation_set(self, scenes: int | None = None) -> torch.utils.data.Dataset:
        """The first ``scenes`` validation images (None: all) with full labels."""
        raise NotImplementedError


def shard(step: int, batch_size: int, share: int, shares: int) -> range:
    """Positions in the training stream of share ``share`` of ``shares`` (processes x micro-batches) of global batch
    ``step``: step·B + [share·B/S, (share + 1)·B/S). W processes with B/W each see what one process with B sees."""
    if batch_size % shares:
        raise InputError(f"the global batch size {batch_size} must be divisible by the number of processes and "
                         f"micro-batches {shares}")
    size = batch_size // shares
    return range(step * batch_size + share * size, step * batch_size + (share + 1) * size)


# ----------------------------------------------------------------------------------------------------
# Evaluation in any world: a predict function (a batch {"image_raw", "label"} -> (B, H, W) class ids) over its
# validation set

def evaluate(predict: Callable[[dict], torch.Tensor], world: World, scenes: int | None = 200, batch_size: int = 16,
             progress: bool | None = None, interval: bool = False) -> dict:
    """``metrics.evaluate_segmentation`` of ``predict`` on the first ``scenes`` validation images of ``world``, over
    all its classes: pAcc, mIoU over seen and unseen classes, hIoU and the things' mIoU (``interval=True``: each
    metric's 95 % bootstrap interval over the scenes)."""
    return evaluate_segmentation(predict, world.validation_set(scenes), world.class_names, world.seen_classes,
                                 world.unseen_classes, batch_size, progress, world.thing_classes, interval)


def segments(model: nn.Module, world: World, refinement: Refinement | None = None) -> Callable[[dict], torch.Tensor]:
    """A ``predict`` for :func:`evaluate`: ``model`` (a ``model.DeOP``) segments each image with its own proposals,
    post-processed by ``refinement``."""
    return lambda batch: model.predict(batch["image_raw"], world.class_names, refinement)["label"]


def classifies_ground_truth(classifier: nn.Module, world: World) -> Callable[[dict], torch.Tensor]:
    """A ``predict`` for :func:`evaluate`: ``classifier`` (a mask classifier, or a ``DeOP``) given one ground-truth
    mask per class (``metrics.ground_truth_masks``), so that proposals play no part."""
    return lambda batch: classifier.classify_masks(
        batch["image_raw"], ground_truth_masks(batch["label"], len(world.class_names)), world.class_names)["label"]
