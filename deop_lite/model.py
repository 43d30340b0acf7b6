"""The decoupled one-pass model, from the baseline (paper §3.1) to DeOP, one config per variant.

    masks M (B, N, H, W)          = frozen proposal network(image), upsampled, σ
    F_V   (B, D, h, w)            = frozen CLIP dense features, one pass     (+ visual prompts, + severance)
    F_T   (C, D)                  = CLIP text embeddings                     (fixed template or learned context)
    F_I   (B, N, D)               = pooling of F_V inside each mask          (mask-based pooling)
    F_C   (B, N, C [+ 1])         = softmax_c(τ · cos(F_I, [F_T; void]))    ("F_C = F_T * F_I")
    O     (B, C, H, W)            = Σ_n F_C[n] · σ(M_n), void dropped        ("O = F_C * M")

Everything DeOP trains lives in ``DeOP.learned`` (prompts, void embedding); the proposal network and CLIP
stay frozen. Each row of the paper's ablation tables is a named variant in ``VARIANTS``, trained with
``python -m deop_lite.model train --variant NAME`` and shipped as ``data/deop/NAME.safetensors``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checks, runtime, toyworld
from .anchors import AnchorConfig, build_anchor_decoder, masks_on_grid
from .clip import ClipModel, ToyClipConfig, load_clip
from .losses import deop_segmentation_loss
from .metrics import format_table, seen_label_map
from .prompts import PromptConfig, build_prompts, crop_classification_loss, segment_crop_embeddings
from .proposals import TOY_REFINEMENT, Refinement, add_evaluation_arguments, evaluation_arguments, proposal_masks
from .severance import MASK_MODES, MODES, severed_dense_features
from .train import TrainConfig, check_stage_args, load_weights, stage_cli, train_stage


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
    """Which components a one-pass model has: every row of Tables 3, 5 and 7 is one of these.

    ``prompts``: text and visual prompts (``deop_lite.prompts``). ``severance``: None, or {layer index: α}
    patch severance in CLIP (``deop_lite.severance``) in mode ``severance_mode`` ("gps", "mps",
    "gps_mask"). ``anchors``: the CAL heatmap decoder (``deop_lite.anchors``), or mask-based pooling.
    ``void``: a learned void embedding, a (C+1)-th class that proposals covering nothing of interest can
    fall into (DeOP's loss needs it).
    """
    prompts: PromptConfig = field(default_factory=PromptConfig)
    severance: dict[int, float] | None = None
    severance_mode: str = "gps"
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    void: bool = False
    binary_pooling: bool = False  # mask-based pooling only (no CAL)

    def __post_init__(self):
        if self.severance_mode not in MODES:
            raise ValueError(f"severance_mode must be one of {MODES}, got {self.severance_mode!r}")

    @classmethod
    def from_dict(cls, d: dict) -> DeOPConfig:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (tuples and int keys restored)."""
        prompts = {k: tuple(v) if isinstance(v, list) else v for k, v in d["prompts"].items()}
        severance = None if d["severance"] is None else {int(k): float(v) for k, v in d["severance"].items()}
        return cls(**{**d, "prompts": PromptConfig(**prompts), "severance": severance,
                      "anchors": AnchorConfig(**d["anchors"])})


class LearnedParts(nn.Module):
    """Everything a ``DeOP`` model trains (and its checkpoints store); each part None when switched off.
    ``num_queries``: N of the proposal network (CAL has one anchor query per proposal)."""

    def __init__(self, clip: ClipModel, config: DeOPConfig, num_queries: int):
        super().__init__()
        self.text_prompts, self.visual_prompts = build_prompts(clip, config.prompts)
        self.anchor_decoder = build_anchor_decoder(config.anchors, clip.embed_dim, num_queries)
        self.void_embedding = nn.Parameter(torch.randn(clip.embed_dim) * clip.embed_dim ** -0.5) if config.void else None


class DeOP(nn.Module):
    """A frozen proposal network and a frozen CLIP, with the learned parts that ``config`` switches on.

    Args:
        proposals: a ``MaskProposalNetwork`` (kept frozen and in eval mode).
        clip: a ``ClipModel``, toy or real (its weights are never trained).
        config: a ``DeOPConfig``; the default is the plain baseline of paper §3.1.
        learned: trained parts matching ``config`` (from a checkpoint); default: freshly initialised.
    """

    def __init__(self, proposals: nn.Module, clip: ClipModel, config: DeOPConfig | None = None,
                 learned: LearnedParts | None = None):
        super().__init__()
        self.config = config or DeOPConfig()
        self.proposals = proposals.eval().requires_grad_(False)
        self.clip = clip
        self.learned = learned or LearnedParts(clip, self.config, proposals.config.num_queries)
        self._text_cache: dict[tuple, torch.Tensor] = {}

    def train(self, mode: bool = True) -> DeOP:
        """Train mode for the learned parts only: the frozen proposal network stays in eval mode."""
        super().train(mode)
        self.proposals.eval()
        return self

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

    @torch.no_grad()
    def proposal_mask_probs(self, image_raw: torch.Tensor, refinement: Refinement | None = TOY_REFINEMENT) -> torch.Tensor:
        """σ(M) (B, N, H, W) at the image's resolution, from the frozen proposal network, post-processed by
        ``refinement`` (None: the network's own masks)."""
        return proposal_masks(self.proposals, image_raw, refinement=refinement).sigmoid()  # (B, N, H, W)

    def dense_features(self, image_raw: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        """F_V (B, D, h, w): the one CLIP pass, with this model's visual prompts and patch severance."""
        return severed_dense_features(self.clip.visual, self.clip.normalize(image_raw), self.config.severance or {},
                                      self.config.severance_mode, mask_probs, prompts=self.learned.visual_prompts)

    def forward(self, image_raw: torch.Tensor, class_names: Sequence[str], mask_probs: torch.Tensor | None = None,
                refinement: Refinement | None = TOY_REFINEMENT) -> dict:
        """Segment ``image_raw`` (B, 3, H, W) in [0, 1] into ``class_names`` (differentiable in the learned parts).

        Args:
            mask_probs: optional (B, N, H, W) masks to classify instead of the proposals (e.g. ground truth).
            refinement: how the proposals are post-processed (``proposals.Refinement``; the toy world's by
                default, None for the network's own masks); unused when ``mask_probs`` is given.
        Returns a dict: ``label`` (B, H, W) indices into class_names, ``scores`` O (B, C, H, W),
        ``logits`` (B, N, C [+ 1 void]), ``class_probs`` F_C (B, N, C) with void dropped,
        ``mask_probs`` σ(M) (B, N, H, W), ``heatmaps`` (B, N, h, w) the pooling weights on the patch grid
        (CAL's anchor heatmaps H, or the normalised masks).
        """
        class_names = checks.class_names(class_names)
        patch = self.clip.patch_size
        if mask_probs is None:  # the proposal network reads images whose sides are multiples of 32
            checks.image_batch(image_raw, min_side=32, multiple_of=32)
            mask_probs = self.proposal_mask_probs(image_raw, refinement)  # (B, N, H, W)
        else:
            checks.image_batch(image_raw, min_side=patch, multiple_of=patch)
            checks.mask_batch(mask_probs, image_raw)
            queries = self.proposals.config.num_queries
            if self.learned.anchor_decoder is not None and mask_probs.shape[1] != queries:
                raise checks.InputError(f"this model's anchor decoder (CAL) classifies exactly {queries} masks per image, "
                                        f"got {mask_probs.shape[1]}; pad with empty masks or use a model without CAL")
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

    @torch.no_grad()
    def predict(self, image_raw: torch.Tensor, class_names: Sequence[str],
                refinement: Refinement | None = TOY_REFINEMENT) -> dict:
        """Inference (eval mode, no gradients): see :meth:`forward`."""
        self.eval()
        return self(image_raw, class_names, refinement=refinement)

    @torch.no_grad()
    def classify_masks(self, image_raw: torch.Tensor, mask_probs: torch.Tensor, class_names: Sequence[str]) -> dict:
        """The classification stream alone, for any masks (B, N, H, W) in [0, 1]: proposals or ground truth."""
        self.eval()
        return self(image_raw, class_names, mask_probs)


class OnePassBaseline(DeOP):
    """The baseline of paper §3.1: nothing trained but the proposal network, a fixed prompt template.

    Args:
        proposals, clip: as for ``DeOP``.
        templates: prompt templates for the fixed text classifier (default "a photo of a {}.").
        binary_pooling: use the official code's binary mask pooling.
        severance: optional patch severance in CLIP, {layer index: α}; None keeps CLIP unmodified.
        severance_mode: "gps", "mps" or "gps_mask" (the last two use the masks being classified).
    """

    def __init__(self, proposals: nn.Module, clip: ClipModel, templates: Sequence[str] = ("a photo of a {}.",),
                 binary_pooling: bool = False, severance: dict[int, float] | None = None, severance_mode: str = "gps"):
        config = DeOPConfig(PromptConfig(templates=tuple(templates)), severance, severance_mode,
                            binary_pooling=binary_pooling)
        super().__init__(proposals, clip, config)

    @torch.no_grad()
    def forward(self, image_raw: torch.Tensor, class_names: Sequence[str], mask_probs: torch.Tensor | None = None,
                refinement: Refinement | None = TOY_REFINEMENT) -> dict:
        """As :meth:`DeOP.forward`, without gradients: nothing here is trained."""
        return super().forward(image_raw, class_names, mask_probs, refinement)


# ----------------------------------------------------------------------------------------------------
# Training DeOP variants on the toy world

CHECKPOINT_DIR = runtime.DATA_DIR / "deop"


@dataclass
class DeOPStage:
    """Everything that defines the training of one variant on the toy world.

    ``objective``: "segmentation" (end-to-end, DeOP's loss on scenes; proposal network and CLIP frozen) or
    "crops" (the offline text-prompt initialisation: classify seen-class segment crops, as in SimBaseline's
    mask_former/proposal_classification.py).
    ``init_from``: a variant whose learned text context starts this one (the offline initialisation).
    ``train_text``: False keeps the (initialised) text context fixed while the rest trains.
    """
    model: DeOPConfig = field(default_factory=DeOPConfig)
    objective: str = "segmentation"
    init_from: str | None = None
    train_text: bool = True
    ignore_as_void: bool = False  # True: DeOP's mask_former/modeling/criterion_decoder.py, unseen pixels as void
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=500, lr=2e-3, weight_decay=1e-4, warmup_steps=50, schedule="poly", grad_clip=1.0, log_every=50,
        checkpoint_every=250))  # 500 steps: DeOP's seen-class mIoU is higher than after 1,000 (docs/experiments.md)
    batch_size: int = 8
    image_size: int = 128
    crops_per_class: int = 128  # "crops" objective: SimBaseline's SAMPLE_PER_CLASS for VOC
    clip: str | None = None  # a toy CLIP checkpoint other than the shipped one (e.g. ToyClipConfig.like_vit_b16's)

    @classmethod
    def from_dict(cls, d: dict) -> DeOPStage:
        return cls(**{**d, "model": DeOPConfig.from_dict(d["model"]), "train": TrainConfig(**d["train"])})


