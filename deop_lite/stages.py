"""The training stages, each ``train_X(world, stage, run)`` on the one resumable loop, in any world.

    toy CLIP pre-training       train_toy_clip        captions of the toy world (the real world downloads CLIP)
    1. offline text prompts     train_text_prompts    seen-class segment crops        (SimBaseline's stage 1)
    2. proposal network         train_proposals       seen-class masks                (paper §3.1)
    3. DeOP                     train_deop            DeOP's segmentation loss, proposals and CLIP frozen

A world (``world.World``: ``toyworld.ToyWorld``, or ``datasets.DatasetWorld`` for VOC, COCO-Stuff, ...) gives the
classes, the seeded training stream and the validation set; a stage config gives the model and its optimisation;
a :class:`Run` says where checkpoints go and how steps run (device, micro-batches, bf16, processes). The toy CLIs,
the notebooks and ``deop_lite.realworld`` all call these functions: notebook 07's training is notebook 04's call
with another world.

The toy world's shipped files (``data/``) are load-or-train: :func:`load_deop`, :func:`load_proposals` and
``clip.load_clip("toy")`` read them, and the commands below re-train them::

    python -m deop_lite.stages train clip                      # data/toy_clip.safetensors
    python -m deop_lite.stages train proposals                 # data/toy_proposals.safetensors
    python -m deop_lite.stages train deop --variant NAME       # data/deop/NAME.safetensors (VARIANTS)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checks, runtime, toyclip
from .anchors import AnchorConfig
from .clip import TOY_CLIP_CHECKPOINT, ClipModel, ToyClipConfig, WordTokenizer, build_toy_clip, load_clip, patch_scores
from .losses import deop_segmentation_loss, half_resolution, mask_proposal_loss
from .metrics import compare_segmentation, evaluate_labellings, format_table, seen_label_map
from .model import DeOP, DeOPConfig, LearnedParts, MaskClassifier, classify_masks_with, mask_vote
from .prompts import PromptConfig, crop_classification_loss, segment_crop_embeddings
from .proposals import MaskProposalNetwork, ProposalConfig, Refinement, format_recall, proposal_masks, proposal_recall
from .severance import NONE, Severance, last_blocks_severed, severed_dense_features, severed_image_embedding
from .toyworld import ToyWorld
from .train import (
    TrainConfig,
    accumulated_step,
    fit,
    load_weights,
    rank,
    read_log,
    read_metadata,
    save_weights,
    ship_log,
    world_size,
)
from .world import World, classifies_ground_truth, evaluate, segments


@dataclass
class Run:
    """Where a stage writes and how its steps run.

    Args:
        run_dir: checkpoints (``last.pt``) and ``train.log``; a run resumes from here.
        out: the safetensors file written when every step has run (with the training log beside it).
        device: where the model and batches go.
        accumulate: micro-batches per step and process (gradient accumulation); the global batch is the stage's.
        bf16: bfloat16 autocast for the forward passes (GPU).
        stop_at: pause after this many steps (a job with a time limit); running again resumes.
        eval_scenes: validation scenes evaluated at each checkpoint (0: none; the real world's are evaluated apart).
        val_scenes: validation scenes of the final evaluation stored with the file (0: none).
        wrap: how the trained module is wrapped for several processes (``realworld.distributed``; default: as is).
    """
    run_dir: Path
    out: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    accumulate: int = 1
    bf16: bool = False
    stop_at: int | None = None
    eval_scenes: int = 48
    val_scenes: int = 200
    wrap: Callable[[nn.Module], nn.Module] = lambda module: module

    def __post_init__(self):
        self.run_dir, self.out = Path(self.run_dir), Path(self.out)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def batch(self, world: World, step: int, batch_size: int, share: int, shares: int) -> dict:
        """This micro-batch's share of global batch ``step``, on the device, images in the default dtype."""
        batch = world.training_batch(step, batch_size, share, shares)
        return {"image_raw": batch["image_raw"].to(self.device, torch.get_default_dtype()),
                "label": batch["label"].to(self.device)}


def _train(name: str, module: nn.Module, ddp: nn.Module, micro_loss: Callable[[int, int, int], tuple],
           config: TrainConfig, run: Run, metadata: dict, command: str, evaluate: Callable[[], dict] | None = None,
           final_evaluation: Callable[[], dict] | None = None, settings: object = "") -> dict | None:
    """The skeleton every stage shares: :func:`train.fit` over ``micro_loss(step, share, shares)`` (micro-batches
    and processes by :func:`train.accumulated_step`), resumable from ``run.run_dir``; once every step has run, the
    final evaluation, then ``module``'s weights with ``metadata`` and a summary written to ``run.out`` (rank 0) and
    the log copied beside it. Returns the summary (None when paused by ``run.stop_at``)."""
    if rank() == 0:
        trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
        print(f"{name}: {trained:,} trained parameters\n{settings}".rstrip())
    tic = time.perf_counter()
    history = fit(module, lambda step: accumulated_step(lambda *share: micro_loss(step, *share), ddp, run.accumulate),
                  config, run.run_dir, evaluate if run.eval_scenes else None, run.stop_at)
    if run.stop_at is not None and run.stop_at < config.steps:
        return None
    final = final_evaluation() if final_evaluation is not None and run.val_scenes and rank() == 0 else {}
    summary = {**final, "steps": config.steps, "train_minutes_this_session": (time.perf_counter() - tic) / 60,
               "s_per_step": history[-1]["s_per_step"] if history else None, "command": command,
               "torch": torch.__version__}
    if rank() == 0:
        finished = f"the finished run's checkpoint ({run.run_dir / 'last.pt'}, step {config.steps}) is intact"
        save_weights(module, run.out, {**metadata, "summary": summary}, finished)
        ship_log(run.run_dir, run.out, finished)
        print(f"saved {run.out}")
    if world_size() > 1:
        torch.distributed.barrier()
    return summary


# ----------------------------------------------------------------------------------------------------
# Evaluation (``world.evaluate``), the toy world by default

def evaluate_deop(model: nn.Module, scenes: int = 200, world: World | None = None, progress: bool | None = None,
                  interval: bool = False, refinement: Refinement | None | str = "world") -> dict:
    """:func:`evaluate` of a ``DeOP`` segmenting with its proposals, post-processed by ``refinement`` (default: the
    world's own, ``world.refinement``; None: the network's own masks). ``world``: default the toy world."""
    world = world or ToyWorld()
    refinement = world.refinement if refinement == "world" else refinement
    return evaluate(segments(model, world, refinement), world, scenes, progress=progress, interval=interval)


def evaluate_classifier(classifier: nn.Module, scenes: int = 200, world: World | None = None,
                        progress: bool | None = None, interval: bool = False) -> dict:
    """:func:`evaluate` of a mask classifier given the ground-truth masks (:func:`classifies_ground_truth`)."""
    world = world or ToyWorld()
    return evaluate(classifies_ground_truth(classifier, world), world, scenes, progress=progress, interval=interval)


def compare_deop(model: nn.Module, reference: nn.Module, scenes: int = 200, world: World | None = None,
                 progress: bool | None = None) -> dict[str, list[float]]:
    """How much ``model`` beats ``reference`` (two ``DeOP``) on the first ``scenes`` validation scenes, with the same
    (refined) proposals: metric -> [difference, low, high], the 95 % paired bootstrap interval over the scenes
    (``metrics.compare_segmentation``; the lab book's CAL gains)."""
    world = world or ToyWorld()
    return compare_segmentation(segments(model, world, world.refinement), segments(reference, world, world.refinement),
                                world.validation_set(scenes), world.class_names, world.seen_classes,
                                world.unseen_classes, progress=progress, thing_classes=world.thing_classes)


@torch.no_grad()
def evaluate_training_free(clip: ClipModel, proposals: nn.Module, severance: Severance, scenes: int = 200,
                           world: World | None = None, progress: bool | None = None, interval: bool = False,
                           proxy: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, dict]:
    """One training-free CLIP (``severance``: the stock CLIP, GPS, or one of the successors' last blocks), the three
    ways its patch features can label the world's validation images (notebook 06):

    - ``"per_patch"``: each pixel takes its patch's nearest class (how MaskCLIP, SCLIP, ..., ProxyCLIP segment);
    - ``"mask_pooling"``: the one-pass baseline, the features pooled in each proposal (``model.classify_masks_with``);
    - ``"mask_vote"``: the per-patch labels, then each proposal's majority (CorrCLIP's map correction,
      ``model.mask_vote``).

    The proposals are the network's, post-processed as the world does; masks go to the modes that read them, and
    ``proxy(image_raw)`` (B, C, h', w') features to ProxyCLIP and CorrCLIP. Each value is :func:`world.evaluate`'s
    result on the first ``scenes`` validation scenes. One CLIP pass per image serves all three
    (``metrics.evaluate_labellings``).
    """
    world = world or ToyWorld()
    text_emb = clip.text_embeddings(world.class_names, ("a photo of a {}.",))  # (C, D), the baseline's template
    scale = clip.model.logit_scale.exp()

    def labellings(batch: dict) -> dict[str, torch.Tensor]:  # the three ways, from one CLIP pass
        images = batch["image_raw"]  # (B, 3, H, W)
        masks = proposal_masks(proposals, images, refinement=world.refinement).sigmoid()  # (B, N, H, W)
        dense_feats = severed_dense_features(clip.visual, clip.normalize(images), severance, masks,
                                             proxy=None if proxy is None else proxy(images))  # (B, D, h, w)
        per_patch = patch_scores(dense_feats, text_emb, images.shape[-2:]).argmax(1)  # (B, H, W)
        return {"per_patch": per_patch,
                "mask_pooling": classify_masks_with(dense_feats, masks, text_emb, scale)[1].argmax(1),
                "mask_vote": mask_vote(per_patch, masks, len(world.class_names))}

    return evaluate_labellings(labellings, world.validation_set(scenes), world.class_names, world.seen_classes,
                               world.unseen_classes, progress=progress, thing_classes=world.thing_classes,
                               interval=interval)


# ----------------------------------------------------------------------------------------------------
# Stage configs

@dataclass
class ProposalStage:
    """Everything that defines a proposal-network training run (defaults: the toy world's)."""
    model: ProposalConfig = field(default_factory=ProposalConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3000, lr=4e-4, weight_decay=0.05, warmup_steps=100, schedule="poly", grad_clip=1.0,
        log_every=50, checkpoint_every=500))
    batch_size: int = 8
    image_size: int = 128  # the toy world's scenes (a real world crops to its preset's size)

    @classmethod
    def tiny(cls) -> ProposalStage:
        """A few steps of a small network: tests and CI smoke runs."""
        model = ProposalConfig(toy_widths=(8, 16, 16, 32), dim=32, mask_dim=16, layers=2, heads=2, ffn_dim=64,
                               num_queries=8)
        return cls(model=model, batch_size=2, image_size=64,
                   train=TrainConfig(steps=4, warmup_steps=1, schedule="poly", log_every=2, checkpoint_every=2))

    @classmethod
    def from_dict(cls, d: dict) -> ProposalStage:
        model = checks.known_fields(ProposalConfig, d["model"], "the proposal network's metadata")
        model["toy_widths"] = tuple(model["toy_widths"])
        return cls(**{**d, "model": ProposalConfig(**model), "train": TrainConfig(**d["train"])})


