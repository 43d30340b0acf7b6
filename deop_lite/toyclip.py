"""The toy CLIP: an open_clip ``CLIP`` small enough to pre-train on toy-world captions on a CPU.

Like real CLIP it is pre-trained contrastively on captions that cover **every** class, seen and unseen:
only segmentation training is restricted to seen classes. It ships as ``data/toy_clip.safetensors``.

Re-train it (about 25 minutes on 2 CPU cores, resumable; logs in ``runs/toy_clip/train.log``)::

    python -m deop_lite.toyclip train

Evaluate zero-shot classification of single-class toy images, and (``--gate-scenes``) whether one CLIP pass
classifies the ground-truth masks of segmentation scenes about as well as one pass per crop does::

    python -m deop_lite.toyclip eval [--gate-scenes 200]
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from . import checks, runtime, toyworld
from .clip import (
    TOY_CLIP_CHECKPOINT,
    TOY_CLIP_TRAIN_COMMAND,
    ClipModel,
    ToyClipConfig,
    WordTokenizer,
    build_toy_clip,
    load_clip,
    split_words,
    toy_vocabulary,
)
from .model import OnePassBaseline, evaluate_deop
from .multipass import MultiPass
from .proposals import MaskProposalNetwork, ProposalConfig
from .severance import severed_image_embedding
from .train import check_stage_args, stage_cli, train_stage


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


def stochastic_severance(step: int, layers: int, drop: float) -> dict[int, float]:
    """The blocks whose attention is the identity (GPS, α = 1) at pre-training step ``step``: each with probability
    ``drop``, drawn from the step number so that a resumed run draws the same.

    Like stochastic depth, which drops whole blocks at random, this trains every block to work with its
    tokens cut off from each other as well as mixed: the patch tokens of a web-scale CLIP carry what their
    patch shows (the premise of one-pass segmentation), and our toy CLIP, pre-trained on a few thousand
    captions, learns that only when a block sometimes has to do without mixing."""
    draws = torch.rand(layers, generator=torch.Generator().manual_seed(step))  # (layers,)
    return {index: 1.0 for index in range(layers) if draws[index] < drop}


def caption_batch(step: int, batch_size: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Batch ``step`` of the pre-training stream: (B, 3, S, S) raw images in [0, 1] and B captions."""
    world = toyworld.ToyWorldConfig(image_size=image_size)
    scenes = [toyworld.make_scene(toyworld.scene_rng("train", step * batch_size + i), world)
              for i in range(batch_size)]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    return images, [s.caption for s in scenes]


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

GATE_SEVERANCE = {"stock": {}, "GPS α=1, last layer": {-1: 1.0},
                  "GPS α=1, all layers": {i: 1.0 for i in range(ToyClipConfig.vision_layers)}}
"""One-pass settings the gate compares ({layer: α}); the chosen one is the last."""


@torch.no_grad()
def ground_truth_gate(clip, scenes: int = 200, severance: dict[str, dict[int, float]] | None = None,
                      progress: bool | None = None, interval: bool = False) -> dict[str, dict]:
    """Classify the ground-truth masks of ``scenes`` validation scenes (so that proposals play no part) with one
    pass (each ``severance`` setting, training-free) and with multi-pass crops; name -> ``evaluate_deop``'s
    result (seen, unseen, hIoU, things, per-class IoU; ``interval=True``: with 95 % bootstrap intervals). Before
    anything downstream is trained on a toy world, one pass must read things about as well as crops do
    (notebook 00)."""
    unused = MaskProposalNetwork(ProposalConfig())  # the classifiers are given the masks
    classifiers = {f"one pass, {name}": OnePassBaseline(unused, clip, severance=layers or None)
                   for name, layers in (severance or GATE_SEVERANCE).items()}
    classifiers["multi-pass crops"] = MultiPass(unused, clip)
    return {name: evaluate_deop(classifier, scenes, masks="ground_truth", progress=progress, interval=interval)
            for name, classifier in classifiers.items()}


# ----------------------------------------------------------------------------------------------------
# Pre-training