def _learned_text(ctx_init: str | None = "a photo of a", severance: dict[int, float] | None = None,
                  anchors: AnchorConfig | None = None, **visual) -> DeOPConfig:
    return DeOPConfig(PromptConfig(text="learned", ctx_init=ctx_init, **visual), severance=severance,
                      anchors=anchors or AnchorConfig(), void=True)


CAL_LR = 0.1
"""CAL's decoder learns at a tenth of the prompts' rate: the official code's 2e-4 (DeOP's scripts/deop_train.sh), where the
toy prompts use 2e-3. With the prompts' rate and no dropout, the decoder fits the seen classes (docs/experiments.md)."""


def _baseline_plus(severance: dict[int, float] | None = None, anchors: AnchorConfig | None = None) -> DeOPStage:
    """Baseline+ (learned text from the offline init, added visual prompts), optionally with PS and CAL (with
    the official code's dropout 0.1, at ``CAL_LR`` times the learning rate)."""
    stage = DeOPStage(_learned_text(visual="add", severance=severance, anchors=anchors), init_from="text_offline")
    if anchors is not None:
        stage.model.anchors = replace(anchors, dropout=0.1)
        stage.train.lr_multipliers = {"anchor_decoder.": CAL_LR}
    return stage


GPS_PAPER = {-1: 1.0}
"""The paper's patch severance in DeOP (Table 4's best): the last layer fully severed. The real-world preset."""


