"""The decoupled one-pass model (paper Fig. 2): a proposal network and a mask classifier, from the baseline
(paper §3.1) to DeOP, one config per variant.

    masks M (B, N, H, W)          = frozen proposal network(image), upsampled, σ
    F_V   (B, D, h, w)            = frozen CLIP dense features, one pass     (+ visual prompts, + severance)
    F_T   (C, D)                  = CLIP text embeddings                     (fixed template or learned context)
    F_I   (B, N, D)               = pooling of F_V inside each mask          (mask-based pooling)
    F_C   (B, N, C [+ 1])         = softmax_c(τ · cos(F_I, [F_T; void]))    ("F_C = F_T * F_I")
    O     (B, C, H, W)            = Σ_n F_C[n] · σ(M_n), void dropped        ("O = F_C * M")

``DeOP`` = the proposal network (masks M) + a ``MaskClassifier`` (everything after it). Everything DeOP trains
lives in ``MaskClassifier.learned`` (prompts, CAL, void embedding); the proposal network and CLIP stay frozen.
This module knows no world: the recipes that train it on the toy world or a real dataset are ``deop_lite.stages``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .anchors import AnchorConfig, build_anchor_decoder, masks_on_grid
from .clip import ClipModel
from .prompts import PromptConfig, build_prompts
from .proposals import Refinement, proposal_masks
from .severance import NONE, Severance, severed_dense_features


def mask_pooling(dense_feats: torch.Tensor, mask_probs: torch.Tensor, binary: bool = False) -> torch.Tensor:
    """Segment embeddings F_I: the average of the patch features inside each mask, L2-normalised.

    Args:
        dense_feats: (B, D, h, w) CLIP patch features F_V.
        mask_probs: (B, N, H', W') mask probabilities σ(M) at any resolution.
        binary: the official code's variant (DeOP's mask_former/modeling/clip_adapter/adapter.py): masks
            thresholded at 0.5, nearest-resized to the patch grid, sum-pooled. The default weighs each patch by the
            fraction of it the (soft) mask covers (area resize), so small masks never vanish on a coarse grid.
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