def train_toy_clip(config: ToyClipConfig, run_dir: str | Path = "runs/toy_clip",
                   out: str | Path = TOY_CLIP_CHECKPOINT) -> open_clip.CLIP:
    """Pre-train the toy CLIP (resumable from ``run_dir``) and write it to ``out`` as safetensors."""
    runtime.set_seed(config.train.seed)
    tokenizer = WordTokenizer(toy_vocabulary(), config.context_length)
    model = build_toy_clip(config, tokenizer.vocab_size)
    clip = ClipModel(model, tokenizer, "toy", toyworld.PROMPT_TEMPLATES)

    def step_loss(step: int):
        image_raw, captions = caption_batch(step, config.batch_size, config.image_size)
        tokens = tokenizer(captions)  # (B, L)
        severed = stochastic_severance(step, config.vision_layers, config.severance_drop)
        image_emb = F.normalize(severed_image_embedding(model.visual, clip.normalize(image_raw), severed), dim=-1)  # (B, D)
        text_emb = F.normalize(model.encode_text(tokens), dim=-1)  # (B, D)
        return contrastive_loss(image_emb, text_emb, caption_groups(captions), model.logit_scale), \
            {"logit_scale": model.logit_scale.exp().item()}

    def evaluate(n_per_class: int = 20) -> dict:
        result = evaluate_zero_shot(clip, n_per_class)
        return {k: result[k] for k in ("top1", "seen_top1", "unseen_top1")}

    train_stage("toy CLIP", model, step_loss, config.train, run_dir, out, evaluate,
                final_evaluation=lambda: evaluate(n_per_class=50), report=format_zero_shot,
                metadata={"config": asdict(config), "vocabulary": tokenizer.vocabulary},
                command=TOY_CLIP_TRAIN_COMMAND, settings=config)
    return model


def format_zero_shot(result: dict) -> str:
    """``top-1 0.950 (seen 0.962, unseen 0.913)`` from :func:`evaluate_zero_shot`'s result."""
    return f"top-1 {result['top1']:.3f} (seen {result['seen_top1']:.3f}, unseen {result['unseen_top1']:.3f})"


@checks.command("python -m deop_lite.toyclip")
def main(argv: Sequence[str] | None = None) -> None:
    parser, train, evaluate = stage_cli("python -m deop_lite.toyclip", __doc__, TOY_CLIP_CHECKPOINT, "runs/toy_clip")
    train.add_argument("--like-vit-b16", action="store_true", help="CLS pooling, no severance in pre-training, no "
                       "stem context (ToyClipConfig.like_vit_b16); pass --out and --run-dir to keep the shipped CLIP")
    evaluate.add_argument("--per-class", type=int, default=50, help="single-class validation images per class")
    evaluate.add_argument("--gate-scenes", type=int, default=0,
                          help="also classify the ground-truth masks of this many validation scenes, one pass against "
                               "multi-pass crops (the gate of notebook 00; 0: skip)")
    args = parser.parse_args(argv)
    check_stage_args(args)
    if args.command == "eval":
        checks.at_least(args.per_class, 1, "--per-class")
        checks.at_least(args.gate_scenes, 0, "--gate-scenes")
    if args.command == "train":
        config = ToyClipConfig.tiny() if args.tiny else ToyClipConfig.like_vit_b16() if args.like_vit_b16 else ToyClipConfig()
        if args.steps is not None:
            config.train.steps = args.steps
        train_toy_clip(config, args.run_dir, args.out)
    else:
        clip = load_clip("toy", pretrained=args.checkpoint)
        result = evaluate_zero_shot(clip, n_per_class=args.per_class)
        print(f"zero-shot classification over {len(toyworld.CLASS_NAMES)} classes: {format_zero_shot(result)}")
        if args.gate_scenes:
            print(f"ground-truth masks of {args.gate_scenes} validation scenes (mIoU, %):")
            for name, row in ground_truth_gate(clip, args.gate_scenes).items():
                things = " ".join(f"{c} {row['IoU'][c]:.0f}" for c in toyworld.THING_CLASSES)
                print(f"  {name:30s} seen {row['seen']:5.1f}  unseen {row['unseen']:5.1f}  hIoU {row['hIoU']:5.1f}  "
                      f"things {row['things']:5.1f}  ({things})")


if __name__ == "__main__":
    main()