def last_blocks_severed(k: int, layers: int = ToyClipConfig.vision_layers) -> dict[int, float] | None:
    """GPS with α = 1 in the last ``k`` of ``layers`` blocks ({layer index: α}; None for k = 0, the stock CLIP)."""
    if not 0 <= k <= layers:
        raise checks.InputError(f"the toy CLIP has {layers} blocks: sever between 0 and {layers} of them, got {k}")
    return {layer: 1.0 for layer in range(layers - k, layers)} or None


GPS_TOY = last_blocks_severed(2)
"""The toy DeOP's patch severance: GPS α = 1 in the last 2 of the toy CLIP's 4 blocks. The first two blocks still mix
the patch tokens, as ViT-B/16's first eleven do when the paper severs its last: the regime in which the paper's Table 3
holds and CAL has mixing to repair (the sweep of notebook 04 §6; docs/experiments.md). Every block can be severed in
the shipped toy CLIP (pre-trained for it; notebook 03 shows a toy CLIP pre-trained like ViT-B/16 that cannot)."""


VARIANTS: dict[str, tuple[str, DeOPStage]] = {
    "text_offline": ("text prompt learned offline on seen-class crops (the paper's baseline classifier)",
                     DeOPStage(DeOPConfig(PromptConfig(text="learned")), objective="crops", train=TrainConfig(
                         steps=300, lr=2e-3, weight_decay=0.0, warmup_steps=20, log_every=25, checkpoint_every=100))),
    "text_e2e": ("text prompt, offline init, then trained end-to-end for segmentation",
                 DeOPStage(_learned_text(), init_from="text_offline")),
    "visual_add": ("offline text prompt (fixed) + added visual prompts trained end-to-end",
                   DeOPStage(_learned_text(visual="add"), init_from="text_offline", train_text=False)),
    "visual_prepend": ("offline text prompt (fixed) + prepended visual prompts (VPT-deep) trained end-to-end",
                       DeOPStage(_learned_text(visual="prepend"), init_from="text_offline", train_text=False)),
    "baseline_plus": ("baseline+: text prompt (offline init) + added visual prompts, both end-to-end",
                      _baseline_plus()),
    "ps": ("baseline+ with patch severance (GPS, α = 1 in the last 2 of the toy CLIP's 4 blocks)",
           _baseline_plus(severance=GPS_TOY)),
    "ps_last_layer": ("baseline+ with the paper's patch severance (GPS, α = 1 in the last layer only)",
                      _baseline_plus(severance=GPS_PAPER)),
    "cal": ("baseline+ with CAL (query-based heatmap decoder, K = 1)",
            _baseline_plus(anchors=AnchorConfig("query", layers=1))),
    "deop": ("DeOP: baseline+ with PS and CAL (query-based, K = 1, the released setting)",
             _baseline_plus(severance=GPS_TOY, anchors=AnchorConfig("query", layers=1))),
    "deop_conv3": ("DeOP with the conv-based heatmap decoder, K = 3",
                   _baseline_plus(severance=GPS_TOY, anchors=AnchorConfig("conv", layers=3))),
    "deop_query3": ("DeOP with the query-based heatmap decoder, K = 3",
                    _baseline_plus(severance=GPS_TOY, anchors=AnchorConfig("query", layers=3))),
    "deop_query5": ("DeOP with the query-based heatmap decoder, K = 5",
                    _baseline_plus(severance=GPS_TOY, anchors=AnchorConfig("query", layers=5))),
}
"""Named variants: (description, stage). "baseline" (nothing learned) needs no checkpoint."""


