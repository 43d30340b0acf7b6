"""DeOP at the paper's scale: presets, multi-GPU, evaluation (paper §5; DeOP's scripts/deop_train.sh).

The same modules and the same stages (``deop_lite.stages``) as the toy world, run on a real dataset's world
(``datasets.DatasetWorld``) with a real open_clip CLIP:

    stage 1  prompts    the text context, learned offline on seen-class segment crops   -> prompts.safetensors
    stage 2  proposals  the MaskFormer proposal network, trained on seen classes        -> proposals.safetensors
    stage 3  deop       prompts (text + visual), CAL and void, end to end, both frozen  -> deop.safetensors

Each stage is load-or-train: ``train`` skips it when its file exists in the run folder, and it resumes
from its ``last.pt`` when interrupted. One process or many:

    python -m deop_lite.realworld train --preset voc --data ~/data/deop/voc
    torchrun --nproc_per_node 4 -m deop_lite.realworld train --preset coco --data ~/data/deop/coco_stuff
    python -m deop_lite.realworld eval --preset voc --data ~/data/deop/voc --json results/voc.json

Multi-GPU: the global batch of every step is fixed by the step number (``world.World.training_batch``);
each of W processes takes 1/W of it (and 1/A of that per micro-batch with gradient accumulation A), and
``DistributedDataParallel`` averages the gradients, so W processes take the steps one process would take.
Checkpoints hold no trace of W: a run may resume on another number of GPUs.
"""
from __future__ import annotations

import contextlib
import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import checks, runtime, stages
from .anchors import AnchorConfig
from .clip import ClipModel, load_clip
from .datasets import DatasetWorld, SegmentationDataset, dataset_info, prepare
from .losses import deop_segmentation_loss, half_resolution, mask_proposal_loss
from .metrics import SegmentationMeter
from .model import DeOP, DeOPConfig, LearnedParts, MaskClassifier
from .prompts import PromptConfig
from .proposals import MaskProposalNetwork, ProposalConfig
from .severance import GPS_LAST
from .stages import DeOPStage, ProposalStage, Run
from .train import TrainConfig, distributed, load_weights, rank, world_size

STAGES = ("prompts", "proposals", "deop")

PAPER_RESULTS = {  # DeOP, ViT-B/16 (paper Tables 1 and 2): hIoU, seen, unseen mIoU; cross-dataset mIoU
    "voc": {"hIoU": 80.8, "seen": 88.2, "unseen": 74.6},
    "coco_stuff": {"hIoU": 38.2, "seen": 38.0, "unseen": 38.4},
    "cross": {"voc": 91.7, "context59": 48.8, "ade150": 22.9},
}


@dataclass
class StageConfig:
    """One stage's optimisation: ``batch_size`` is the global batch (all GPUs, all micro-batches)."""
    train: TrainConfig
    batch_size: int
    accumulate: int = 1  # micro-batches per step and process (gradient accumulation)


