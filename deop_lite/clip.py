"""CLIP in both worlds behind one API: the toy CLIP shipped in ``data/`` and real open_clip models.

The toy CLIP is defined here (a word tokenizer over the toy vocabulary, a small ViT with a convolutional
stem, its checkpoint); ``stages.train_toy_clip`` pre-trains it with ``deop_lite.toyclip``'s objective. Both are
open_clip ``CLIP`` modules, so later stages (patch severance, visual prompts) hook the same ``VisionTransformer``
blocks whichever world they run in.

Pixel normalisation: we feed **CLIP's own** mean/std (``OPENAI_DATASET_MEAN/STD``) to both worlds, the
statistics CLIP was trained with. The official DeOP code feeds ImageNet-normalised pixels to CLIP
(DeOP's mask_former/zero_shot_clipfeat_upsample_vit16_query2D_maskvit.py, most likely an oversight);
``ClipModel(..., pixel_norm="imagenet")`` reproduces that choice.

>>> clip = load_clip("toy")
>>> image_raw = torch.rand(2, 3, 128, 96)                          # (B, 3, H, W) in [0, 1]
>>> clip.dense_features(clip.normalize(image_raw)).shape           # (B, D, H/8, W/8), unit norm
torch.Size([2, 128, 16, 12])
>>> clip.text_embeddings(["ladybird", "grass"]).shape               # (2, D), unit norm
torch.Size([2, 128])
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn
from torchvision.ops import Conv2dNormActivation

from . import runtime
from .checks import InputError
from .train import TrainConfig, load_weights

PIXEL_NORMS = {"clip": (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
REAL_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a bad photo of a {}.", "a close-up photo of a {}.",
                  "a cropped photo of a {}.", "a bright photo of a {}.", "a good photo of a {}.")
"""Prompt templates for real CLIP's text classifier (a few of CLIP's ImageNet templates)."""


class ClipWeightsUnavailable(InputError, RuntimeError):
    """Real CLIP weights could not be loaded (no internet, a missing or corrupt local file)."""


@dataclass
class ClipModel:
    """A frozen-by-default open_clip ``CLIP`` with its tokenizer and pixel normalisation.

    Attributes:
        model: the open_clip ``CLIP`` module (``model.visual`` is a ``VisionTransformer``).
        tokenizer: list of str -> (B, context_length) int64 token ids.
        name: "toy" or an open_clip model name such as "ViT-B-16".
        templates: the default prompt templates for ``text_embeddings``.
        pixel_norm: "clip" (default) or "imagenet" (the official DeOP code's choice).
    """
    model: open_clip.CLIP
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    name: str
    templates: tuple[str, ...]
    pixel_norm: str = "clip"

    def __post_init__(self):
        if self.pixel_norm not in PIXEL_NORMS:
            raise ValueError(f"pixel_norm must be one of {tuple(PIXEL_NORMS)}, got {self.pixel_norm!r}")

    @property
    def visual(self):
        return self.model.visual

    @property
    def patch_size(self) -> int:
        return self.visual.patch_size[0]

    @property
    def embed_dim(self) -> int:
        return self.visual.proj.shape[1]

    @property
    def image_size(self) -> int:
        """The side of the images CLIP was pre-trained on (its positional-embedding grid x patch)."""
        return self.visual.grid_size[0] * self.patch_size

    @property
    def device(self) -> torch.device:
        return self.visual.proj.device

    def normalize(self, image_raw: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, 3, H, W) normalised with ``pixel_norm``'s mean and std."""
        mean, std = (torch.tensor(v, device=image_raw.device).view(1, 3, 1, 1) for v in PIXEL_NORMS[self.pixel_norm])
        return (image_raw - mean) / std

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Global image embeddings (B, D), unit norm, of normalised images at CLIP's native size."""
        return F.normalize(self.model.encode_image(image), dim=-1)

    def dense_features(self, image: torch.Tensor) -> torch.Tensor:
        """Dense patch features F_V (B, D, H/p, W/p), unit norm: see :func:`dense_features`."""
        return dense_features(self.visual, image)

    def text_embeddings(self, class_names: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Text classifier (C, D), unit norm: each class name in every template, embeddings averaged.

        Args:
            class_names: C names, e.g. ["ladybird", "grass"].
            templates: format strings with one ``{}``; default ``self.templates``.
        """
        templates = tuple(templates or self.templates)
        if isinstance(class_names, str) or not class_names:
            raise InputError(f"class_names must be a non-empty list of names, got {class_names!r}")
        texts = [t.format(name) for name in class_names for t in templates]
        tokens = self.tokenizer(texts).to(self.device)  # (C * T, L)
        emb = F.normalize(self.model.encode_text(tokens), dim=-1)  # (C * T, D)
        emb = emb.view(len(class_names), len(templates), -1).mean(1)  # (C, D)
        return F.normalize(emb, dim=-1)


# ----------------------------------------------------------------------------------------------------
# Dense patch features: the whole image in one pass, at any grid size.

def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize CLIP's positional embedding (1 + g*g, W) to (1 + h*w, W) for a (h, w) patch grid.

    The CLS position is kept; the g x g grid part is resized bicubically (align_corners=False, no
    antialiasing, as DeOP's code does; open_clip's own ``resize_pos_embed`` antialiases by default, which
    in PyTorch also changes the cubic kernel, so the two differ by ~1e-4). At the native grid the
    embedding is returned unchanged, so nothing is interpolated.
    """
    g = int(round((pos_embed.shape[0] - 1) ** 0.5))
    if tuple(grid) == (g, g):
        return pos_embed
    width = pos_embed.shape[1]
    patch = pos_embed[1:].T.reshape(1, width, g, g)  # (1, W, g, g)
    patch = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False)  # (1, W, h, w)
    return torch.cat([pos_embed[:1], patch.flatten(2)[0].T])  # (1 + h*w, W)


def embed_image(visual, image: torch.Tensor, prompts=None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patchify, prepend CLS, add the (resized) positional embedding (and added visual prompts), ``ln_pre``.

    Args:
        visual: an open_clip ``VisionTransformer``.
        image: (B, 3, H, W) normalised pixels, H and W multiples of the patch size.
        prompts: optional ``deop_lite.prompts.VisualPrompts``; its input prompt is added before ``ln_pre``.
    Returns:
        tokens (B, 1 + h*w, W) ready for the first block, and the grid (h, w).
    """
    x = visual.conv1(image)  # (B, W, h, w)
    batch, width, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)  # (B, h*w, W)
    cls = visual.class_embedding.to(x.dtype).expand(batch, 1, width)  # (B, 1, W)
    x = torch.cat([cls, x], dim=1) + resize_pos_embed(visual.positional_embedding, (h, w)).to(x.dtype)
    if prompts is not None:
        x = prompts.at_input(x, (h, w))  # (B, 1 + h*w, W)
    x = visual.patch_dropout(x)  # identity in eval mode
    return visual.ln_pre(x), (h, w)  # (B, 1 + h*w, W)


def project_patches(visual, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Last-block tokens (B, 1 + h*w, W) -> F_V (B, D, h, w): drop CLS, ``ln_post``, ``proj``, L2-normalise."""
    x = visual.ln_post(tokens[:, 1:]) @ visual.proj  # (B, h*w, D)
    x = F.normalize(x, dim=-1)
    return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)  # (B, D, h, w)


def dense_features(visual, image: torch.Tensor) -> torch.Tensor:
    """Dense CLIP patch features F_V of a whole image in one pass.

    Args:
        visual: an open_clip ``VisionTransformer``.
        image: (B, 3, H, W) normalised pixels; any H, W that are multiples of the patch size p.
    Returns:
        (B, D, H/p, W/p) float, each patch feature of unit L2 norm.
    """
    tokens, grid = embed_image(visual, image)  # (B, 1 + h*w, W)
    for block in visual.transformer.resblocks:
        tokens = block(tokens)
    return project_patches(visual, tokens, grid)


def masked_crops(image_raw: torch.Tensor, masks: torch.Tensor, size: int,
                 fill: Sequence[float] = OPENAI_DATASET_MEAN) -> torch.Tensor:
    """One CLIP input per mask: the mask's bounding box cropped from the image, pixels outside the mask
    painted with ``fill`` (CLIP's mean colour, i.e. zero after normalisation), resized to ``size``.

    This is how multi-pass methods (SimBaseline, ZegFormer) and the offline prompt initialisation show
    CLIP one segment at a time (SimBaseline's mask_former/modeling/clip_adapter/adapter.py and utils.py).

    Args:
        image_raw: (3, H, W) in [0, 1]; masks: (K, H, W) bool, none of them empty.
    Returns:
        (K, 3, size, size) in [0, 1], resized bicubically.
    """
    if masks.ndim != 3 or masks.shape[-2:] != image_raw.shape[-2:]:
        raise ValueError(f"masks must be (K, H, W) at the image's size {tuple(image_raw.shape[-2:])}, "
                         f"got {tuple(masks.shape)}")
    fill = torch.tensor(fill, dtype=image_raw.dtype, device=image_raw.device).view(3, 1, 1)
    crops = []
    for mask in masks:
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        if len(rows) == 0:
            raise ValueError("an empty mask has no bounding box to crop; drop empty masks first")
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        crop = torch.where(mask[box], image_raw[:, box[0], box[1]], fill)  # (3, h_box, w_box)
        crops.append(F.interpolate(crop[None], size=(size, size), mode="bicubic", align_corners=False)[0])
    return torch.stack(crops).clamp(0, 1)  # (K, 3, size, size)


# ----------------------------------------------------------------------------------------------------
# The toy CLIP: a word-level tokenizer over the toy vocabulary and a small open_clip ViT

TOY_CLIP_CHECKPOINT = runtime.DATA_DIR / "toy_clip.safetensors"
TOY_CLIP_TRAIN_COMMAND = "python -m deop_lite.stages train clip"
"""The shipped toy CLIP, and the command that re-trains it (``stages.train_toy_clip``: captions, contrastive loss)."""
TOY_CLIP_LIKE_VIT_B16 = runtime.DATA_DIR / "toy_clip_like_vit_b16.safetensors"
"""A second toy CLIP, ``ToyClipConfig.like_vit_b16()`` (CLS pooling, never severed in pre-training, no stem context):
``load_clip("toy", pretrained=TOY_CLIP_LIKE_VIT_B16)``. Re-train it with ``python -m deop_lite.stages train clip
--like-vit-b16 --out data/toy_clip_like_vit_b16.safetensors --run-dir runs/toy_clip_like_vit_b16``."""


def split_words(text: str) -> list[str]:
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
        words = split_words(text)
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


@dataclass
class ToyClipConfig:
    """Architecture of the toy CLIP, and how ``toyclip.train_toy_clip`` pre-trains it."""
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
    def like_vit_b16(cls) -> ToyClipConfig:
        """The shipped toy CLIP with two of its departures from ViT-B/16 undone: the image embedding is the CLS
        token (OpenAI's pooling) and pre-training never severs a block; the stem adds no context convs. A CLIP
        that was never asked to work with severed blocks, as the paper's was not (notebook 03 compares the two)."""
        return cls(pool="tok", severance_drop=0.0, stem_context=0)

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


def load_toy_clip(path: str | Path = TOY_CLIP_CHECKPOINT) -> tuple[open_clip.CLIP, WordTokenizer, tuple[str, ...]]:
    """A toy CLIP as its pre-training stage wrote it (``stages.train_toy_clip``): the model, its tokenizer over the
    stored vocabulary, and the prompt templates of its world; clear errors for missing or corrupt files."""
    def build(metadata: dict) -> open_clip.CLIP:
        config = ToyClipConfig.from_dict(metadata["config"])
        return build_toy_clip(config, WordTokenizer(metadata["vocabulary"]).vocab_size)

    model, metadata = load_weights(path, build, TOY_CLIP_TRAIN_COMMAND)
    context_length = ToyClipConfig.from_dict(metadata["config"]).context_length
    return model, WordTokenizer(metadata["vocabulary"], context_length), tuple(metadata["templates"])


# ----------------------------------------------------------------------------------------------------
# Loading

def load_clip(name: str = "toy", pretrained: str | Path | None = "openai", device: str | torch.device = "cpu",
              quick_gelu: bool | None = None, pixel_norm: str = "clip") -> ClipModel:
    """Load a frozen CLIP, toy or real, in eval mode.

    Args:
        name: "toy" for the toy CLIP shipped in ``data/``, or an open_clip architecture ("ViT-B-16",
            "ViT-L-14-336", ...).
        pretrained: real CLIP only: "openai" (downloaded or from open_clip's cache), a local checkpoint
            path, or None for **random** weights (tests and speed benchmarks only; asked for explicitly).
            For the toy CLIP, a path to another toy checkpoint, or "openai"/None for the shipped one.
        quick_gelu: real CLIP only; default True, as OpenAI's weights were trained with QuickGELU (the
            "-quickgelu" variant of open_clip's config). Pass False for LAION/DataComp weights.
        pixel_norm: "clip" (default) or "imagenet" (the official DeOP code's choice, its
            mask_former/zero_shot_clipfeat_upsample_vit16_query2D_maskvit.py).
    Raises:
        ClipWeightsUnavailable: weights could not be had; the message says what to do instead.
    """
    if name == "toy":
        path = TOY_CLIP_CHECKPOINT if pretrained in (None, "openai") else Path(pretrained)
        model, tokenizer, templates = load_toy_clip(path)
        clip = ClipModel(model, tokenizer, "toy", templates, pixel_norm)
    else:
        model = _create_real_clip(name, pretrained, quick_gelu)
        clip = ClipModel(model, open_clip.get_tokenizer(name), name, REAL_TEMPLATES, pixel_norm)
    clip.model.to(device).eval().requires_grad_(False)
    return clip


def _create_real_clip(name: str, pretrained, quick_gelu: bool | None) -> open_clip.CLIP:
    if name not in open_clip.list_models():
        raise InputError(f"unknown CLIP architecture {name!r}; use 'toy' or an open_clip model name such as "
                         f"'ViT-B-16' or 'ViT-L-14-336'")
    quick_gelu = True if quick_gelu is None else quick_gelu
    if pretrained is None:  # asked for explicitly: open_clip's "initialized randomly" warning would only be noise
        logging.disable(logging.WARNING)
        try:
            return open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu)
        finally:
            logging.disable(logging.NOTSET)
    advice = (f"Either download the weights where there is internet (e.g. open_clip.create_model('{name}', "
              f"pretrained='openai') fills open_clip's cache) and pass the file with pretrained='/path/to/"
              f"weights.bin' (CLI: --weights PATH), or use the offline toy CLIP: load_clip('toy') (CLI: --clip toy).")
    if str(pretrained) != "openai":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ClipWeightsUnavailable(f"no CLIP checkpoint file at {path} for {name}. {advice}")
        pretrained = str(path)
    try:
        return open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except Exception as error:  # open_clip raises RuntimeError offline, and torch/pickle errors on bad files
        raise ClipWeightsUnavailable(
            f"could not load {name} weights {pretrained!r}: {type(error).__name__}: {str(error).splitlines()[0][:300]} "
            f"Random weights are never substituted silently. {advice}") from error


@torch.no_grad()
def naive_dense_labels(clip: ClipModel, image_raw: torch.Tensor, class_names: Sequence[str],
                       templates: Sequence[str] | None = None) -> torch.Tensor:
    """Label every pixel with the class whose text embedding is closest to its patch's CLIP feature.

    This per-patch labelling is what CLIP gives with no proposals and no training; it is poor (the
    series starts from it). Args: ``image_raw`` (B, 3, H, W) in [0, 1]. Returns (B, H, W) int64 indices
    into ``class_names``.
    """
    text_emb = clip.text_embeddings(class_names, templates)  # (C, D)
    dense_feats = clip.dense_features(clip.normalize(image_raw.to(clip.device)))  # (B, D, h, w)
    return patch_scores(dense_feats, text_emb, image_raw.shape[-2:]).argmax(1).cpu()


def patch_scores(dense_feats: torch.Tensor, text_emb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of every patch feature (B, D, h, w) with every class (C, D), bilinearly upsampled
    to ``size``: (B, C, H, W)."""
    logits = torch.einsum("bdhw,cd->bchw", dense_feats, text_emb)  # (B, C, h, w)
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)  # (B, C, H, W)