def variant_stage(name: str) -> DeOPStage:
    if name not in VARIANTS:
        raise checks.InputError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)} (or 'baseline')")
    stage = VARIANTS[name][1]
    return DeOPStage.from_dict(asdict(stage))  # a fresh copy: callers may edit it


def checkpoint_path(variant: str) -> Path:
    return CHECKPOINT_DIR / f"{variant}.safetensors"


def shipped_history(variant: str) -> list[dict]:
    """The training log shipped beside a variant's file (``data/deop/<variant>_train.log``), one record per log line."""
    from .train import read_log
    return read_log(checkpoint_path(variant).with_name(f"{variant}_train.log"))


SWEEP_FILE = CHECKPOINT_DIR / "severance_sweep.json"
"""The severed-blocks sweep: ``python tools/severance_sweep.py`` (runs resumable, in ``runs/sweep/``)."""


def severance_sweep() -> list[dict]:
    """The runs of the severed-blocks sweep (``SWEEP_FILE``): each a dict with ``clip`` ("shipped", or "like_vit_b16",
    ``clip.TOY_CLIP_LIKE_VIT_B16``), ``variant`` ("ps" or "deop"),
    ``blocks`` (K, the last K blocks severed), ``steps``, ``final`` (pAcc, mIoU, seen, unseen, hIoU on 200
    validation scenes), ``curve`` (the in-training evaluations on 48 scenes) and the ``command`` that re-trains it."""
    import json
    if not SWEEP_FILE.is_file():
        raise checks.CheckpointMissing(f"no sweep results at {SWEEP_FILE}: restore them with `git checkout -- "
                                       f"{SWEEP_FILE.name}` (in data/deop/) or run `python tools/severance_sweep.py`")
    return json.loads(SWEEP_FILE.read_text())["runs"]


