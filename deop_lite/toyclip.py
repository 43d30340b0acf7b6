"""The toy CLIP's pre-training objective and its checks: an open_clip ``CLIP`` small enough to pre-train on toy-world
captions on a CPU (``stages.train_toy_clip``).

Like real CLIP it is pre-trained contrastively on captions that cover **every** class, seen and unseen:
only segmentation training is restricted to seen classes. It ships as ``data/toy_clip.safetensors``.

Re-train it (about 25 minutes on 2 CPU cores, resumable; logs in ``runs/toy_clip/train.log``)::

    python -m deop_lite.stages train clip

Evaluate zero-shot classification of single-class toy images, and (``--gate-scenes``) whether one CLIP pass
classifies the ground-truth masks of segmentation scenes about as well as one pass per crop does::

    python -m deop_lite.stages eval clip [--gate-scenes 200]
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import toyworld
from .clip import ToyClipConfig, split_words
from .model import one_pass_baseline
from .multipass import MultiPass
from .severance import NONE, Severance
from .world import classifies_ground_truth, evaluate


def caption_groups(captions: Sequence[str]) -> torch.Tensor:
    """(B,) int64 group ids: captions that say the same thing (the same class and colour words, in any
    wording) share a group. "a red star on grass." and "grass with a red star." are one group."""
    content = set(toyworld.CLASS_NAMES) | set(toyworld.COLOURS)
    keys = [tuple(sorted(w for w in split_words(c) if w in content)) for c in captions]
    ids: dict[tuple, int] = {}
    return torch.tensor([ids.setdefault(k, len(ids)) for k in keys])


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, groups: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE in which captions of the same group are positives of each other, not negatives.

    With exact duplicates only, this equals plain CLIP loss (identical captions have identical text
    embeddings, so their logits tie); what it changes is paraphrases, which plain CLIP pushes apart.

    Args:
        image_emb, text_emb: (B, D) unit-norm embeddings of matching pairs.
        groups: (B,) group ids from :func:`caption_groups`.
        logit_scale: scalar, log of the inverse temperature.
    """
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T  # (B, B)
    same = (groups[:, None] == groups[None, :]).float()  # (B, B), 1 on the diagonal
    targets = same / same.sum(1, keepdim=True)  # each row spreads its mass over its group
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def stochastic_severance(step: int, layers: int, drop: float) -> Severance:
    """The blocks whose attention is the identity (GPS, α = 1) at pre-training step ``step``: each with probability
    ``drop``, drawn from the step number so that a resumed run draws the same.

    Like stochastic depth, which drops whole blocks at random, this trains every block to work with its
    tokens cut off from each other as well as mixed: the patch tokens of a web-scale CLIP carry what their
    patch shows (the premise of one-pass segmentation), and our toy CLIP, pre-trained on a few thousand
    captions, learns that only when a block sometimes has to do without mixing."""
    draws = torch.rand(layers, generator=torch.Generator().manual_seed(step))  # (layers,)
    return Severance("gps", {index: 1.0 for index in range(layers) if draws[index] < drop})


# ----------------------------------------------------------------------------------------------------
# Evaluation: zero-shot classification of single-class images

@torch.no_grad()
def evaluate_zero_shot(clip, n_per_class: int = 50, split: str = "val", batch_size: int = 256) -> dict:
    """Top-1 accuracy of zero-shot classification over all 16 classes on single-class toy images.

    Args:
        clip: a :class:`deop_lite.clip.ClipModel`.
    Returns:
        dict with ``top1``, ``seen_top1``, ``unseen_top1`` (fractions) and ``confusion`` (C, C) int
        counts (rows: true class, columns: predicted), class order ``toyworld.CLASS_NAMES``.
    """
    image_raw, targets = toyworld.single_class_images(n_per_class, split, toyworld.ToyWorldConfig(clip.image_size))
    text_emb = clip.text_embeddings(toyworld.CLASS_NAMES)  # (C, D)
    preds = torch.cat([(clip.encode_image(clip.normalize(chunk.to(clip.device))) @ text_emb.T).argmax(1).cpu()
                       for chunk in image_raw.split(batch_size)])  # (n,)
    n = len(toyworld.CLASS_NAMES)
    confusion = torch.bincount(targets * n + preds, minlength=n * n).view(n, n)
    correct = preds == targets
    unseen = torch.tensor([toyworld.CLASS_NAMES[t] in toyworld.UNSEEN_CLASSES for t in targets])
    return {"top1": correct.float().mean().item(), "seen_top1": correct[~unseen].float().mean().item(),
            "unseen_top1": correct[unseen].float().mean().item(), "confusion": confusion}


# ----------------------------------------------------------------------------------------------------
# The gate of toy world 2: can one pass read what a thing is?

GATE_SEVERANCE = {"stock": NONE, "GPS α=1, last layer": Severance("gps", {-1: 1.0}),
                  "GPS α=1, all layers": Severance("gps", {i: 1.0 for i in range(ToyClipConfig.vision_layers)})}
"""One-pass settings the gate compares; the chosen one is the last."""


@torch.no_grad()
def ground_truth_gate(clip, scenes: int = 200, severance: dict[str, Severance] | None = None,
                      progress: bool | None = None, interval: bool = False) -> dict[str, dict]:
    """Classify the ground-truth masks of ``scenes`` validation scenes (so that proposals play no part) with one
    pass (each ``severance`` setting, training-free) and with multi-pass crops; name -> ``world.evaluate``'s
    result (seen, unseen, hIoU, things, per-class IoU; ``interval=True``: with 95 % bootstrap intervals). Before
    anything downstream is trained on a toy world, one pass must read things about as well as crops do
    (notebook 00)."""
    classifiers = {f"one pass, {name}": one_pass_baseline(clip, setting)
                   for name, setting in (severance or GATE_SEVERANCE).items()}
    classifiers["multi-pass crops"] = MultiPass(clip)
    world = toyworld.ToyWorld()
    return {name: evaluate(classifies_ground_truth(classifier, world), world, scenes, progress=progress,
                           interval=interval) for name, classifier in classifiers.items()}


def format_zero_shot(result: dict) -> str:
    """``top-1 0.950 (seen 0.962, unseen 0.913)`` from :func:`evaluate_zero_shot`'s result."""
    return f"top-1 {result['top1']:.3f} (seen {result['seen_top1']:.3f}, unseen {result['unseen_top1']:.3f})"
