"""Multi-pass segment classification, the way SimBaseline does it: one CLIP pass per proposal.

For each image and each valid proposal n (binary mask σ(M_n) > 0.5 not empty; SimBaseline's
mask_former/zero_shot_mask_former_model.py in MendelXu/zsseg.baseline)::

    crop_n   = box of the mask, pixels outside it painted CLIP's mean colour, resized to CLIP's input size
    e_n      = CLIP image embedding of crop_n                      (all N' crops in one batched call)
    p_clip   = softmax_c(τ · cos(e_n, t_c))                         (N', C)
    O        = Σ_n p[n] · σ(M_n)                                    (C, H, W)

With a proposal network that also classifies (SimBaseline's zero-shot MaskFormer), p mixes both streams
geometrically with weight λ, reversed for unseen classes (:func:`ensemble_scores`). Our class-agnostic
proposal network gives no class scores, so only CLIP classifies and invalid proposals are dropped, as
SimBaseline does when λ <= 0. The proposals are the same as DeOP's: the two differ only in how segments
are classified, which is what the speed comparison needs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import checks
from .clip import ClipModel, masked_crops
from .proposals import TOY_REFINEMENT, Refinement, proposal_masks


def ensemble_scores(proposal_probs: torch.Tensor, clip_probs: torch.Tensor, seen: torch.Tensor,
                    weight: float) -> torch.Tensor:
    """SimBaseline's geometric ensemble: p_mf^λ · p_clip^(1-λ) for seen classes, p_mf^(1-λ) · p_clip^λ for
    unseen ones. proposal_probs, clip_probs: (N, C); seen: (C,) bool; weight λ (0.8 COCO, 0.7 VOC)."""
    exponent = torch.where(seen, torch.tensor(weight), torch.tensor(1 - weight)).to(clip_probs)  # (C,)
    return proposal_probs ** exponent * clip_probs ** (1 - exponent)


class MultiPass(nn.Module):
    """Proposals + one CLIP pass per proposal crop (SimBaseline's classifier, CLIP only).

    Args:
        proposals: a ``MaskProposalNetwork`` (frozen), the same one DeOP uses.
        clip: a ``ClipModel``; crops are resized to its input size (``clip.image_size``).
        templates: prompt templates of the text classifier.
        mask_threshold: proposals are binarised at this probability (0.5).
    """

    def __init__(self, proposals: nn.Module, clip: ClipModel, templates: Sequence[str] = ("a photo of a {}.",),
                 mask_threshold: float = 0.5):
        super().__init__()
        self.proposals, self.clip = proposals.eval().requires_grad_(False), clip
        self.templates, self.mask_threshold = tuple(templates), mask_threshold
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        key = tuple(class_names)
        if key not in self._text:
            self._text[key] = self.clip.text_embeddings(class_names, self.templates)  # (C, D)
        return self._text[key]

    def crops(self, image_raw: torch.Tensor, mask_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CLIP inputs of one image: (N', 3, S, S) crops of the valid proposals and their indices (N',)."""
        binary = mask_probs > self.mask_threshold  # (N, H, W)
        valid = binary.flatten(1).any(1).nonzero()[:, 0]  # (N',)
        return masked_crops(image_raw, binary[valid], self.clip.image_size), valid

    @torch.no_grad()
    def classify_masks(self, image_raw: torch.Tensor, mask_probs: torch.Tensor, class_names: Sequence[str]) -> dict:
        """Classify any masks (B, N, H, W) of images (B, 3, H, W) in [0, 1], one CLIP pass per valid mask.

        Returns ``label`` (B, H, W), ``scores`` O (B, C, H, W), ``class_probs`` (B, N, C) (zero rows for
        invalid proposals), ``mask_probs``, and ``num_crops`` (B,) N' per image.
        """
        class_names = checks.class_names(class_names)
        checks.image_batch(image_raw)
        checks.mask_batch(mask_probs, image_raw)
        text_emb = self.text_embeddings(class_names)  # (C, D)
        scale = self.clip.model.logit_scale.exp()
        class_probs = torch.zeros(*mask_probs.shape[:2], len(class_names), device=mask_probs.device)  # (B, N, C)
        num_crops = []
        for b in range(len(image_raw)):
            crops, valid = self.crops(image_raw[b], mask_probs[b])  # (N', 3, S, S), (N',)
            num_crops.append(len(valid))
            if len(valid):
                embeddings = self.clip.encode_image(self.clip.normalize(crops))  # (N', D): one batched CLIP call
                class_probs[b, valid] = (scale * embeddings @ text_emb.T).softmax(-1)  # (N', C)
        scores = torch.einsum("bnc,bnhw->bchw", class_probs, mask_probs)  # (B, C, H, W)
        return {"label": scores.argmax(1), "scores": scores, "class_probs": class_probs, "mask_probs": mask_probs,
                "num_crops": torch.tensor(num_crops)}

    @torch.no_grad()
    def forward(self, image_raw: torch.Tensor, class_names: Sequence[str],
                refinement: Refinement | None = TOY_REFINEMENT) -> dict:
        """Segment images (B, 3, H, W) in [0, 1]: the proposal network (its masks post-processed by ``refinement``,
        as in ``DeOP.forward``), then :meth:`classify_masks`."""
        checks.image_batch(image_raw, min_side=32, multiple_of=32)
        mask_probs = proposal_masks(self.proposals, image_raw, refinement=refinement).sigmoid()  # (B, N, H, W)
        return self.classify_masks(image_raw, mask_probs, class_names)

    predict = forward