def train_command(variant: str) -> str:
    return f"python -m deop_lite.model train --variant {variant}"


def load_deop(variant: str = "baseline_plus", path: str | Path | None = None, proposals: nn.Module | None = None,
              clip: ClipModel | None = None) -> DeOP:
    """A trained toy variant in eval mode: the shipped proposal network and toy CLIP plus its learned parts.

    ``variant="baseline"`` is the untrained baseline (no file). ``path`` overrides the shipped file.
    """
    from .proposals import load_proposals
    from .train import read_metadata
    proposals = proposals if proposals is not None else load_proposals()[0]
    if variant == "baseline" and path is None:
        return DeOP(proposals, clip or load_clip("toy")).eval()
    path = Path(path) if path is not None else checkpoint_path(variant)
    if clip is None:  # the toy CLIP the variant was trained with (the shipped one unless its stage names another)
        trained_with = read_metadata(path).get("stage", {}).get("clip") if path.is_file() else None
        clip = load_clip("toy", pretrained=trained_with)
    learned, metadata = load_weights(path, lambda meta: LearnedParts(
        clip, DeOPStage.from_dict(meta["stage"]).model, proposals.config.num_queries), train_command(variant))
    if metadata.get("variant", variant) != variant:
        raise checks.CheckpointError(f"{path} holds the variant {metadata['variant']!r}, not {variant!r}: pass "
                                     f"--variant {metadata['variant']} (or load_deop({metadata['variant']!r}, path))")
    model = DeOP(proposals, clip, DeOPStage.from_dict(metadata["stage"]).model, learned)
    model.metadata = metadata
    return model.eval()