@dataclass
class DeOPStage:
    """Everything that defines the training of one DeOP variant.

    ``objective``: "segmentation" (end-to-end, DeOP's loss on scenes; proposal network and CLIP frozen) or
    "crops" (the offline text-prompt initialisation: classify seen-class segment crops, as in SimBaseline's
    mask_former/proposal_classification.py; :func:`train_text_prompts`).
    ``init_from``: a toy variant whose learned text context starts this one (the offline initialisation).
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
    batch_size: int = 8  # images per step; crops per step for the "crops" objective
    image_size: int = 128  # the toy world's scenes (a real world crops to its preset's size)
    crops_per_class: int = 128  # "crops" objective: SimBaseline's SAMPLE_PER_CLASS for VOC
    clip: str | None = None  # a toy CLIP checkpoint other than the shipped one (e.g. ToyClipConfig.like_vit_b16's)

    def __post_init__(self):
        if self.objective not in ("segmentation", "crops"):
            raise ValueError(f"objective must be 'segmentation' or 'crops', got {self.objective!r}")

    @classmethod
    def from_dict(cls, d: dict) -> DeOPStage:
        return cls(**{**d, "model": DeOPConfig.from_dict(d["model"]), "train": TrainConfig(**d["train"])})


# ----------------------------------------------------------------------------------------------------
# The stages

def train_toy_clip(world: ToyWorld, config: ToyClipConfig, run: Run) -> ClipModel:
    """Pre-train a toy CLIP on the captions of ``world`` (contrastive, ``toyclip``) and write it with its vocabulary
    and prompt templates."""
    runtime.set_seed(config.train.seed)
    tokenizer = WordTokenizer(world.vocabulary(), config.context_length)
    model = build_toy_clip(config, tokenizer.vocab_size)
    clip = ClipModel(model, tokenizer, "toy", world.prompt_templates)

    def micro_loss(step: int, share: int, shares: int):
        image_raw, captions = world.caption_batch(step, config.batch_size, config.image_size, share, shares)
        severed = toyclip.stochastic_severance(step, config.vision_layers, config.severance_drop)
        image_emb = F.normalize(severed_image_embedding(model.visual, clip.normalize(image_raw), severed), dim=-1)  # (B, D)
        text_emb = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)  # (B, D)
        return toyclip.contrastive_loss(image_emb, text_emb, toyclip.caption_groups(captions), model.logit_scale), \
            {"logit_scale": model.logit_scale.exp().item()}

    def evaluate(n_per_class: int = 20) -> dict:
        result = toyclip.evaluate_zero_shot(clip, n_per_class)
        return {k: result[k] for k in ("top1", "seen_top1", "unseen_top1")}

    summary = _train("toy CLIP", model, model, micro_loss, config.train, run,
                     {"config": asdict(config), "vocabulary": tokenizer.vocabulary,
                      "templates": list(world.prompt_templates)}, TRAIN_COMMANDS["clip"], evaluate,
                     lambda: evaluate(n_per_class=50), settings=config)
    if summary:
        print(toyclip.format_zero_shot(summary))
    return clip


def _segmentation_evaluation(model: DeOP, world: World, run: Run) -> tuple[Callable[[], dict], Callable[[], dict]]:
    """The in-training evaluation (``run.eval_scenes`` validation scenes) and the final one (``run.val_scenes``) of a
    DeOP variant, each segmenting with the world's post-processed proposals."""
    def evaluate() -> dict:
        result = evaluate_deop(model, min(run.eval_scenes, run.val_scenes), world, progress=False)
        return {k: result[k] for k in ("pAcc", "seen", "unseen", "hIoU")}

    def final_evaluation() -> dict:
        metrics = evaluate_deop(model, run.val_scenes, world)
        return {"metrics": {k: metrics[k] for k in ("pAcc", "mIoU", "seen", "unseen", "hIoU")},
                "val_scenes": run.val_scenes}
    return evaluate, final_evaluation


