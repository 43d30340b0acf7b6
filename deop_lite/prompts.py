"""Prompt learning (paper §3.2, supplementary B and C.1; DeOP's third_party/CLIP/clip/model.py and
mask_former/modeling/clip_adapter/text_prompt.py): adapt a frozen CLIP through a few learned vectors, never
through its weights.

Text prompts (CoOp): one learned context [v_1 … v_M] shared by all classes replaces the hand-written
template; the class embedding is read at the end-of-text token::

    t_c = TextEncoder([SOS] v_1 … v_M  w(name_c)  w(.)  [EOS])          (C, D)

Visual prompts, two ways (supplementary Fig. 7):

- **adding** (DeOP's released choice): a learned tensor P^l (one row per token, sized for a reference
  grid and resized bicubically to the current one) is added to the token sequence z^l at the ViT input
  and at the start of chosen blocks: z^l <- z^l + P^l;
- **prepending** (VPT-deep): P learned tokens are inserted after CLS at chosen blocks, [x_cls, P^l, z^l],
  replacing the previous layer's prompt tokens, and dropped at the output.

Both hook the same block loop as patch severance (``deop_lite.severance``), so prompts, GPS and MPS
combine freely. CLIP's own weights never change: only the tensors defined here are trained.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .clip import ClipModel, masked_crops, resize_pos_embed

VISUAL_MODES = ("none", "add", "prepend")


@dataclass
class PromptConfig:
    """Which prompts a model learns, and how they start.

    ``text``: "fixed" (hand-written ``templates``) or "learned" (CoOp context of ``n_ctx`` vectors, started
    from the words of ``ctx_init``, or N(0, 0.02) as in the official code when ``ctx_init`` is None).
    ``visual``: "none", "add" or "prepend", at the positions ``visual_layers`` (0 is the ViT's input,
    k >= 1 the start of block k), started at zero (the frozen CLIP exactly) or "random" (the official
    code's scale).
    """
    text: str = "fixed"
    templates: tuple[str, ...] = ("a photo of a {}.",)
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    visual: str = "none"
    visual_layers: tuple[int, ...] = (0, 1, 2, 3)
    visual_tokens: int = 5  # P, prepending only
    visual_init: str = "zeros"
    reference_grid: int = 16  # added prompts are sized for this grid (toy: 128 px / 8), resized to others

    @classmethod
    def real(cls) -> PromptConfig:
        """DeOP's released settings (scripts/deop_train.sh, mask_former/config.py): 16 random context vectors;
        added prompts at the input and blocks 1-5, random init, sized for a 384 px input (24 x 24 grid)."""
        return cls(text="learned", n_ctx=16, ctx_init=None, visual="add", visual_layers=(0, 1, 2, 3, 4, 5),
                   visual_init="random", reference_grid=24)

    def __post_init__(self):
        if self.text not in ("fixed", "learned"):
            raise ValueError(f"text prompts must be 'fixed' or 'learned', got {self.text!r}")
        if self.visual not in VISUAL_MODES:
            raise ValueError(f"visual prompts must be one of {VISUAL_MODES}, got {self.visual!r}")
        if self.visual_init not in ("zeros", "random"):
            raise ValueError(f"visual_init must be 'zeros' or 'random', got {self.visual_init!r}")


# ----------------------------------------------------------------------------------------------------
# Text prompts

class TextPrompts(nn.Module):
    """CoOp's learned context for a frozen CLIP text encoder (open_clip BPE or the toy word tokenizer).

    Args:
        clip: the frozen ``ClipModel`` (not registered as a submodule: only ``ctx`` is a parameter).
        n_ctx: M, the number of context vectors.
        ctx_init: words to start from (exactly ``n_ctx`` tokens), e.g. "a photo of a"; None for N(0, 0.02).
    """

    def __init__(self, clip: ClipModel, n_ctx: int, ctx_init: str | None = None):
        super().__init__()
        self._clip = [clip]  # a list hides the frozen CLIP from state_dict() and parameters()
        embedding = clip.model.token_embedding
        if ctx_init is None:
            ctx = 0.02 * torch.randn(n_ctx, embedding.embedding_dim)
        else:
            tokens = clip.tokenizer([ctx_init])[0]  # (L,) [SOS] words [EOS] pad
            words = tokens[1:tokens.argmax()]
            if len(words) != n_ctx:
                raise ValueError(f"ctx_init {ctx_init!r} has {len(words)} tokens but n_ctx = {n_ctx}")
            ctx = embedding.weight[words.to(embedding.weight.device)].detach().clone()  # (M, W)
        self.ctx = nn.Parameter(ctx)  # (M, W)
        self._tokens: dict[tuple[str, ...], torch.Tensor] = {}

    @property
    def clip(self) -> ClipModel:
        return self._clip[0]

    def forward(self, class_names: Sequence[str]) -> torch.Tensor:
        """Class embeddings (C, D), unit norm, differentiable in ``ctx``."""
        model, n_ctx = self.clip.model, self.ctx.shape[0]
        key = tuple(class_names)
        if key not in self._tokens:
            self._tokens[key] = self.clip.tokenizer([f"{name}." for name in class_names])  # (C, L)
        tokens = self._tokens[key].to(self.ctx.device)
        length = tokens.shape[1]
        eos = tokens.argmax(-1) + n_ctx  # (C,) end-of-text position once the context is inserted
        if int(eos.max()) >= length:
            raise ValueError(f"a class name is too long for the text encoder's {length} tokens with {n_ctx} "
                             f"context vectors: shorten it or use fewer context vectors")
        words = model.token_embedding(tokens)  # (C, L, W)
        x = torch.cat([words[:, :1], self.ctx.expand(len(tokens), -1, -1), words[:, 1:length - n_ctx]], dim=1)
        x = model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)  # (C, L, W)
        x = model.ln_final(x)[torch.arange(len(tokens), device=x.device), eos]  # (C, W)
        return F.normalize(x @ model.text_projection, dim=-1)  # (C, D)


# ----------------------------------------------------------------------------------------------------
# Visual prompts

class VisualPrompts(nn.Module):
    """Learned visual prompts for a frozen open_clip ``VisionTransformer``, added or prepended.

    Args:
        visual: the ViT (its width and depth size the prompts).
        mode: "add" or "prepend".
        layers: positions; 0 is the ViT's input (added before ``ln_pre``; prepended before block 0), k >= 1
            the start of block k (before its ``ln_1``, so added prompts persist in the residual stream).
        num_tokens: P, the prepended tokens per layer.
        reference_grid: g; an added prompt has 1 + g*g rows (CLS and the grid) and is resized to the
            current grid exactly as CLIP's positional embedding is.
        init: "zeros" (the model starts as the frozen CLIP) or "random" (the official code's scale:
            N(0, W^-1/2) for added prompts, VPT's uniform bound for prepended ones).
    """

    def __init__(self, visual, mode: str = "add", layers: Sequence[int] = (0,), num_tokens: int = 5,
                 reference_grid: int = 16, init: str = "zeros"):
        super().__init__()
        if mode not in ("add", "prepend"):
            raise ValueError(f"visual prompt mode must be 'add' or 'prepend', got {mode!r}")
        n_blocks, width = len(visual.transformer.resblocks), visual.class_embedding.shape[0]
        if not layers or any(not 0 <= k < n_blocks for k in layers):
            raise ValueError(f"visual prompt layers must be in 0..{n_blocks - 1} for a {n_blocks}-block ViT, "
                             f"got {tuple(layers)}")
        self.mode, self.layers = mode, tuple(sorted(set(layers)))
        rows = 1 + reference_grid ** 2 if mode == "add" else num_tokens
        prompts = torch.zeros(len(self.layers), rows, width)  # (layers, rows, W)
        if init == "random" and mode == "add":
            prompts.normal_(0, width ** -0.5)
        elif init == "random":
            patch = visual.patch_size[0]
            bound = math.sqrt(6 / (3 * patch * patch + width))
            prompts.uniform_(-bound, bound)
        self.prompts = nn.Parameter(prompts)

    def num_prepended(self, index: int) -> int:
        """Prompt tokens after CLS in the stream entering block ``index`` (after :meth:`at_block`)."""
        return self.prompts.shape[1] if self.mode == "prepend" and self.layers[0] <= index else 0

    def _added(self, position: int, grid: tuple[int, int]) -> torch.Tensor:
        return resize_pos_embed(self.prompts[self.layers.index(position)], grid)  # (1 + h*w, W)

    def at_input(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Embedded tokens before ``ln_pre`` (B, 1 + h*w, W): add the input prompt (adding mode, position 0)."""
        return x + self._added(0, grid) if self.mode == "add" and 0 in self.layers else x

    def at_block(self, index: int, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Tokens entering block ``index`` (B, L, W) -> with this block's prompts (B, L', W)."""
        if index not in self.layers:
            return x
        if self.mode == "add":
            return x if index == 0 else x + self._added(index, grid)  # position 0 was added before ln_pre
        tokens = self.prompts[self.layers.index(index)].expand(x.shape[0], -1, -1)  # (B, P, W)
        return torch.cat([x[:, :1], tokens, x[:, 1 + self.num_prepended(index - 1):]], dim=1)  # (B, 1 + P + h*w, W)

    def strip(self, x: torch.Tensor) -> torch.Tensor:
        """Drop prepended tokens after the last block: (B, 1 + P + h*w, W) -> (B, 1 + h*w, W)."""
        extra = self.num_prepended(10 ** 6)
        return torch.cat([x[:, :1], x[:, 1 + extra:]], dim=1) if extra else x


def build_prompts(clip: ClipModel, config: PromptConfig) -> tuple[TextPrompts | None, VisualPrompts | None]:
    """The learnable prompt modules that ``config`` asks for (None where it asks for none)."""
    text = TextPrompts(clip, config.n_ctx, config.ctx_init) if config.text == "learned" else None
    visual = None if config.visual == "none" else VisualPrompts(
        clip.visual, config.visual, config.visual_layers, config.visual_tokens, config.reference_grid,
        config.visual_init)
    return text, visual


# ----------------------------------------------------------------------------------------------------
# Offline initialisation of the text context (SimBaseline's stage 1, its mask_former/proposal_classification.py)

@torch.no_grad()
def segment_crop_embeddings(clip: ClipModel, dataset, class_names: Sequence[str], per_class: int,
                            label_names: Sequence[str], max_scenes: int = 20_000) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP image embeddings of up to ``per_class`` ground-truth segments of each class, cut out of ``dataset``.

    Each segment is shown to CLIP alone (``clip.masked_crops``: box crop, outside painted CLIP's mean
    colour, resized to CLIP's input size), as is and mirrored. Images are read in order, so the pool is
    a function of the dataset.

    Args:
        dataset: items with ``image_raw`` and ``label`` (ids into ``label_names``; unseen pixels ignored): a
            world's ``training_set()``.
        class_names: the training classes (the order of the returned indices).
        per_class: segments per class; a small real dataset may hold fewer, and then all of them are used.
    Returns:
        embeddings (K, D) unit norm, class indices (K,) into ``class_names``; K = 2 x per_class x C at most.
    """
    label_names = list(label_names)
    wanted = {label_names.index(name): i for i, name in enumerate(class_names)}
    crops, targets, counts = [], [], dict.fromkeys(wanted.values(), 0)
    for index in range(min(max_scenes, len(dataset))):
        item = dataset[index]
        for label_id in item["label"].unique().tolist():
            target = wanted.get(label_id)
            if target is None or counts[target] == per_class:
                continue
            crops.append(masked_crops(item["image_raw"], (item["label"] == label_id)[None], clip.image_size))
            targets.append(target)
            counts[target] += 1
        if min(counts.values()) == per_class:
            break
    else:
        if not crops:
            raise RuntimeError(f"no segment of any of {list(class_names)} in the first {max_scenes} images")
    crops = torch.cat(crops)  # (K/2, 3, S, S)
    crops = torch.cat([crops, crops.flip(-1)])  # (K, 3, S, S): mirrored copies
    embeddings = torch.cat([clip.encode_image(clip.normalize(chunk.to(clip.device))).cpu() for chunk in crops.split(256)])
    return embeddings, torch.tensor(targets * 2)


def crop_classification_loss(text_emb: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor,
                             logit_scale: torch.Tensor | float) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of CLIP's zero-shot classification of segment crops: the offline prompt objective.

    Args:
        text_emb: (C, D) unit-norm text embeddings from the learned context (``TextPrompts(class_names)``).
        embeddings: (B, D) unit-norm CLIP embeddings of segment crops; targets: (B,) class indices.
        logit_scale: CLIP's temperature, ``clip.model.logit_scale.exp()``.
    Returns (loss, {"crop_acc": ...}).
    """
    logits = logit_scale * embeddings @ text_emb.T  # (B, C)
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return F.cross_entropy(logits, targets), {"crop_acc": accuracy}