def load_or_train_deop(variant: str, proposals: nn.Module | None = None, clip: ClipModel | None = None) -> DeOP:
    """The shipped variant; trained first (see :func:`train_deop`) when its file is missing."""
    if variant != "baseline" and not checkpoint_path(variant).exists():
        print(f"{checkpoint_path(variant)} not found: training it ({train_command(variant)})")
        train_deop(variant)
    return load_deop(variant, proposals=proposals, clip=clip)


def evaluate_toy(predict, scenes: int = 200, image_size: int = 128, batch_size: int = 16,
                 progress: bool | None = None, masks: str = "model", interval: bool = False) -> dict:
    """``metrics.evaluate_segmentation`` of ``predict`` on the first ``scenes`` toy-world validation scenes, over all
    16 classes: pAcc, mIoU over seen and unseen classes, hIoU and the things' mIoU (``masks``, ``interval``: see
    there)."""
    from .metrics import evaluate_segmentation
    world = toyworld.segmentation_world("val", scenes, image_size)
    return evaluate_segmentation(predict, world, toyworld.CLASS_NAMES, toyworld.SEEN_CLASSES, toyworld.UNSEEN_CLASSES,
                                 batch_size, progress, thing_classes=toyworld.THING_CLASSES, masks=masks, interval=interval)


def evaluate_deop(model: nn.Module, scenes: int = 200, image_size: int = 128, batch_size: int = 16,
                  progress: bool | None = None, masks: str = "model",
                  refinement: Refinement | None = TOY_REFINEMENT, interval: bool = False) -> dict:
    """:func:`evaluate_toy` of a DeOP variant or a ``MultiPass`` classifier. ``masks="model"`` segments with the
    model's proposals, post-processed by ``refinement`` (None: the network's own masks); ``"ground_truth"`` gives
    its classifier one ground-truth mask per class instead, so that the proposals play no part. ``interval=True``
    adds each metric's 95 % bootstrap interval over the scenes."""
    return evaluate_toy(_labeller(model, masks, refinement), scenes, image_size, batch_size, progress, masks, interval)


def compare_deop(model: nn.Module, reference: nn.Module, scenes: int = 200, image_size: int = 128,
                 batch_size: int = 16, progress: bool | None = None,
                 refinement: Refinement | None = TOY_REFINEMENT) -> dict[str, list[float]]:
    """How much ``model`` beats ``reference`` (toy DeOP variants) on the first ``scenes`` validation scenes, with
    the same proposals: metric -> [difference, low, high], the 95 % paired bootstrap interval over the scenes
    (``metrics.compare_segmentation``; the lab book's CAL gains)."""
    from .metrics import compare_segmentation
    world = toyworld.segmentation_world("val", scenes, image_size)
    return compare_segmentation(_labeller(model, "model", refinement), _labeller(reference, "model", refinement),
                                world, toyworld.CLASS_NAMES, toyworld.SEEN_CLASSES, toyworld.UNSEEN_CLASSES,
                                batch_size, progress, thing_classes=toyworld.THING_CLASSES)


def _labeller(model: nn.Module, masks: str, refinement: Refinement | None):
    """The ``predict`` of ``metrics.evaluate_segmentation`` for a toy model: images (and, with ``masks=
    "ground_truth"``, one mask per class) -> (B, H, W) indices into the toy world's 16 classes."""
    names = toyworld.CLASS_NAMES
    if masks == "model":
        return lambda images: model.predict(images, names, refinement)["label"]
    return lambda images, truth: model.classify_masks(images, truth, names)["label"]