def train_text_prompts(world: World, stage: DeOPStage, run: Run, classifier: MaskClassifier,
                       proposals: nn.Module | None = None, metadata: dict | None = None) -> dict | None:
    """Stage 1 (SimBaseline's offline prompt learning): the text context of ``classifier`` that classifies
    seen-class segment crops of ``world`` best. The crops' CLIP embeddings are computed once (by rank 0) and cached
    in the run folder; each step draws ``stage.batch_size`` of them from the step's number. With ``proposals``, the
    classifier is also evaluated as a segmenter. Returns the training summary (None when paused)."""
    seen, clip = list(world.seen_classes), classifier.clip
    cache = run.run_dir / "crop_embeddings.pt"
    if rank() == 0 and not cache.exists():
        embeddings, targets = segment_crop_embeddings(clip, world.training_set(), seen, stage.crops_per_class,
                                                      world.class_names)
        with checks.atomic_path(cache) as tmp:
            torch.save({"embeddings": embeddings, "targets": targets}, tmp)
    if world_size() > 1:
        torch.distributed.barrier()
    crops = torch.load(cache)
    print(f"offline prompt data: {len(crops['targets'])} seen-class segment crops (mirrored copies included)")
    ddp = run.wrap(classifier.learned.text_prompts)

    def micro_loss(step: int, share: int, shares: int):
        batch = torch.randint(len(crops["targets"]), (stage.batch_size,), generator=torch.Generator().manual_seed(step))
        batch = batch.chunk(shares)[share]  # (B / shares,): this micro-batch of the step's global batch
        return crop_classification_loss(ddp(seen), crops["embeddings"][batch].to(run.device),
                                        crops["targets"][batch].to(run.device), clip.model.logit_scale.exp())

    evaluations = _segmentation_evaluation(DeOP(proposals, classifier), world, run) if proposals is not None else (None, None)
    return _train("offline text prompts", classifier.learned, ddp, micro_loss, stage.train, run,
                  metadata or {"stage": asdict(stage)}, TRAIN_COMMANDS["deop"], *evaluations, settings=stage)


