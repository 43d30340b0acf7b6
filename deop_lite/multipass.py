"""Multi-pass segment classification, the way SimBaseline does it: one CLIP pass per proposal.

For each image and each valid proposal n (binary mask σ(M_n) > 0.5 not empty; SimBaseline's
mask_former/zero_shot_mask_former_model.py in MendelXu/zsseg.baseline)::

    crop_n   = box of the mask, pixels outside it painted CLIP's mean colour, resized to CLIP's input size
    e_n      = CLIP image embedding of crop_n                      (all N' crops in one batched call)
    p_clip   = softmax_c(τ · cos(e_n, t_c))                         (N', C)
    O        = Σ_n p[n] · σ(M_n)                                    (C, H, W)

With a proposal network that also classifies (SimBaseline's zero-shot MaskFormer), p mixes both streams
geometrically with weight λ, reversed for unseen classes. Our class-agnostic proposal network gives no class
scores, so only CLIP classifies and invalid proposals are dropped, as SimBaseline does when λ <= 0. The
proposals are the same as DeOP's (``model.DeOP(proposals, MultiPass(clip))``): the two differ only in how
segments are classified, which is what the speed comparison needs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import checks
from .clip import ClipModel, masked_crops
from .model import semantic_map


class MultiPass(nn.Module):
    """SimBaseline's classifier, CLIP only: one CLIP pass per mask crop. A mask classifier with
    ``model.MaskClassifier``'s interface, so that ``model.DeOP(proposals, MultiPass(clip))`` is the multi-pass
    rival on the same proposals.

    Args:
        clip: a ``ClipModel``; crops are resized to its input size (``clip.image_size``).
        templates: prompt templates of the text classifier.
    """

    def __init__(self, clip: ClipModel, templates: Sequence[str] = ("a photo of a {}.",)):
        super().__init__()
        self.clip, self.templates = clip, tuple(templates)
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """The text classifier (C, D), unit norm, cached per class list."""
        key = tuple(class_names)
        if key not in self._text:
            self._text[key] = self.clip.text_embeddings(class_names, self.templates)  # (C, D)
        return self._text[key]

    def crops(self, image_raw: torch.Tensor, mask_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CLIP inputs of one image: (N', 3, S, S) crops of the valid masks (σ(M_n) > 0.5 somewhere) and their
        indices (N',)."""
        binary = mask_probs > 0.5  # (N, H, W)
        valid = binary.flatten(1).any(1).nonzero()[:, 0]  # (N',)
        return masked_crops(image_raw, binary[valid], self.clip.image_size), valid

    @torch.no_grad()
    def forward(self, image_raw: torch.Tensor, mask_probs: torch.Tensor, class_names: Sequence[str]) -> dict:
        """Classify masks (B, N, H, W) of images (B, 3, H, W) in [0, 1], one CLIP pass per valid mask.

        Returns ``label`` (B, H, W), ``scores`` O (B, C, H, W), ``class_probs`` (B, N, C) (zero rows for
        invalid masks), ``mask_probs``, and ``num_crops`` (B,) N' per image.
        """
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
        scores = semantic_map(class_probs, mask_probs)  # (B, C, H, W)
        return {"label": scores.argmax(1), "scores": scores, "class_probs": class_probs, "mask_probs": mask_probs,
                "num_crops": torch.tensor(num_crops)}

    def classify_masks(self, image_raw: torch.Tensor, mask_probs: torch.Tensor, class_names: Sequence[str]) -> dict:
        """Inference with the inputs checked: see :meth:`forward`."""
        class_names = checks.class_names(class_names)
        checks.image_batch(image_raw)
        checks.mask_batch(mask_probs, image_raw)
        return self(image_raw, mask_probs, class_names)