@torch.no_grad()
def evaluate_training_free(clip: ClipModel, proposals: nn.Module, mode: str | None, scenes: int = 200,
                           image_size: int = 128, progress: bool | None = None,
                           interval: bool = False) -> dict[str, dict]:
    """One severance mode, training-free, the two ways it can be used (notebook 03, "What came after").

    ``mode`` (one of ``severance.MODES`` that reads no masks, or None for the stock CLIP) changes the last block.
    ``"per_patch"`` labels each pixel with its patch's nearest class (how MaskCLIP, SCLIP, ClearCLIP and NACLIP
    segment); ``"mask_pooling"`` is the one-pass baseline: the same patch features pooled in the proposals.
    Each value is :func:`evaluate_toy`'s result on the first ``scenes`` validation scenes (``interval=True``: with
    each metric's 95 % bootstrap interval over them).
    """
    from .clip import patch_scores
    if mode is not None and (mode not in MODES or mode in MASK_MODES):
        raise checks.InputError(f"mode must be None or one of {tuple(m for m in MODES if m not in MASK_MODES)}, "
                                f"got {mode!r}")
    layers = {} if mode is None else {-1: 1.0}
    baseline = OnePassBaseline(proposals, clip, severance=layers or None, severance_mode=mode or "gps")
    text_emb = baseline.text_embeddings(toyworld.CLASS_NAMES)  # (C, D), the baseline's own template

    def per_patch(image_raw: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, H, W)
        dense_feats = baseline.dense_features(image_raw, None)  # (B, D, h, w)
        return patch_scores(dense_feats, text_emb, image_raw.shape[-2:]).argmax(1)

    return {"per_patch": evaluate_toy(per_patch, scenes, image_size, progress=progress, interval=interval),
            "mask_pooling": evaluate_deop(baseline, scenes, image_size, progress=progress, interval=interval)}


def train_briefly(variant: str, steps: int, val_scenes: int = 16) -> DeOP:
    """A live run of ``steps`` steps of a variant's training, in a temporary folder (the shipped file untouched)."""
    import tempfile
    stage = variant_stage(variant)
    stage.train.steps = stage.train.log_every = stage.train.checkpoint_every = steps
    with tempfile.TemporaryDirectory() as tmp:
        return train_deop(variant, stage, run_dir=tmp, out=f"{tmp}/{variant}.safetensors", val_scenes=val_scenes)


def train_deop(variant: str, stage: DeOPStage | None = None, run_dir: str | Path | None = None,
               out: str | Path | None = None, val_scenes: int = 200) -> DeOP:
    """Train one variant's learned parts (resumable), evaluate it, and save them as safetensors."""
    from .proposals import load_proposals
    stage = stage or variant_stage(variant)
    run_dir = Path(run_dir or f"runs/deop/{variant}")
    out = Path(out or checkpoint_path(variant))
    runtime.set_seed(stage.train.seed)
    model = DeOP(load_proposals()[0], load_clip("toy", pretrained=stage.clip), stage.model)
    if stage.init_from is not None and stage.clip is None:
        start = load_or_train_deop(stage.init_from, proposals=model.proposals, clip=model.clip)
    elif stage.init_from is not None:  # another CLIP: its own offline text prompt, kept beside `out`
        init_path = out.with_name(f"{stage.init_from}_{Path(stage.clip).stem}.safetensors")
        if not init_path.exists():
            init_stage = variant_stage(stage.init_from)
            init_stage.clip = stage.clip
            train_deop(stage.init_from, init_stage, run_dir.with_name(f"{run_dir.name}_{stage.init_from}"), init_path)
        start = load_deop(stage.init_from, init_path, model.proposals, model.clip)
    if stage.init_from is not None:
        model.learned.text_prompts.load_state_dict(start.learned.text_prompts.state_dict())
    if not stage.train_text and model.learned.text_prompts is not None:
        model.learned.text_prompts.requires_grad_(False)
    seen, label_map = list(toyworld.SEEN_CLASSES), seen_label_map(toyworld.CLASS_NAMES, toyworld.SEEN_CLASSES)
    train_world = toyworld.segmentation_world("train", 10 ** 9, stage.image_size)

    if stage.objective == "crops":
        embeddings, targets = segment_crop_embeddings(model.clip, train_world, seen, stage.crops_per_class)
        print(f"offline prompt data: {len(targets)} seen-class segment crops (mirrored copies included)")

        def step_loss(step: int):
            generator = torch.Generator().manual_seed(step)
            batch = torch.randint(len(targets), (64,), generator=generator)
            return crop_classification_loss(model.learned.text_prompts(seen), embeddings[batch], targets[batch],
                                            model.clip.model.logit_scale.exp())
    elif stage.objective == "segmentation":
        def step_loss(step: int):
            items = [train_world[step * stage.batch_size + i] for i in range(stage.batch_size)]
            image_raw = torch.stack([it["image_raw"] for it in items])  # (B, 3, H, W)
            label = label_map[torch.stack([it["label"] for it in items])][:, 1::2, 1::2]  # (B, H/2, W/2)
            # The network's own masks, as DeepLab trained without the CRF it applied at test time: the
            # shipped learned parts were trained before the toy world refined its proposals.
            out = model(image_raw, seen, refinement=None)
            losses = deop_segmentation_loss(out["logits"], out["mask_probs"], label,
                                            ignore_as_void=stage.ignore_as_void)
            return losses.pop("loss"), losses
    else:
        raise ValueError(f"objective must be 'segmentation' or 'crops', got {stage.objective!r}")

    def evaluate():
        result = evaluate_deop(model, scenes=min(48, val_scenes), image_size=stage.image_size, progress=False)
        return {k: result[k] for k in ("pAcc", "seen", "unseen", "hIoU")}

    def final_evaluation() -> dict:
        metrics = evaluate_deop(model, scenes=val_scenes, image_size=stage.image_size)
        return {"metrics": {k: metrics[k] for k in ("pAcc", "mIoU", "seen", "unseen", "hIoU")}, "val_scenes": val_scenes}

    train_stage(variant, model.learned, step_loss, stage.train, run_dir, out, evaluate, final_evaluation,
                report=lambda final: format_table({variant: final["metrics"]}),
                metadata={"stage": asdict(stage), "variant": variant}, command=train_command(variant), settings=stage)
    return model