def train_proposals(world: World, stage: ProposalStage, run: Run) -> MaskProposalNetwork:
    """Stage 2: the class-agnostic mask proposal network on the seen classes of ``world`` (``losses.
    mask_proposal_loss``); in the toy world, evaluated by its recall of seen and unseen segments."""
    runtime.set_seed(stage.train.seed)
    model = MaskProposalNetwork(stage.model).to(run.device)
    label_map = seen_label_map(world.class_names, world.seen_classes).to(run.device) if stage.model.class_aware else None
    ddp = run.wrap(model)

    def micro_loss(step: int, share: int, shares: int):
        batch = run.batch(world, step, stage.batch_size, share, shares)
        with run.autocast():
            outputs = ddp(model.normalize(batch["image_raw"]))  # masks (B, N, H/4, W/4) and aux
        losses = mask_proposal_loss(full_precision(outputs), batch["label"], stage.model, label_map)
        return losses.pop("loss"), losses

    def evaluate() -> dict:
        recall = proposal_recall(model, world.validation_set(run.eval_scenes), world.class_names, world.seen_classes,
                                 refinement=world.refinement)
        return {f"{k}_{m}": v for k, v in recall.items() if k in ("seen", "unseen") for m, v in v.items()}

    def final_evaluation() -> dict:
        return {"recall": proposal_recall(model, world.validation_set(run.val_scenes), world.class_names,
                                          world.seen_classes, refinement=world.refinement), "val_scenes": run.val_scenes}

    summary = _train("proposal network", model, ddp, micro_loss, stage.train, run, {"stage": asdict(stage)},
                     TRAIN_COMMANDS["proposals"], evaluate, final_evaluation, settings=stage)
    if summary and "recall" in summary:
        print(format_recall(summary["recall"]))
    return model


def full_precision(outputs: dict) -> dict:
    """The proposal network's outputs in the default dtype, out of bf16 autocast (the losses and the matching
    are computed in full precision)."""
    dtype = torch.get_default_dtype()
    return {"masks": outputs["masks"].to(dtype), "aux": [full_precision(aux) for aux in outputs.get("aux", [])],
            **({"logits": outputs["logits"].to(dtype)} if "logits" in outputs else {})}