@dataclass
class RealConfig:
    """Everything a real-world run needs. Presets: :meth:`voc`, :meth:`coco`, :meth:`tiny`, and
    :meth:`for_consumer_gpu` to shrink any of them for one 24 GB GPU."""
    name: str
    dataset: str  # "voc" or "coco_stuff": the training set (its prepared folder is given separately)
    clip: str = "ViT-B-16"
    clip_weights: str | None = "openai"  # "openai", a checkpoint path, or None: random (tests, CI)
    pixel_norm: str = "clip"  # CLIP's mean / std; "imagenet" is the official code's choice (see clip.py)
    crop: int = 512
    eval_short_side: int = 512
    eval_max_side: int = 2048
    proposals: ProposalConfig = field(default_factory=ProposalConfig.real)
    model: DeOPConfig = field(default_factory=lambda: DeOPConfig(
        PromptConfig.real(), severance=GPS_LAST, anchors=AnchorConfig("query", 1, 8, 1024, 0.1), void=True))
    crops_per_class: int = 128  # stage 1 data: SimBaseline's SAMPLE_PER_CLASS (VOC 128, COCO 32)
    ignore_as_void: bool = False  # True: the official loss (unseen pixels supervised as void)
    stages: dict[str, StageConfig] = field(default_factory=dict)
    bf16: bool = False  # bfloat16 autocast for the forward passes (GPU)
    float64: bool = False  # train in float64 (CPU): equivalence checks, where float32 rounding would decide
    seed: int = 0

    @classmethod
    def voc(cls) -> RealConfig:
        """PASCAL VOC 15/5 as in the official VOC config (DeOP's
        configs/voc-11k-15/zero_shot_maskformer_R101c_bs16_20k_proposalmask_featupsample_img512.yaml): batch 16, 20k
        iterations, 512 crops."""
        return cls("voc", "voc", stages={
            # SimBaseline: SGD lr 0.02, batch 32, 3.2k iterations; our shared loop is AdamW (lr chosen for it)
            "prompts": StageConfig(TrainConfig(steps=3200, lr=2e-3, weight_decay=0.0, warmup_steps=100,
                                               log_every=50, checkpoint_every=500), batch_size=32),
            "proposals": StageConfig(TrainConfig(steps=20_000, lr=1e-4, weight_decay=1e-4, warmup_steps=0,
                                                 schedule="poly", grad_clip=0.01, log_every=50,
                                                 checkpoint_every=1000, lr_multipliers={"backbone.": 0.1}),
                                     batch_size=16),
            "deop": StageConfig(TrainConfig(steps=20_000, lr=2e-4, weight_decay=1e-4, warmup_steps=0,
                                            schedule="poly", grad_clip=0.01, log_every=50, checkpoint_every=1000),
                                batch_size=16)})

    @classmethod
    def coco(cls) -> RealConfig:
        """COCO-Stuff 156/15 as in the official scripts (DeOP's scripts/train_learn_prompts.sh,
        train_learned_prompts_maskformer.sh and deop_train.sh)."""
        voc = cls.voc()
        stages = {
            "prompts": replace(voc.stages["prompts"], train=replace(voc.stages["prompts"].train, steps=16_000)),
            "proposals": StageConfig(replace(voc.stages["proposals"].train, steps=60_000, checkpoint_every=5000), 32),
            "deop": StageConfig(replace(voc.stages["deop"].train, steps=60_000, checkpoint_every=5000), 16)}
        return cls("coco", "coco_stuff", eval_max_side=2560, crops_per_class=32, stages=stages)

    @classmethod
    def tiny(cls) -> RealConfig:
        """CI: the VOC fixture, a random-initialised ViT-B/16 at 224 px, a small ResNet-18 MaskFormer with
        10 queries, a few steps per stage. Shows that the path runs, not what it learns."""
        proposals = ProposalConfig(backbone="resnet18", num_queries=10, dim=64, mask_dim=64, layers=2, heads=4,
                                   ffn_dim=128, num_classes=15)
        few = dict(steps=2, warmup_steps=0, log_every=1, checkpoint_every=2)
        return cls("tiny", "voc", clip_weights=None, crop=224, eval_short_side=224, eval_max_side=320,
                   proposals=proposals, crops_per_class=2, stages={
                       "prompts": StageConfig(TrainConfig(lr=2e-3, weight_decay=0.0, **few), batch_size=8),
                       "proposals": StageConfig(TrainConfig(lr=1e-4, schedule="poly", grad_clip=0.01, **few), 2),
                       "deop": StageConfig(TrainConfig(lr=2e-4, schedule="poly", grad_clip=0.01, **few), 2)})

    def for_consumer_gpu(self) -> RealConfig:
        """The same run on one 24 GB GPU (nanoGPT-style: what is shrunk, and why it keeps the recipe):

        - **bf16 autocast**: halves activation memory and doubles matmul speed on Ampere and newer; the
          weights, the optimiser and the losses stay fp32.
        - **gradient accumulation**: the global batch (16 for DeOP, 16/32 for the proposals) is kept, made
          of micro-batches of 4 images, so the learning rates and schedules stay the paper's.
        - everything else (steps, crops, N = 100, ViT-B/16) unchanged: the run is slower, not different.
        """
        stages = {name: replace(stage, accumulate=max(1, stage.batch_size // 4) if name != "prompts" else 1)
                  for name, stage in self.stages.items()}
        return replace(self, name=self.name + "_consumer", bf16=True, stages=stages)

    @classmethod
    def from_dict(cls, d: dict) -> RealConfig:
        proposals = checks.known_fields(ProposalConfig, d["proposals"], "the run's proposal settings")
        proposals["toy_widths"] = tuple(proposals["toy_widths"])
        stages = {k: StageConfig(TrainConfig(**v["train"]), v["batch_size"], v["accumulate"]) for k, v in d["stages"].items()}
        return cls(**{**d, "proposals": ProposalConfig(**proposals), "model": DeOPConfig.from_dict(d["model"]),
                      "stages": stages})


PRESETS: dict[str, Callable[[], RealConfig]] = {"voc": RealConfig.voc, "coco": RealConfig.coco, "tiny": RealConfig.tiny}

FIXTURE = runtime.DATA_DIR / "fixtures" / "voc"  # 17 real VOC images in the official layout (tools/make_voc_fixture.py)


def preset(name: str, consumer_gpu: bool = False, **overrides) -> RealConfig:
    """A named preset (``voc``, ``coco``, ``tiny``), optionally shrunk for one consumer GPU, with overrides."""
    if name not in PRESETS:
        raise checks.InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]()
    config = config.for_consumer_gpu() if consumer_gpu else config
    return replace(config, **overrides)


def prepare_fixture(out: str | Path) -> Path:
    """The VOC fixture prepared like the real dataset (what CI and the tiny preset train on)."""
    prepare("voc", FIXTURE, out, progress=False)
    return Path(out)


# ----------------------------------------------------------------------------------------------------
# Processes, devices, precision

def init_distributed() -> torch.device:
    """Join the process group when started by torchrun (NCCL on GPUs, gloo on CPUs); return this process's device."""
    device = runtime.default_device()
    if runtime.launched_by_torchrun() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


@contextlib.contextmanager
def _default_dtype(config: RealConfig):
    """Models built and inputs cast inside this block are float64 when ``config.float64``, else float32.

    Why float64 exists: W processes (or A micro-batches) add the same per-image losses in another order than
    one process does. In float32 that reordering changes a sum by ~1e-7, and a few AdamW steps, which divide
    each gradient by its running RMS, enlarge it past any tolerance that would still catch a bug; in float64
    the same reordering changes results by ~1e-16, so the runs can be compared almost exactly."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if config.float64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _clip(config: RealConfig, device: torch.device) -> ClipModel:
    runtime.set_seed(config.seed)  # random weights (tests) must be the same in every process
    return load_clip(config.clip, pretrained=config.clip_weights, device=device, pixel_norm=config.pixel_norm)


# ----------------------------------------------------------------------------------------------------
# The three stages: ``deop_lite.stages`` run on the dataset's world, with this preset's configs

def text_prompt_stage(config: RealConfig) -> DeOPStage:
    """Stage 1's config: the preset's text context alone, on seen-class crops."""
    stage = config.stages["prompts"]
    return DeOPStage(DeOPConfig(replace(config.model.prompts, visual="none")), objective="crops",
                     train=replace(stage.train, seed=config.seed), batch_size=stage.batch_size,
                     crops_per_class=config.crops_per_class)


def proposal_stage(config: RealConfig) -> ProposalStage:
    """Stage 2's config."""
    stage = config.stages["proposals"]
    return ProposalStage(config.proposals, replace(stage.train, seed=config.seed), stage.batch_size)


def deop_stage(config: RealConfig) -> DeOPStage:
    """Stage 3's config."""
    stage = config.stages["deop"]
    return DeOPStage(config.model, ignore_as_void=config.ignore_as_void, train=replace(stage.train, seed=config.seed),
                     batch_size=stage.batch_size)


def _run(config: RealConfig, name: str, run_dir: Path, device: torch.device, stop_at: int | None) -> Run:
    """Where stage ``name`` writes (``run_dir/name/``, ``run_dir/name.safetensors``) and how its steps run: this
    process's device, the preset's micro-batches and precision, DistributedDataParallel across processes; no
    evaluation during training (:func:`evaluate` runs apart)."""
    return Run(run_dir / name, run_dir / f"{name}.safetensors", device, config.stages[name].accumulate, config.bf16,
               stop_at, eval_scenes=0, val_scenes=0, wrap=lambda module: distributed(module, device))


def _metadata(config: RealConfig, stage) -> dict:
    return {"real_config": asdict(config), "stage": asdict(stage)}


def run_stage(name: str, config: RealConfig, world: DatasetWorld, run_dir: Path, device: torch.device,
              stop_at: int | None = None) -> bool:
    """Stage ``name`` of ``STAGES`` on the dataset's world: ``stages.train_text_prompts``, ``train_proposals`` or
    ``train_deop`` (on the proposals and text context of the stages before it), with this preset's configs. True once
    every step has run."""
    run = _run(config, name, run_dir, device, stop_at)
    if name == "prompts":
        stage = text_prompt_stage(config)
        classifier = MaskClassifier(_clip(config, device), stage.model).to(device)
        stages.train_text_prompts(world, stage, run, classifier, metadata=_metadata(config, stage))
    elif name == "proposals":
        stages.train_proposals(world, proposal_stage(config), run)
    else:
        runtime.set_seed(config.seed)
        stage = deop_stage(config)
        stages.train_deop(world, stage, run, build_deop(config, run_dir, device), _metadata(config, stage))
    return run.out.exists()


def build_deop(config: RealConfig, run_dir: Path | None, device: torch.device, proposals_path: Path | None = None,
               deop_path: Path | None = None, prompts_path: Path | None = None) -> DeOP:
    """DeOP from a run folder's files (or explicit paths): the trained proposal network, CLIP, and the learned
    parts (from ``deop.safetensors``; else fresh, with the text context of ``prompts.safetensors``)."""
    retrain = f"python -m deop_lite.realworld train --preset {config.name}"
    proposals_path = proposals_path or run_dir / "proposals.safetensors"
    proposals = load_weights(proposals_path, lambda meta: MaskProposalNetwork(config.proposals), retrain)[0]
    clip = _clip(config, device)
    num_queries = config.proposals.num_queries
    learned = None
    deop_path = deop_path or (run_dir / "deop.safetensors" if run_dir else None)
    if deop_path is not None and deop_path.exists():
        learned = load_weights(deop_path, lambda meta: LearnedParts(clip, config.model, num_queries), retrain)[0]
    model = DeOP(proposals, MaskClassifier(clip, config.model, num_queries, learned)).to(device)
    prompts_path = prompts_path or (run_dir / "prompts.safetensors" if run_dir else None)
    if learned is None and prompts_path is not None and prompts_path.exists() and model.learned.text_prompts is not None:
        text = load_weights(prompts_path, lambda meta: LearnedParts(clip, text_prompt_stage(config).model), retrain)[0]
        model.learned.text_prompts.load_state_dict(text.text_prompts.state_dict())
    return model


def train(config: RealConfig, data: str | Path, run_dir: str | Path, stages=STAGES, stop_at: int | None = None) -> Path:
    """Run the stages in order (each skipped when its file exists); return the run folder."""
    device, data, run_dir = init_distributed(), Path(data), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank() == 0:
        with checks.atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(asdict(config), indent=1))
        print(f"{config.name}: {world_size()} process(es) on {device}; data {data}; run folder {run_dir}")
    world = DatasetWorld(data, config.crop, config.seed)
    for name in stages:
        tic = time.perf_counter()
        if (run_dir / f"{name}.safetensors").exists():  # load-or-train: a finished stage is not run again
            continue
        with _default_dtype(config):
            finished = run_stage(name, config, world, run_dir, device, stop_at)
        if not finished:
            if rank() == 0:
                print(f"stage {name}: paused at step {stop_at} (--stop-at); run the same command again to resume")
            break
        if rank() == 0:
            print(f"stage {name}: done in {time.perf_counter() - tic:.1f} s")
    return run_dir