@checks.command("python -m deop_lite.model")
def main(argv=None) -> None:
    parser, train, evaluate = stage_cli("python -m deop_lite.model", "Train or evaluate a DeOP variant on the toy "
                                        "world. Variants:\n" + "\n".join(f"  {k}: {v[0]}" for k, v in VARIANTS.items()),
                                        None, None)
    train.add_argument("--variant", required=True, choices=list(VARIANTS))
    train.add_argument("--severed-blocks", type=int, metavar="K",
                       help="sever the last K blocks of the toy CLIP (GPS, α = 1; 0: none) instead of the variant's "
                            f"setting, K in 0..{ToyClipConfig.vision_layers} (the sweep of docs/experiments.md)")
    train.add_argument("--clip", metavar="PATH", help="another toy CLIP checkpoint (python -m deop_lite.toyclip train "
                       "--like-vit-b16); the offline text prompt it starts from is trained beside --out")
    evaluate.add_argument("--variant", required=True, choices=["baseline", *VARIANTS])
    add_evaluation_arguments(evaluate, "mIoU")
    args = parser.parse_args(argv)
    check_stage_args(args)
    if args.command == "eval":
        refinement = evaluation_arguments(args)
    if args.command == "train":
        stage = variant_stage(args.variant)
        if args.tiny:
            stage.train = TrainConfig(steps=2, warmup_steps=1, log_every=1, checkpoint_every=2)
            stage.batch_size, stage.image_size, stage.crops_per_class = 2, 64, 2
        if args.steps is not None:
            stage.train.steps = args.steps
        if args.severed_blocks is not None:
            stage.model.severance = last_blocks_severed(checks.at_least(args.severed_blocks, 0, "--severed-blocks"))
        if args.clip is not None:
            checks.input_file(args.clip, "--clip")
            stage.clip = str(args.clip)
        train_deop(args.variant, stage, args.run_dir, args.out, val_scenes=8 if args.tiny else 200)
    else:
        model = load_deop(args.variant, args.checkpoint)
        print(format_table({args.variant: evaluate_deop(model, args.scenes, refinement=refinement)}))


if __name__ == "__main__":
    main()