def train_deop(world: World, stage: DeOPStage, run: Run, model: DeOP, metadata: dict | None = None) -> dict | None:
    """Stage 3: DeOP's learned parts (``model.learned``) end to end with its segmentation loss on the seen classes
    of ``world``; the proposal network and CLIP stay frozen. The proposals are the network's own masks, as DeepLab
    trained without the CRF it applied at test time. Returns the training summary (None when paused)."""
    if not stage.train_text and model.learned.text_prompts is not None:
        model.learned.text_prompts.requires_grad_(False)
    seen, label_map = list(world.seen_classes), seen_label_map(world.class_names, world.seen_classes).to(run.device)
    ddp = run.wrap(model)

    def micro_loss(step: int, share: int, shares: int):
        batch = run.batch(world, step, stage.batch_size, share, shares)
        label = half_resolution(label_map[batch["label"]])  # (b, H/2, W/2) seen-class indices
        with run.autocast():
            outputs = ddp(batch["image_raw"], seen)
        dtype = torch.get_default_dtype()
        losses = deop_segmentation_loss(outputs["logits"].to(dtype), outputs["mask_probs"].to(dtype), label,
                                        ignore_as_void=stage.ignore_as_void)
        return losses.pop("loss"), losses

    evaluate, final_evaluation = _segmentation_evaluation(model, world, run)
    return _train("DeOP", model.learned, ddp, micro_loss, stage.train, run, metadata or {"stage": asdict(stage)},
                  TRAIN_COMMANDS["deop"], evaluate, final_evaluation, settings=stage)


# ----------------------------------------------------------------------------------------------------
# The toy world's shipped files: load-or-train

TRAIN_COMMANDS = {"clip": "python -m deop_lite.stages train clip",
                  "proposals": "python -m deop_lite.stages train proposals",
                  "deop": "python -m deop_lite.stages train deop --variant NAME"}
"""The commands that re-train the toy world's shipped files."""
PROPOSALS_CHECKPOINT = runtime.DATA_DIR / "toy_proposals.safetensors"
DEOP_DIR = runtime.DATA_DIR / "deop"
SWEEP_FILE = DEOP_DIR / "severance_sweep.json"
"""The severed-blocks sweep: ``python tools/severance_sweep.py`` (runs resumable, in ``runs/sweep/``)."""


def load_proposals(path: str | Path = PROPOSALS_CHECKPOINT) -> tuple[MaskProposalNetwork, dict]:
    """The shipped (or another saved) proposal network in eval mode, and its metadata."""
    return load_weights(path, lambda meta: MaskProposalNetwork(ProposalStage.from_dict(meta["stage"]).model),
                        TRAIN_COMMANDS["proposals"])


def _learned_text(ctx_init: str | None = "a photo of a", severance: Severance = NONE,
                  anchors: AnchorConfig | None = None, **visual) -> DeOPConfig:
    return DeOPConfig(PromptConfig(text="learned", ctx_init=ctx_init, **visual), severance=severance,
                      anchors=anchors or AnchorConfig(), void=True)


CAL_LR = 0.1
"""CAL's decoder learns at a tenth of the prompts' rate: the official code's 2e-4 (DeOP's scripts/deop_train.sh), where the
toy prompts use 2e-3. With the prompts' rate and no dropout, the decoder fits the seen classes (docs/experiments.md)."""


def _baseline_plus(severance: Severance = NONE, anchors: AnchorConfig | None = None) -> DeOPStage:
    """Baseline+ (learned text from the offline init, added visual prompts), optionally with PS and CAL (with
    the official code's dropout 0.1, at ``CAL_LR`` times the learning rate)."""
    stage = DeOPStage(_learned_text(visual="add", severance=severance, anchors=anchors), init_from="text_offline")
    if anchors is not None:
        stage.model.anchors = replace(anchors, dropout=0.1)
        stage.train.lr_multipliers = {"anchor_decoder.": CAL_LR}
    return stage


GPS_TOY = last_blocks_severed(2, ToyClipConfig.vision_layers)
"""The toy DeOP's patch severance: GPS α = 1 in the last 2 of the toy CLIP's 4 blocks. The first two blocks still mix
the patch tokens, as ViT-B/16's first eleven do when the paper severs its last: the regime in which the paper's Table 3
holds and CAL has mixing to repair (the sweep of notebook 04 §6; docs/experiments.md). Every block can be severed in
the shipped toy CLIP (pre-trained for it; notebook 03 shows a toy CLIP pre-trained like ViT-B/16 that cannot)."""

VARIANTS: dict[str, tuple[str, DeOPStage]] = {
    "text_offline": ("text prompt learned offline on seen-class crops (the paper's baseline classifier)",
                     DeOPStage(DeOPConfig(PromptConfig(text="learned")), objective="crops", batch_size=64,
                               train=TrainConfig(steps=300, lr=2e-3, weight_decay=0.0, warmup_steps=20, log_every=25,
                                                 checkpoint_every=100))),
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
                      _baseline_plus(severance=Severance("gps", {-1: 1.0}))),
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
"""The toy world's named variants, each a row of the paper's ablation tables: (description, stage). "baseline"
(nothing learned) needs no file."""


