"""The decoupled one-pass model: proposals + one CLIP pass + segment classification (paper §3.1).

    masks M (B, N, H/4, W/4)      = proposal network(image)
    F_V   (B, D, h, w)            = CLIP dense features (one pass)
    F_I   (B, N, D)               = pooling of F_V inside each mask            (mask-based pooling)
    F_C   (B, N, C)               = softmax_c(τ · cos(F_I, F_T))               ("F_C = F_T * F_I")
    O     (B, C, H, W)            = Σ_n F_C[n] · σ(M_n)                        ("O = F_C * M")

Later notebooks add learned prompts, patch severance and classification anchors to the same pipeline.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .clip import ClipModel
from .severance import severed_dense_features


def mask_pooling(dense_feats: torch.Tensor, mask_probs: torch.Tensor, binary: bool = False) -> torch.Tensor:
    """Segment embeddings F_I: the average of the patch features inside each mask, L2-normalised.

    Args:
        dense_feats: (B, D, h, w) CLIP patch features F_V.
        mask_probs: (B, N, H', W') mask probabilities σ(M) at any resolution.
        binary: the official code's variant (spec §2.3): masks thresholded at 0.5, nearest-resized to the
            patch grid, sum-pooled. The default weighs each patch by the fraction of it the (soft) mask
            covers (area resize), so small masks never vanish on a coarse grid.
    Returns:
        (B, N, D) unit-norm segment embeddings (zero vectors for masks that cover no patch).
    """
    grid = dense_feats.shape[-2:]
    if binary:
        weights = F.interpolate((mask_probs > 0.5).float(), size=grid, mode="nearest")  # (B, N, h, w)
    else:
        weights = F.interpolate(mask_probs, size=grid, mode="area")  # (B, N, h, w)
    pooled = torch.einsum("bnhw,bdhw->bnd", weights, dense_feats)  # (B, N, D)
    return F.normalize(pooled, dim=-1)


def classify_segments(segment_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float,
                      void_emb: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine logits of each segment against each class (and the void class, last, when given).

    Args:
        segment_emb: (B, N, D) unit norm; text_emb: (C, D) unit norm; void_emb: optional (D,).
    Returns:
        (B, N, C) or (B, N, C + 1) logits, scaled by CLIP's temperature ``logit_scale``.
    """
    classifier = text_emb if void_emb is None else torch.cat([text_emb, F.normalize(void_emb, dim=-1)[None]])
    return logit_scale * segment_emb @ classifier.T


def semantic_map(class_probs: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
    """O = Σ_n F_C[n] · σ(M_n): (B, N, C) class probabilities (void dropped) x (B, N, H, W) -> (B, C, H, W)."""
    return torch.einsum("bnc,bnhw->bchw", class_probs, mask_probs)


def classify_masks_with(dense_feats: torch.Tensor, mask_probs: torch.Tensor, text_emb: torch.Tensor,
                        logit_scale: float, binary_pooling: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The classification stream after the CLIP pass: pool F_V in each mask, classify, assemble O.

    Args: dense_feats (B, D, h, w); mask_probs (B, N, H, W); text_emb (C, D).
    Returns: class_probs F_C (B, N, C) and scores O (B, C, H, W).
    """
    segment_emb = mask_pooling(dense_feats, mask_probs, binary_pooling)  # (B, N, D)
    class_probs = classify_segments(segment_emb, text_emb, logit_scale).softmax(-1)  # (B, N, C)
    return class_probs, semantic_map(class_probs, mask_probs)  # (B, N, C), (B, C, H, W)


class OnePassBaseline(nn.Module):
    """The baseline of paper §3.1: a frozen proposal network and a frozen CLIP, nothing else trained here.

    Args:
        proposals: a ``MaskProposalNetwork``.
        clip: a ``ClipModel`` (toy or real).
        templates: prompt templates for the fixed text classifier (default "a photo of a {}.").
        binary_pooling: use the official code's binary mask pooling.
        severance: optional patch severance in CLIP, {layer index: α} (see ``deop_lite.severance``); None
            keeps CLIP unmodified.
        severance_mode: "gps", "mps" or "gps_mask" (the last two use the masks being classified).
    """

    def __init__(self, proposals: nn.Module, clip: ClipModel, templates: Sequence[str] = ("a photo of a {}.",),
                 binary_pooling: bool = False, severance: dict[int, float] | None = None, severance_mode: str = "gps"):
        super().__init__()
        self.proposals, self.clip = proposals.eval(), clip
        self.templates, self.binary_pooling = tuple(templates), binary_pooling
        self.severance, self.severance_mode = severance, severance_mode
        self._text_cache: dict = {}

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """(C, D) text classifier, cached per class list."""
        key = tuple(class_names)
        if key not in self._text_cache:
            self._text_cache[key] = self.clip.text_embeddings(class_names, self.templates)
        return self._text_cache[key]

    @torch.no_grad()
    def forward(self, image_raw: torch.Tensor, class_names: Sequence[str]) -> dict:
        """Segment ``image_raw`` (B, 3, H, W) in [0, 1] into ``class_names``.

        Returns a dict: ``label`` (B, H, W) int64 indices into class_names, ``scores`` (B, C, H, W) the
        semantic map O, ``class_probs`` (B, N, C) F_C, ``mask_probs`` (B, N, H, W) σ(M).
        """
        masks = self.proposals(self.proposals.normalize(image_raw))["masks"]  # (B, N, H/4, W/4)
        mask_probs = F.interpolate(masks, size=image_raw.shape[-2:], mode="bilinear", align_corners=False).sigmoid()
        return self.classify_masks(image_raw, mask_probs, class_names)

    @torch.no_grad()
    def classify_masks(self, image_raw: torch.Tensor, mask_probs: torch.Tensor, class_names: Sequence[str]) -> dict:
        """The classification stream alone, for any masks (B, N, H, W) in [0, 1]: proposals or ground truth."""
        image = self.clip.normalize(image_raw)
        if self.severance is None:
            dense = self.clip.dense_features(image)  # (B, D, h, w): the one pass
        else:
            dense = severed_dense_features(self.clip.visual, image, self.severance, self.severance_mode, mask_probs)
        class_probs, scores = classify_masks_with(dense, mask_probs, self.text_embeddings(class_names),
                                                  self.clip.model.logit_scale.exp().item(), self.binary_pooling)
        return {"label": scores.argmax(1), "scores": scores, "class_probs": class_probs, "mask_probs": mask_probs}
