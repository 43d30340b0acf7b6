"""CLIP in both worlds behind one API: the toy CLIP shipped in ``data/`` and real open_clip models.

Both are open_clip ``CLIP`` modules, so later stages (patch severance, visual prompts) hook the same
``VisionTransformer`` blocks whichever world they run in.

Pixel normalisation: we feed **CLIP's own** mean/std (``OPENAI_DATASET_MEAN/STD``) to both worlds, the
statistics CLIP was trained with. The official DeOP code feeds ImageNet-normalised pixels to CLIP
(spec §1.4, most likely an oversight); ``ClipModel(..., pixel_norm="imagenet")`` reproduces that choice.

>>> clip = load_clip("toy")                                    # doctest: +SKIP
>>> dense = clip.dense_features(clip.normalize(image_raw))      # (B, D, H/8, W/8), unit norm
>>> text_emb = clip.text_embeddings(["ladybird", "grass"])          # (2, D), unit norm
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from . import checks
from .checks import InputError

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
        check_image(image_raw)
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


def check_image(image: torch.Tensor, multiple_of: int = 1) -> None:
    """Raise :class:`~deop_lite.checks.InputError` unless ``image`` is a (B, 3, H, W) float tensor with H, W
    multiples of ``multiple_of`` (the patch size); normalised images, so any value range."""
    checks.image_batch(image, "image", min_side=multiple_of, multiple_of=multiple_of, in_unit_range=False)


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
    check_image(image, visual.patch_size[0])
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
    CLIP one segment at a time (spec §4.1, §6).

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
        pixel_norm: "clip" (default) or "imagenet" (the official DeOP code's choice, spec §1.4).
    Raises:
        ClipWeightsUnavailable: weights could not be had; the message says what to do instead.
    """
    if name == "toy":
        from .toyclip import DEFAULT_CHECKPOINT, load_toy_clip
        path = DEFAULT_CHECKPOINT if pretrained in (None, "openai") else Path(pretrained)
        model, tokenizer = load_toy_clip(path)
        from .toyworld import PROMPT_TEMPLATES
        clip = ClipModel(model, tokenizer, "toy", PROMPT_TEMPLATES, pixel_norm)
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
    dense = clip.dense_features(clip.normalize(image_raw.to(clip.device)))  # (B, D, h, w)
    return patch_scores(dense, text_emb, image_raw.shape[-2:]).argmax(1).cpu()


def patch_scores(dense_feats: torch.Tensor, text_emb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of every patch feature (B, D, h, w) with every class (C, D), bilinearly upsampled
    to ``size``: (B, C, H, W)."""
    logits = torch.einsum("bdhw,cd->bchw", dense_feats, text_emb)  # (B, C, h, w)
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)  # (B, C, H, W)