def variant_stage(name: str) -> DeOPStage:
    """A fresh copy of a variant's stage (callers may edit it)."""
    if name not in VARIANTS:
        raise checks.InputError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)} (or 'baseline')")
    return DeOPStage.from_dict(json.loads(json.dumps(asdict(VARIANTS[name][1]))))


def checkpoint_path(variant: str) -> Path:
    return DEOP_DIR / f"{variant}.safetensors"


def train_command(variant: str) -> str:
    return TRAIN_COMMANDS["deop"].replace("NAME", variant)


def shipped_history(variant: str) -> list[dict]:
    """The training log shipped beside a variant's file (``data/deop/<variant>_train.log``), one record per log line."""
    return read_log(checkpoint_path(variant).with_name(f"{variant}_train.log"))


def severance_sweep() -> list[dict]:
    """The runs of the severed-blocks sweep (``SWEEP_FILE``): each a dict with ``clip`` ("shipped", or "like_vit_b16",
    ``clip.TOY_CLIP_LIKE_VIT_B16``), ``variant`` ("ps" or "deop"), ``blocks`` (K, the last K blocks severed),
    ``steps``, ``final`` (pAcc, mIoU, seen, unseen, hIoU on 200 validation scenes), ``curve`` (the in-training
    evaluations on 48 scenes), ``cal_gain`` and the ``command`` that re-trains it."""
    if not SWEEP_FILE.is_file():
        raise checks.CheckpointMissing(f"no sweep results at {SWEEP_FILE}: restore them with `git checkout -- "
                                       f"{SWEEP_FILE.name}` (in data/deop/) or run `python tools/severance_sweep.py`")
    return json.loads(SWEEP_FILE.read_text())["runs"]


def load_deop(variant: str = "baseline_plus", path: str | Path | None = None, proposals: nn.Module | None = None,
              clip: ClipModel | None = None) -> DeOP:
    """A trained toy variant in eval mode: the shipped proposal network and toy CLIP plus its learned parts.

    ``variant="baseline"`` is the untrained baseline (no file). ``path`` overrides the shipped file.
    """
    proposals = proposals if proposals is not None else load_proposals()[0]
    if variant == "baseline" and path is None:
        return DeOP(proposals, MaskClassifier(clip or load_clip("toy"))).eval()
    path = Path(path) if path is not None else checkpoint_path(variant)
    if clip is None:  # the toy CLIP the variant was trained with (the shipped one unless its stage names another)
        trained_with = read_metadata(path).get("stage", {}).get("clip") if path.is_file() else None
        clip = load_clip("toy", pretrained=trained_with)
    num_queries = proposals.config.num_queries
    learned, metadata = load_weights(path, lambda meta: LearnedParts(
        clip, DeOPStage.from_dict(meta["stage"]).model, num_queries), train_command(variant))
    if metadata.get("variant", variant) != variant:
        raise checks.CheckpointError(f"{path} holds the variant {metadata['variant']!r}, not {variant!r}: pass "
                                     f"--variant {metadata['variant']} (or load_deop({metadata['variant']!r}, path))")
    model = DeOP(proposals, MaskClassifier(clip, DeOPStage.from_dict(metadata["stage"]).model, num_queries, learned))
    model.metadata = metadata
    return model.eval()


def load_or_train_deop(variant: str, proposals: nn.Module | None = None, clip: ClipModel | None = None) -> DeOP:
    """The shipped variant; trained first (see :func:`train_variant`) when its file is missing."""
    if variant != "baseline" and not checkpoint_path(variant).exists():
        print(f"{checkpoint_path(variant)} not found: training it ({train_command(variant)})")
        train_variant(variant)
    return load_deop(variant, proposals=proposals, clip=clip)


def train_variant(variant: str, stage: DeOPStage | None = None, run_dir: str | Path | None = None,
                  out: str | Path | None = None, val_scenes: int = 200) -> DeOP:
    """Train one toy variant's learned parts (resumable) on the shipped proposal network and toy CLIP, starting
    from the text context of ``stage.init_from``; evaluate it and save it as safetensors."""
    stage = stage or variant_stage(variant)
    run = Run(run_dir or f"runs/deop/{variant}", out or checkpoint_path(variant), val_scenes=val_scenes)
    runtime.set_seed(stage.train.seed)
    proposals, clip = load_proposals()[0], load_clip("toy", pretrained=stage.clip)
    model = DeOP(proposals, MaskClassifier(clip, stage.model, proposals.config.num_queries))
    if stage.init_from is not None and stage.clip is None:
        start = load_or_train_deop(stage.init_from, proposals, clip)
    elif stage.init_from is not None:  # another CLIP: its own offline text prompt, kept beside `out`
        init_path = run.out.with_name(f"{stage.init_from}_{Path(stage.clip).stem}.safetensors")
        if not init_path.exists():
            init_stage = variant_stage(stage.init_from)
            init_stage.clip = stage.clip
            train_variant(stage.init_from, init_stage, run.run_dir.with_name(f"{run.run_dir.name}_{stage.init_from}"),
                          init_path)
        start = load_deop(stage.init_from, init_path, proposals, clip)
    if stage.init_from is not None:
        model.learned.text_prompts.load_state_dict(start.learned.text_prompts.state_dict())
    world = ToyWorld(stage.image_size)
    metadata = {"stage": asdict(stage), "variant": variant}
    if stage.objective == "crops":
        summary = train_text_prompts(world, stage, run, model.classifier, proposals, metadata)
    else:
        summary = train_deop(world, stage, run, model, metadata)
    print(format_table({variant: summary["metrics"]}))
    return model