def mask_vote(label: torch.Tensor, mask_probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CorrCLIP's map correction: every pixel of a mask takes the label most of the mask's pixels have (ties: the
    smaller class index, as ``torch.mode``). A pixel belongs to the mask of highest probability if that is at least
    0.5; pixels in no mask keep their label.

    Args: label (B, H, W) class indices; mask_probs (B, N, H, W) in [0, 1]. Returns (B, H, W).
    """
    best, region = mask_probs.max(1)  # (B, H, W) each
    inside = (best >= 0.5).flatten(1)  # (B, H*W)
    members = F.one_hot(region.flatten(1), mask_probs.shape[1]).float() * inside[..., None]  # (B, H*W, N)
    votes = torch.einsum("bpn,bpc->bnc", members, F.one_hot(label.flatten(1), num_classes).float())  # (B, N, C)
    voted = votes.argmax(-1).gather(1, region.flatten(1))  # (B, H*W): the winner of each pixel's mask
    return torch.where(inside, voted, label.flatten(1)).view_as(label)


def classify_masks_with(dense_feats: torch.Tensor, mask_probs: torch.Tensor, text_emb: torch.Tensor,
                        logit_scale: float, binary_pooling: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The classification stream after the CLIP pass: pool F_V in each mask, classify, assemble O.

    Args: dense_feats (B, D, h, w); mask_probs (B, N, H, W); text_emb (C, D).
    Returns: class_probs F_C (B, N, C) and scores O (B, C, H, W).
    """
    segment_emb = mask_pooling(dense_feats, mask_probs, binary_pooling)  # (B, N, D)
    class_probs = classify_segments(segment_emb, text_emb, logit_scale).softmax(-1)  # (B, N, C)
    return class_probs, semantic_map(class_probs, mask_probs)  # (B, N, C), (B, C, H, W)


@dataclass
class DeOPConfig:
    """Which components the mask classifier has: every row of Tables 3, 5 and 7 is one of these.

    ``prompts``: text and visual prompts (``deop_lite.prompts``). ``severance``: patch severance in CLIP
    (``severance.Severance``; the default severs nothing). ``anchors``: the CAL heatmap decoder
    (``deop_lite.anchors``), or mask-based pooling. ``void``: a learned void embedding, a (C+1)-th class that
    proposals covering nothing of interest can fall into (DeOP's loss needs it). ``binary_pooling``: the official
    code's mask pooling (mask-based pooling only, no CAL).
    """
    prompts: PromptConfig = field(default_factory=PromptConfig)
    severance: Severance = field(default_factory=Severance)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    void: bool = False
    binary_pooling: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> DeOPConfig:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (tuples and int keys restored)."""
        prompts = {k: tuple(v) if isinstance(v, list) else v for k, v in d["prompts"].items()}
        return cls(**{**d, "prompts": PromptConfig(**prompts), "severance": Severance.from_dict(d["severance"]),
                      "anchors": AnchorConfig(**d["anchors"])})


class LearnedParts(nn.Module):
    """Everything DeOP trains (and its checkpoints store); each part None when switched off.
    ``num_queries``: N of the proposal network (CAL has one anchor query per proposal; needed only with CAL)."""

    def __init__(self, clip: ClipModel, config: DeOPConfig, num_queries: int | None = None):
        super().__init__()
        self.text_prompts, self.visual_prompts = build_prompts(clip, config.prompts)
        self.anchor_decoder = build_anchor_decoder(config.anchors, clip.embed_dim, num_queries)
        self.void_embedding = nn.Parameter(torch.randn(clip.embed_dim) * clip.embed_dim ** -0.5) if config.void else None


class MaskClassifier(nn.Module):
    """DeOP's classification stream: a frozen CLIP seen once, with the learned parts that ``config`` switches on
    (prompts, void; CAL), under patch severance. Given any masks, proposals or ground truth, it says what each is.

    Args:
        clip: a ``ClipModel``, toy or real (its weights are never trained).
        config: a ``DeOPConfig``; the default is the plain baseline of paper §3.1.
        num_queries: N, the masks per image (CAL has one anchor query per mask; needed only with CAL).
        learned: trained parts matching ``config`` (from a checkpoint); default: freshly initialised.

    >>> from deop_lite.clip import load_clip
    >>> classifier = MaskClassifier(load_clip("toy"))                  # the baseline: mask pooling, a fixed template
    >>> images, masks = torch.rand(1, 3, 64, 64), torch.zeros(1, 2, 64, 64)
    >>> masks[:, 0, :, :32], masks[:, 1, :, 32:] = 1, 1                # the left and the right half
    >>> classifier.classify_masks(images, masks, ["sky", "ladybird"])["class_probs"].shape  # (B, N, C)
    torch.Size([1, 2, 2])
    """

    def __init__(self, clip: ClipModel, config: DeOPConfig | None = None, num_queries: int | None = None,
                 learned: LearnedParts | None = None):
        super().__init__()
        self.config = config or DeOPConfig()
        self.clip = clip
        self.learned = learned or LearnedParts(clip, self.config, num_queries)
        self.num_queries = num_queries
        self._text_cache: dict[tuple, torch.Tensor] = {}

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """F_T (C, D), unit norm, from the learned context or the fixed templates.

        With gradients enabled (training) a learned context is re-encoded at every call; otherwise the
        embeddings are cached per class list and context version (an optimiser step invalidates them)."""
        prompts = self.learned.text_prompts
        if prompts is not None and torch.is_grad_enabled():
            return prompts(class_names)
        key = (tuple(class_names), None if prompts is None else prompts.ctx._version)
        if key not in self._text_cache:
            with torch.no_grad():
                self._text_cache[key] = (self.clip.text_embeddings(class_names, self.config.prompts.templates)
                                         if prompts is None else prompts(class_names))
        return self._text_cache[key]

    def dense_features(self, image_raw: torch.Tensor, mask_probs: torch.Tensor | None) -> torch.Tensor:
        """F_V (B, D, h, w): the one CLIP pass, with this model's visual prompts and patch severance."""
        return severed_dense_features(self.clip.visual, self.clip.normalize(image_raw), self.config.severance,
                                      mask_probs, prompts=self.learned.visual_prompts)

    def forward(self, image_raw: torch.Tensor, mask_probs: torch.Tensor, class_names: Sequence[str]) -> dict:
        """Classify masks (B, N, H, W) in [0, 1] of images (B, 3, H, W) in [0, 1] (differentiable in the learned
        parts; inputs are not checked here: :meth:`classify_masks` does that).

        Returns a dict: ``label`` (B, H, W) indices into class_names, ``scores`` O (B, C, H, W),
        ``logits`` (B, N, C [+ 1 void]), ``class_probs`` F_C (B, N, C) with void dropped,
        ``mask_probs`` σ(M) (B, N, H, W), ``heatmaps`` (B, N, h, w) the pooling weights on the patch grid
        (CAL's anchor heatmaps H, or the normalised masks).
        """
        text_emb = self.text_embeddings(class_names)  # (C, D)
        dense_feats = self.dense_features(image_raw, mask_probs)  # (B, D, h, w)
        if self.learned.anchor_decoder is None:  # mask-based pooling; the "heatmap" is the mask itself
            segment_emb = mask_pooling(dense_feats, mask_probs, self.config.binary_pooling)  # (B, N, D)
            heatmaps = masks_on_grid(mask_probs, dense_feats.shape[-2:])  # (B, N, h, w)
            heatmaps = heatmaps / heatmaps.flatten(2).sum(-1).clamp(min=1e-6)[..., None, None]
        else:  # CAL: heatmap-based pooling
            segment_emb, heatmaps = self.learned.anchor_decoder(dense_feats, mask_probs)  # (B, N, D), (B, N, h, w)
        logits = classify_segments(segment_emb, text_emb, self.clip.model.logit_scale.exp(),
                                   self.learned.void_embedding)  # (B, N, C [+ 1])
        class_probs = logits.softmax(-1)[..., :len(text_emb)]  # (B, N, C): void dropped after the softmax
        scores = semantic_map(class_probs, mask_probs)  # (B, C, H, W)
        return {"label": scores.argmax(1), "scores": scores, "logits": logits, "class_probs": class_probs,
                "mask_probs": mask_probs, "heatmaps": heatmaps}

    def check_masks(self, image_raw: torch.Tensor, mask_probs: torch.Tensor) -> None:
        """What :meth:`classify_masks` checks at the door: images whose sides are multiples of CLIP's patch, masks
        (B, N, H, W) in [0, 1] at the images' size, and N = ``num_queries`` when CAL classifies."""
        checks.image_batch(image_raw, min_side=self.clip.patch_size, multiple_of=self.clip.patch_size)
        checks.mask_batch(mask_probs, image_raw)
        if self.learned.anchor_decoder is not None and mask_probs.shape[1] != self.num_queries:
            raise checks.InputError(f"this model's anchor decoder (CAL) classifies exactly {self.num_queries} masks per "
                                    f"image, got {mask_probs.shape[1]}; pad with empty masks or use a model without CAL")

    @torch.no_grad()
    def classify_masks(self, image_raw: torch.Tensor, mask_probs: torch.Tensor, class_names: Sequence[str]) -> dict:
        """Inference (inputs checked, eval mode, no gradients) for any masks: proposals or ground truth; see
        :meth:`forward`."""
        class_names = checks.class_names(class_names)
        self.check_masks(image_raw, mask_probs)
        return self.eval()(image_raw, mask_probs, class_names)


class DeOP(nn.Module):
    """The decoupled one-pass model (paper Fig. 2): a frozen proposal network, and a mask classifier that says what
    each proposal is: DeOP's :class:`MaskClassifier`, or any classifier with its interface (the multi-pass rival,
    ``multipass.MultiPass``).

    Args:
        proposals: a ``MaskProposalNetwork`` (kept frozen and in eval mode).
        classifier: a ``MaskClassifier`` (or ``multipass.MultiPass``).

    The proposals reach the classifier as the network predicts them; ``refinement`` (``proposals.Refinement``) is
    a post-process the caller passes in (the toy world's evaluation passes its own, ``toyworld.REFINEMENT``).
    """

    def __init__(self, proposals: nn.Module, classifier: nn.Module):
        super().__init__()
        self.proposals = proposals.eval().requires_grad_(False)
        self.classifier = classifier

    @property
    def clip(self) -> ClipModel:
        return self.classifier.clip

    @property
    def learned(self) -> LearnedParts:
        """What DeOP trains: the classifier's learned parts."""
        return self.classifier.learned

    def train(self, mode: bool = True) -> DeOP:
        """Train mode for the classifier only: the frozen proposal network stays in eval mode."""
        super().train(mode)
        self.proposals.eval()
        return self

    @torch.no_grad()
    def proposal_mask_probs(self, image_raw: torch.Tensor, refinement: Refinement | None = None) -> torch.Tensor:
        """σ(M) (B, N, H, W) at the image's resolution, from the frozen proposal network, post-processed by
        ``refinement`` (None: the network's own masks)."""
        return proposal_masks(self.proposals, image_raw, refinement=refinement).sigmoid()  # (B, N, H, W)

    def forward(self, image_raw: torch.Tensor, class_names: Sequence[str], refinement: Refinement | None = None) -> dict:
        """Segment ``image_raw`` (B, 3, H, W) in [0, 1] into ``class_names``: the proposals (post-processed by
        ``refinement``), then the classifier (see :meth:`MaskClassifier.forward` for what is returned).
        Differentiable in the classifier's learned parts; inputs are not checked here (:meth:`predict` does)."""
        return self.classifier(image_raw, self.proposal_mask_probs(image_raw, refinement), class_names)

    @torch.no_grad()
    def predict(self, image_raw: torch.Tensor, class_names: Sequence[str], refinement: Refinement | None = None) -> dict:
        """Inference (inputs checked, eval mode, no gradients): see :meth:`forward`. The proposal network reads
        images whose sides are multiples of 32."""
        class_names = checks.class_names(class_names)
        checks.image_batch(image_raw, min_side=32, multiple_of=32)
        return self.eval()(image_raw, class_names, refinement)

    def classify_masks(self, image_raw: torch.Tensor, mask_probs: torch.Tensor, class_names: Sequence[str]) -> dict:
        """The classifier alone, for any masks (B, N, H, W) in [0, 1]: proposals or ground truth."""
        return self.classifier.classify_masks(image_raw, mask_probs, class_names)


def one_pass_baseline(clip: ClipModel, severance: Severance = NONE, templates: Sequence[str] = ("a photo of a {}.",),
                      binary_pooling: bool = False) -> MaskClassifier:
    """The baseline classifier of paper §3.1: nothing trained, a fixed prompt template, mask pooling of the one
    CLIP pass (``severance``: optional, training-free patch severance; ``binary_pooling``: the official code's)."""
    config = DeOPConfig(PromptConfig(templates=tuple(templates)), severance, binary_pooling=binary_pooling)
    return MaskClassifier(clip, config)