# ----------------------------------------------------------------------------------------------------
# Throughput and memory of a training step (no data needed: random pixels, random weights)

def throughput(config: RealConfig, stage: str = "deop", micro_batch: int = 1, steps: int = 3, warmup: int = 1,
               device: torch.device | None = None) -> dict:
    """Training images/s and peak memory of one stage's step (forward, backward, AdamW) at the preset's crop.

    Weights are random and pixels are noise: the cost of a step does not depend on either. On a GPU the
    peak is ``torch.cuda.max_memory_allocated``; on a CPU the process's peak resident memory (which also
    counts Python and every model built so far). Returns {images_per_s, s_per_step, peak_memory_gb, ...}.
    """
    device = device or runtime.default_device()
    config = replace(config, clip_weights=None, proposals=replace(config.proposals, pretrained_backbone=False))
    runtime.set_seed(config.seed)
    seen = list(dataset_info(config.dataset).seen)
    proposals = MaskProposalNetwork(config.proposals).to(device)
    if stage == "proposals":
        module = proposals

        def loss_of(images, label):
            outputs = module(module.normalize(images))
            return mask_proposal_loss(stages.full_precision(outputs), label, config.proposals)["loss"]
    elif stage == "deop":
        deop = DeOP(proposals, MaskClassifier(_clip(config, device), config.model, config.proposals.num_queries)).to(device)
        module = deop.learned

        def loss_of(images, label):
            outputs = deop(images, seen)  # the network's own masks: the real world refines no proposals
            return deop_segmentation_loss(outputs["logits"].float(), outputs["mask_probs"].float(),
                                          half_resolution(label))["loss"]
    else:
        raise ValueError(f"throughput is measured for the 'proposals' and 'deop' stages, not {stage!r}")
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-6)
    images = torch.rand(micro_batch, 3, config.crop, config.crop, device=device)
    label = torch.randint(len(seen), (micro_batch, config.crop, config.crop), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = loss_of(images, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    seconds = sorted(times)[len(times) // 2]
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"stage": stage, "preset": config.name, "clip": config.clip, "crop": config.crop, "micro_batch": micro_batch,
            "bf16": config.bf16, "device": str(device), "s_per_step": seconds, "images_per_s": micro_batch / seconds,
            "peak_memory_gb": peak / 2 ** 30}


# ----------------------------------------------------------------------------------------------------
# Evaluation: Table 1 (intra-dataset, seen / unseen / hIoU) and Table 2 (cross-dataset, mIoU)

def eval_input(image_raw: torch.Tensor, short_side: int, max_side: int,
               multiple: int = 32) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize (3, H, W) so the short side is ``short_side`` (the long side at most ``max_side``), then pad
    right and bottom to a multiple of 32 with grey. Returns (1, 3, H', W') and the unpadded size."""
    h, w = image_raw.shape[-2:]
    scale = min(short_side / min(h, w), max_side / max(h, w))
    size = (round(h * scale), round(w * scale))
    image = torch.nn.functional.interpolate(image_raw[None], size=size, mode="bilinear", antialias=True,
                                            align_corners=False)  # (1, 3, h', w')
    pad = (-size[1] % multiple, -size[0] % multiple)
    return torch.nn.functional.pad(image, (0, pad[0], 0, pad[1]), value=0.5), size


@torch.no_grad()
def predict_label(model: DeOP, image_raw: torch.Tensor, class_names, short_side: int = 512,
                  max_side: int = 2048) -> torch.Tensor:
    """Segment one (3, H, W) image at the evaluation resolution: the class map O is computed at the resized,
    padded input, cropped to the image and resized bilinearly to (H, W) before the argmax. Returns (H, W)."""
    device = next(model.learned.parameters(), next(model.proposals.parameters())).device
    image, (h, w) = eval_input(image_raw, short_side, max_side)
    scores = model.predict(image.to(device), list(class_names), refinement=None)["scores"][..., :h, :w]  # (1, C, h, w)
    scores = torch.nn.functional.interpolate(scores.float(), size=image_raw.shape[-2:], mode="bilinear",
                                             align_corners=False)  # (1, C, H, W)
    return scores.argmax(1)[0].cpu()


@torch.no_grad()
def evaluate(model: DeOP, dataset: SegmentationDataset, short_side: int = 512, max_side: int = 2048,
             limit: int | None = None, progress: bool | None = None, cross_dataset: bool | None = None) -> dict:
    """Segment every image (batch 1, no test-time augmentation, as DeOP's scripts/deop_verifycoco.sh;
    :func:`predict_label`) into all of the dataset's classes. Returns the metrics (``metrics.SegmentationMeter``) with images/s.

    ``cross_dataset``: Table 2's protocol, mIoU over all classes (default: when the dataset has no
    seen / unseen split, i.e. Context-59 and ADE-150; pass True for a COCO-Stuff model on VOC). Otherwise
    Table 1's: mIoU over the seen and the unseen classes and their harmonic mean hIoU."""
    meter = SegmentationMeter(dataset.class_names)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    tic = time.perf_counter()
    for index in tqdm(range(count), desc=f"evaluate {dataset.name}", disable=runtime.CI if progress is None else not progress):
        item = dataset[index]
        meter.update(predict_label(model, item["image_raw"], dataset.class_names, short_side, max_side), item["label"])
    seconds = time.perf_counter() - tic
    intra = bool(dataset.seen_classes) if cross_dataset is None else not cross_dataset
    result = meter.compute(dataset.seen_classes, dataset.unseen_classes) if intra else meter.compute()
    return {**result, "images": count, "seconds": seconds, "images_per_s": count / seconds,
            "protocol": "intra-dataset (Table 1)" if intra else "cross-dataset (Table 2)"}


def paper_numbers(config: RealConfig, dataset: SegmentationDataset) -> dict:
    """The paper's DeOP result for this evaluation, when it reports one."""
    if dataset.name == config.dataset:
        return PAPER_RESULTS.get(dataset.name, {})
    return {"mIoU": PAPER_RESULTS["cross"][dataset.name]} if config.dataset == "coco_stuff" and dataset.name in \
        PAPER_RESULTS["cross"] else {}


def read_config(path: Path) -> RealConfig:
    """A RealConfig from a JSON file (e.g. a run folder's config.json); InputError if missing or malformed."""
    if not path.is_file():
        raise checks.InputError(f"--config {path}: no such file; pass a run folder's config.json or use --preset")
    try:
        return RealConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise checks.InputError(f"--config {path} is not a RealConfig ({type(error).__name__}: {error}); write it with "
                                f"json.dumps(dataclasses.asdict(config)) or use --preset") from None


@checks.command("python -m deop_lite.realworld")
def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m deop_lite.realworld", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("train", "eval", "probe"):
        p = sub.add_parser(command)
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--preset", choices=list(PRESETS))
        which.add_argument("--config", type=Path, help="a RealConfig as JSON (e.g. a run folder's config.json)")
        p.add_argument("--consumer-gpu", action="store_true", help="bf16 + gradient accumulation (one 24 GB GPU)")
        p.add_argument("--data", help="prepared dataset folder (python -m deop_lite.datasets prepare ...); "
                                      "preset tiny: default the VOC fixture, prepared on the fly")
        p.add_argument("--clip", help="open_clip architecture, e.g. ViT-L-14-336 (default: the preset's ViT-B-16)")
        p.add_argument("--clip-weights", help="'openai', a local checkpoint, or 'random' (default: the preset's)")
        p.add_argument("--run-dir", help="default: runs/real/<preset>")
    p = sub.choices["probe"]
    p.add_argument("--stage", choices=("proposals", "deop"), default="deop")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p = sub.choices["train"]
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--stop-at", type=int, help="pause every stage after this many steps (resumes on the next call)")
    p = sub.choices["eval"]
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--proposals", type=Path, help="a proposal-network file (default: the run folder's)")
    p.add_argument("--deop", type=Path, help="a DeOP learned-parts file (default: the run folder's)")
    p.add_argument("--json", type=Path, help="write all metrics here (default: <run-dir>/eval_<dataset>_<split>.json)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("clip", args.clip), ("clip_weights", args.clip_weights)) if v}
    if overrides.get("clip_weights") == "random":
        overrides["clip_weights"] = None
    for name, value, minimum in (("--micro-batch", "micro_batch", 1), ("--steps", "steps", 1),
                                 ("--stop-at", "stop_at", 1), ("--limit", "limit", 1)):
        if getattr(args, value, None) is not None:
            checks.at_least(getattr(args, value), minimum, name)
    if args.data:
        checks.input_folder(args.data, "--data")
    if args.config:
        config = replace(read_config(args.config), **overrides)
        config = config.for_consumer_gpu() if args.consumer_gpu else config
    else:
        config = preset(args.preset, args.consumer_gpu, **overrides)
    if args.command == "probe":
        result = throughput(config, args.stage, args.micro_batch, args.steps)
        print(json.dumps(result, indent=1))
        return
    run_dir = Path(args.run_dir or f"runs/real/{config.name}")
    if args.command == "train":
        checks.output_folder(run_dir, "--run-dir")
    elif not run_dir.is_dir():
        raise checks.InputError(f"no run folder {run_dir} to evaluate: train first (`python -m deop_lite.realworld train "
                                f"...`) or pass --run-dir")
    device = init_distributed()
    data = Path(args.data) if args.data else (run_dir / "data" if config.name == "tiny" else None)
    if not args.data and config.name == "tiny" and rank() == 0:
        prepare_fixture(data)
    if world_size() > 1:
        dist.barrier()
    if data is None:
        raise checks.InputError(f"--data is required for {config.name}: prepare the dataset with "
                         f"`python -m deop_lite.datasets prepare {config.dataset} --root RAW --out DIR` and pass DIR")
    if args.command == "train":
        train(config, data, run_dir, args.stages, args.stop_at)
        return
    dataset = SegmentationDataset(data, args.split)
    model = build_deop(config, run_dir, device, args.proposals, args.deop)
    result = evaluate(model, dataset, config.eval_short_side, config.eval_max_side, args.limit,
                      cross_dataset=dataset.name != config.dataset)
    report = {"preset": config.name, "dataset": dataset.name, "split": args.split, "run_dir": str(run_dir),
              "paper": paper_numbers(config, dataset), **result}
    out = args.json or run_dir / f"eval_{dataset.name}_{args.split}.json"
    checks.output_folder(out.parent, "the folder of --json")
    with checks.atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    keys = ("pAcc", "mIoU", "seen", "unseen", "hIoU") if "hIoU" in result else ("pAcc", "mIoU")
    print(" | ".join(f"{k} {result[k]:.1f}" for k in keys) + f" | {result['images_per_s']:.2f} images/s -> {out}")


if __name__ == "__main__":
    main()