def train_briefly(variant: str, steps: int, val_scenes: int = 16) -> DeOP:
    """A live run of ``steps`` steps of a variant's training, in a temporary folder (the shipped file untouched)."""
    stage = variant_stage(variant)
    stage.train.steps = stage.train.log_every = stage.train.checkpoint_every = steps
    with tempfile.TemporaryDirectory() as tmp:
        return train_variant(variant, stage, run_dir=tmp, out=f"{tmp}/{variant}.safetensors", val_scenes=val_scenes)


# ----------------------------------------------------------------------------------------------------
# The command line: python -m deop_lite.stages {train,eval} {clip,proposals,deop}

_DEFAULTS = {"clip": (TOY_CLIP_CHECKPOINT, "runs/toy_clip"), "proposals": (PROPOSALS_CHECKPOINT, "runs/proposals"),
             "deop": (None, None)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deop_lite.stages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a stage of the toy world (resumes from --run-dir when interrupted)")
    evaluate = commands.add_parser("eval", help="evaluate a saved file of the toy world")
    trains = train.add_subparsers(dest="stage", required=True)
    evals = evaluate.add_subparsers(dest="stage", required=True)
    for stage, (checkpoint, run_dir) in _DEFAULTS.items():
        t = trains.add_parser(stage)
        t.add_argument("--steps", type=int, help="override the number of steps (default: the config's)")
        t.add_argument("--tiny", action="store_true", help="a few steps of a small model (smoke test)")
        t.add_argument("--run-dir", default=run_dir, help="checkpoints and log (resume from here)"
                       + ("" if run_dir else "; default: per variant"))
        t.add_argument("--out", default=checkpoint and str(checkpoint), help="where to write the safetensors file"
                       + ("" if checkpoint else "; default: per variant"))
        e = evals.add_parser(stage)
        e.add_argument("--checkpoint", default=checkpoint and str(checkpoint),
                       help="default: " + (str(checkpoint) if checkpoint else "the shipped file of the variant"))
        if stage != "clip":
            e.add_argument("--scenes", type=int, default=200, help="validation scenes")
            e.add_argument("--refine-iterations", type=int, default=ToyWorld.refinement.iterations,
                           help="refine the proposals along colour edges this many times (proposals.Refinement; "
                                "0: the network's own masks; default: %(default)s, the toy world's)")
    t, e = trains.choices["clip"], evals.choices["clip"]
    t.add_argument("--like-vit-b16", action="store_true", help="CLS pooling, no severance in pre-training, no "
                   "stem context (ToyClipConfig.like_vit_b16); pass --out and --run-dir to keep the shipped CLIP")
    e.add_argument("--per-class", type=int, default=50, help="single-class validation images per class")
    e.add_argument("--gate-scenes", type=int, default=0, help="also classify the ground-truth masks of this many "
                   "validation scenes, one pass against multi-pass crops (the gate of notebook 00; 0: skip)")
    t = trains.choices["proposals"]
    t.add_argument("--class-aware", action="store_true", help="the official code's class-aware MaskFormer")
    t.add_argument("--ignored-pixels", choices=("excluded", "negative"), default="excluded",
                   help="ignored (unseen) pixels left out of the mask losses, or background of every matched "
                        "mask as in the official MaskFormer loss")
    t.add_argument("--seed", type=int, help="override the training seed (initialisation; the scenes stay fixed)")
    evals.choices["proposals"].add_argument("--first-scene", type=int, default=0,
                                            help="index of the first validation scene")
    t, e = trains.choices["deop"], evals.choices["deop"]
    t.description = "Variants:\n" + "\n".join(f"  {k}: {v[0]}" for k, v in VARIANTS.items())
    t.formatter_class = argparse.RawDescriptionHelpFormatter
    t.add_argument("--variant", required=True, choices=list(VARIANTS))
    t.add_argument("--severed-blocks", type=int, metavar="K",
                   help="sever the last K blocks of the toy CLIP (GPS, α = 1; 0: none) instead of the variant's "
                        f"setting, K in 0..{ToyClipConfig.vision_layers} (the sweep of docs/experiments.md)")
    t.add_argument("--clip", metavar="PATH", help="another toy CLIP checkpoint (python -m deop_lite.stages train clip "
                   "--like-vit-b16); the offline text prompt it starts from is trained beside --out")
    e.add_argument("--variant", required=True, choices=["baseline", *VARIANTS])
    return parser


def _check(args) -> Refinement | None:
    """Validate the parsed arguments before anything runs; the refinement an ``eval`` asks for."""
    for name in ("steps", "scenes", "per_class"):
        if getattr(args, name, None) is not None:
            checks.at_least(getattr(args, name), 1, "--" + name.replace("_", "-"))
    for name in ("refine_iterations", "first_scene", "gate_scenes", "severed_blocks"):
        if getattr(args, name, None) is not None:
            checks.at_least(getattr(args, name), 0, "--" + name.replace("_", "-"))
    if getattr(args, "out", None):
        out = Path(args.out)
        if out.is_dir():
            raise checks.InputError(f"--out {out} is a folder; name the .safetensors file to write")
        checks.output_folder(out.parent, "the folder of --out")
    if getattr(args, "run_dir", None):
        checks.output_folder(args.run_dir, "--run-dir")
    if getattr(args, "clip", None):
        checks.input_file(args.clip, "--clip")
    iterations = getattr(args, "refine_iterations", 0)
    return replace(ToyWorld.refinement, iterations=iterations) if iterations else None


def _train_from_cli(args) -> None:
    tiny_run = dict(eval_scenes=8, val_scenes=8) if args.tiny else {}
    if args.stage == "clip":
        config = ToyClipConfig.tiny() if args.tiny else ToyClipConfig.like_vit_b16() if args.like_vit_b16 else ToyClipConfig()
        config.train.steps = args.steps or config.train.steps
        train_toy_clip(ToyWorld(), config, Run(args.run_dir, args.out))
    elif args.stage == "proposals":
        stage = ProposalStage.tiny() if args.tiny else ProposalStage()
        stage.model.class_aware, stage.model.ignored_pixels = args.class_aware, args.ignored_pixels
        stage.train.seed = stage.train.seed if args.seed is None else args.seed
        stage.train.steps = args.steps or stage.train.steps
        # A class head has no class for a segment of no class: the class-aware variant trains on labelled ones only.
        world = ToyWorld(stage.image_size, segments_of_no_class=not stage.model.class_aware)
        train_proposals(world, stage, Run(args.run_dir, args.out, **tiny_run))
    else:
        stage = variant_stage(args.variant)
        if args.tiny:
            stage.train = TrainConfig(steps=2, warmup_steps=1, log_every=1, checkpoint_every=2)
            stage.batch_size, stage.image_size, stage.crops_per_class = 2, 64, 2
        stage.train.steps = args.steps or stage.train.steps
        if args.severed_blocks is not None:
            stage.model.severance = last_blocks_severed(args.severed_blocks, ToyClipConfig.vision_layers)
        stage.clip = str(args.clip) if args.clip else None
        train_variant(args.variant, stage, args.run_dir, args.out, val_scenes=8 if args.tiny else 200)


def _evaluate_from_cli(args, refinement: Refinement | None) -> None:
    world = ToyWorld()
    if args.stage == "clip":
        clip = load_clip("toy", pretrained=args.checkpoint)
        result = toyclip.evaluate_zero_shot(clip, n_per_class=args.per_class)
        print(f"zero-shot classification over {len(world.class_names)} classes: {toyclip.format_zero_shot(result)}")
        if args.gate_scenes:
            print(f"ground-truth masks of {args.gate_scenes} validation scenes (mIoU, %):")
            for name, row in toyclip.ground_truth_gate(clip, args.gate_scenes).items():
                things = " ".join(f"{c} {row['IoU'][c]:.0f}" for c in world.thing_classes)
                print(f"  {name:30s} seen {row['seen']:5.1f}  unseen {row['unseen']:5.1f}  hIoU {row['hIoU']:5.1f}  "
                      f"things {row['things']:5.1f}  ({things})")
    elif args.stage == "proposals":
        model, meta = load_proposals(args.checkpoint)
        scenes = torch.utils.data.Subset(ToyWorld(ProposalStage.from_dict(meta["stage"]).image_size).validation_set(
            args.first_scene + args.scenes), range(args.first_scene, args.first_scene + args.scenes))
        print(format_recall(proposal_recall(model, scenes, world.class_names, world.seen_classes, refinement=refinement)))
    else:
        model = load_deop(args.variant, args.checkpoint)
        print(format_table({args.variant: evaluate_deop(model, args.scenes, world, refinement=refinement)}))


@checks.command("python -m deop_lite.stages")
def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    refinement = _check(args)
    if args.command == "train":
        _train_from_cli(args)
    else:
        _evaluate_from_cli(args, refinement)


if __name__ == "__main__":
    main()
