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

import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn
from torchvision.ops import Conv2dNormActivation

from . import checks, runtime, toyworld
from .checks import InputError
from .severance import severed_image_embedding
from .train import TrainConfig, check_stage_args, fit, load_weights, save_weights, ship_log, stage_cli

DEFAULT_CHECKPOINT = runtime.DATA_DIR / "toy_clip.safetensors"
TRAIN_COMMAND = "python -m deop_lite.toyclip train"


# ----------------------------------------------------------------------------------------------------
# A word-level tokenizer over the toy vocabulary

def toy_vocabulary() -> list[str]:
    """Every word and punctuation mark the toy world's captions and prompts can use, sorted."""
    texts = [*toyworld._SCENE_TEMPLATES, *toyworld._STUFF_TEMPLATES, *toyworld._OBJECT_TEMPLATES,
             *toyworld.PROMPT_TEMPLATES, *toyworld.CLASS_NAMES, *toyworld.COLOURS, "and , an the"]
    words = set()
    for text in texts:
        words.update(_split(re.sub(r"\{\w*\}", " ", text)))
    return sorted(words)


def _split(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[.,]", text.lower())


class WordTokenizer:
    """Words -> ids, padded to ``context_length``, like open_clip's tokenizers.

    Ids: 0 is padding, words are 1..V, then start-of-text and end-of-text. End-of-text has the largest
    id, so open_clip's ``argmax`` text pooling finds it, exactly as with OpenAI's BPE tokenizer.
    """

    def __init__(self, vocabulary: Sequence[str], context_length: int = 32):
        self.vocabulary = list(vocabulary)
        self.context_length = context_length
        self.word_to_id = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.sot_id = len(self.vocabulary) + 1
        self.eot_id = len(self.vocabulary) + 2
        self.vocab_size = len(self.vocabulary) + 3

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without start/end tokens; unknown words raise ``ValueError``."""
        words = _split(text)
        unknown = [w for w in words if w not in self.word_to_id]
        if unknown:
            raise InputError(f"word(s) {unknown} are not in the toy CLIP's vocabulary; it knows: "
                             f"{' '.join(self.vocabulary)}")
        return [self.word_to_id[w] for w in words]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(B, context_length) int64: [SOT] words [EOT] 0 0 ..."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                raise InputError(f"{text!r} has {len(ids)} tokens, more than the context length "
                                 f"{self.context_length}")
            tokens[row, :len(ids)] = torch.tensor(ids)
        return tokens

    def decode(self, tokens: torch.Tensor) -> str:
        """(L,) ids -> text, special tokens dropped."""
        return " ".join(self.vocabulary[i - 1] for i in tokens.tolist() if 0 < i <= len(self.vocabulary))


# ----------------------------------------------------------------------------------------------------
# Model and training configuration

@dataclass
class ToyClipConfig:
    """Architecture of the toy CLIP and how it is pre-trained."""
    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8  # 64 x 64 images -> an 8 x 8 patch grid
    vision_width: int = 128
    vision_layers: int = 4
    conv_stem: bool = True  # patch embedding by a small conv stack instead of one linear 8x8 conv
    pool: str = "avg"  # image embedding: "avg", the mean of the patch tokens, or "tok", the CLS token (OpenAI's)
    severance_drop: float = 0.5  # pre-training: each block's attention is the identity with this probability per step
    stem_context: int = 2  # 3x3 convs at the token resolution after the stem: each lets a patch token see 2 patches more
    text_width: int = 128
    text_layers: int = 2
    context_length: int = 32
    batch_size: int = 96
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=2000, lr=1e-3, weight_decay=0.1, warmup_steps=100, log_every=25, checkpoint_every=250))

    @classmethod
    def tiny(cls) -> ToyClipConfig:
        """A few steps of a smaller model: for tests and CI smoke runs, not for use."""
        return cls(vision_layers=2, text_layers=1, batch_size=16,
                   train=TrainConfig(steps=4, warmup_steps=1, log_every=2, checkpoint_every=2))

    @classmethod
    def from_dict(cls, d: dict) -> ToyClipConfig:
        d = {"pool": "tok", "severance_drop": 0.0, "stem_context": 0, **d}  # what checkpoints written before these fields did
        d["train"] = TrainConfig(**d.get("train", {}))
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class ConvStem(nn.Sequential):
    """Patch embedding as log2(p) stride-2 3x3 conv-BN-ReLU layers and a 1x1 projection: (B, 3, H, W) ->
    (B, width, H/p, W/p), a drop-in for the ViT's linear ``conv1``.

    Early convolutions help ViTs train (Xiao et al., 2021). Measured here: with the linear patch embedding
    the toy ViT stayed near chance on the 8 shapes (17 % after 150 supervised steps, chance 12.5 %); with
    this stem it reached 29 % and kept climbing. Patch tokens stay local: each sees its own 8 x 8 patch and
    a few pixels of its neighbours'.
    """

    def __init__(self, width: int, patch_size: int, context: int = 0):
        channels = [3] + [width // 2 ** i for i in range(int(math.log2(patch_size)) - 1, -1, -1)]
        super().__init__(*[Conv2dNormActivation(c_in, c_out, stride=2) for c_in, c_out in zip(channels, channels[1:])],
                         *[Conv2dNormActivation(width, width) for _ in range(context)],  # each: 1 patch more each side
                         nn.Conv2d(width, width, 1))


def build_toy_clip(config: ToyClipConfig, vocab_size: int) -> open_clip.CLIP:
    """A randomly initialised open_clip ``CLIP`` (QuickGELU, like OpenAI's ViT-B/16) of this config."""
    vision = CLIPVisionCfg(layers=config.vision_layers, width=config.vision_width, head_width=64,
                           patch_size=config.patch_size, image_size=config.image_size, pool_type=config.pool)
    text = CLIPTextCfg(context_length=config.context_length, vocab_size=vocab_size, width=config.text_width,
                       heads=config.text_width // 64, layers=config.text_layers)
    model = open_clip.CLIP(config.embed_dim, vision, text, quick_gelu=True)
    if config.conv_stem:
        model.visual.conv1 = ConvStem(config.vision_width, config.patch_size, config.stem_context)
    return model


def caption_groups(captions: Sequence[str]) -> torch.Tensor:
    """(B,) int64 group ids: captions that say the same thing (the same class and colour words, in any
    wording) share a group. "a red star on grass." and "grass with a red star." are one group."""
    content = set(toyworld.CLASS_NAMES) | set(toyworld.COLOURS)
    keys = [tuple(sorted(w for w in _split(c) if w in content)) for c in captions]
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
                      progress: bool | None = None) -> dict[str, dict]:
    """Classify the ground-truth masks of ``scenes`` validation scenes (so that proposals play no part) with one
    pass (each ``severance`` setting, training-free) and with multi-pass crops; name -> ``evaluate_deop``'s
    result (seen, unseen, hIoU, things, per-class IoU). Before anything downstream is trained on a toy world,
    one pass must read things about as well as crops do (notebook 00)."""
    from .model import OnePassBaseline, evaluate_deop
    from .multipass import MultiPass
    from .proposals import MaskProposalNetwork, ProposalConfig
    unused = MaskProposalNetwork(ProposalConfig())  # the classifiers are given the masks
    classifiers = {f"one pass, {name}": OnePassBaseline(unused, clip, severance=layers or None)
                   for name, layers in (severance or GATE_SEVERANCE).items()}
    classifiers["multi-pass crops"] = MultiPass(unused, clip)
    return {name: evaluate_deop(classifier, scenes, masks="ground_truth", progress=progress)
            for name, classifier in classifiers.items()}


# ----------------------------------------------------------------------------------------------------
# Train, save, load

def train_toy_clip(config: ToyClipConfig, run_dir: str | Path = "runs/toy_clip",
                   out: str | Path = DEFAULT_CHECKPOINT) -> open_clip.CLIP:
    """Pre-train the toy CLIP (resumable from ``run_dir``) and write it to ``out`` as safetensors."""
    from .clip import ClipModel  # local import: clip.py imports this module lazily too
    runtime.set_seed(config.train.seed)
    tokenizer = WordTokenizer(toy_vocabulary(), config.context_length)
    model = build_toy_clip(config, tokenizer.vocab_size)
    clip = ClipModel(model, tokenizer, "toy", toyworld.PROMPT_TEMPLATES)
    print(f"toy CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters\n{config}")

    def step_loss(step: int):
        image_raw, captions = caption_batch(step, config.batch_size, config.image_size)
        tokens = tokenizer(captions)  # (B, L)
        severed = stochastic_severance(step, config.vision_layers, config.severance_drop)
        image_emb = F.normalize(severed_image_embedding(model.visual, clip.normalize(image_raw), severed), dim=-1)  # (B, D)
        text_emb = F.normalize(model.encode_text(tokens), dim=-1)  # (B, D)
        return contrastive_loss(image_emb, text_emb, caption_groups(captions), model.logit_scale), \
            {"logit_scale": model.logit_scale.exp().item()}

    def evaluate():
        result = evaluate_zero_shot(clip, n_per_class=20)
        return {k: result[k] for k in ("top1", "seen_top1", "unseen_top1")}

    tic = time.perf_counter()
    history = fit(model, step_loss, config.train, run_dir, evaluate)
    final = evaluate_zero_shot(clip, n_per_class=50)
    summary = {"top1": final["top1"], "seen_top1": final["seen_top1"], "unseen_top1": final["unseen_top1"],
               "train_minutes_this_session": (time.perf_counter() - tic) / 60,
               "s_per_step": history[-1]["s_per_step"], "steps": config.train.steps,
               "command": TRAIN_COMMAND, "torch": torch.__version__}
    save_toy_clip(model, tokenizer, config, out, summary)
    ship_log(run_dir, out)
    print(f"saved {out}: zero-shot top-1 {final['top1']:.3f} (seen {final['seen_top1']:.3f}, "
          f"unseen {final['unseen_top1']:.3f})")
    return model


def save_toy_clip(model: open_clip.CLIP, tokenizer: WordTokenizer, config: ToyClipConfig, path: str | Path,
                  summary: dict | None = None) -> None:
    """Write weights + config + vocabulary (+ training summary) to one safetensors file."""
    save_weights(model, path, {"config": asdict(config), "vocabulary": tokenizer.vocabulary, "summary": summary or {}})


def load_toy_clip(path: str | Path = DEFAULT_CHECKPOINT) -> tuple[open_clip.CLIP, WordTokenizer]:
    """Load a toy CLIP written by :func:`save_toy_clip`, with clear errors for missing or corrupt files."""
    def build(metadata: dict) -> open_clip.CLIP:
        config = ToyClipConfig.from_dict(metadata["config"])
        return build_toy_clip(config, WordTokenizer(metadata["vocabulary"]).vocab_size)

    model, metadata = load_weights(path, build, TRAIN_COMMAND)
    context_length = ToyClipConfig.from_dict(metadata["config"]).context_length
    return model, WordTokenizer(metadata["vocabulary"], context_length)


@checks.command("python -m deop_lite.toyclip")
def main(argv: Sequence[str] | None = None) -> None:
    parser, _, evaluate = stage_cli("python -m deop_lite.toyclip", __doc__, DEFAULT_CHECKPOINT, "runs/toy_clip")
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
        config = ToyClipConfig.tiny() if args.tiny else ToyClipConfig()
        if args.steps is not None:
            config.train.steps = args.steps
        train_toy_clip(config, args.run_dir, args.out)
    else:
        from .clip import load_clip
        clip = load_clip("toy", pretrained=args.checkpoint)
        result = evaluate_zero_shot(clip, n_per_class=args.per_class)
        print(f"zero-shot top-1 over {len(toyworld.CLASS_NAMES)} classes: {result['top1']:.3f} "
              f"(seen {result['seen_top1']:.3f}, unseen {result['unseen_top1']:.3f})")
        if args.gate_scenes:
            print(f"ground-truth masks of {args.gate_scenes} validation scenes (mIoU, %):")
            for name, row in ground_truth_gate(clip, args.gate_scenes).items():
                things = " ".join(f"{c} {row['IoU'][c]:.0f}" for c in toyworld.THING_CLASSES)
                print(f"  {name:30s} seen {row['seen']:5.1f}  unseen {row['unseen']:5.1f}  hIoU {row['hIoU']:5.1f}  "
                      f"things {row['things']:5.1f}  ({things})")


if __name__ == "__main__":
    main()
