"""One pass against many, timed fairly (paper Tables 1 and 6; protocol in paper §5): ``deop-lite bench``.

DeOP classifies N proposals from one CLIP pass over the whole image; a multi-pass method (SimBaseline,
``deop_lite.multipass``) runs CLIP once per valid proposal crop (N' crops at CLIP's input size). Both get
the same image and the same masks, of which exactly N' are valid, so they differ only in how segments are
classified. Protocol: batch 1, warm-up runs, the median of repeated runs, ``torch.cuda.synchronize()``
around every timed call on a GPU, text embeddings computed beforehand (cached in both methods).

Next to the times, FLOPs are counted (``torch.utils.flop_counter``), so that a slow implementation on
either side shows up as a speed ratio far from the FLOP ratio.

    deop-lite bench                                  # ViT-B/16 at 512, N = 100, N' in 10 30 100 (random weights)
    deop-lite bench --clip ViT-L-14-336 --device cuda --bf16

Two smaller benchmarks time what a reader waits for (tests assert behaviour, never seconds):

    deop-lite bench toyworld                         # toy scenes drawn per second on one thread
    deop-lite bench explorer                         # seconds per redraw of notebook 03's α explorer
"""
from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from . import checks, runtime
from .anchors import AnchorConfig
from .clip import load_clip
from .model import DeOP, DeOPConfig, MaskClassifier
from .multipass import MultiPass
from .prompts import PromptConfig
from .proposals import MaskProposalNetwork, ProposalConfig, proposal_masks
from .severance import GPS_LAST


@dataclass
class BenchConfig:
    """What is timed. The defaults are the paper's scale (random weights: speed does not depend on them)."""
    clip: str = "ViT-B-16"  # an open_clip architecture, or "toy"
    short_side: int = 512  # square images of this side
    num_queries: int = 100  # N
    valid: tuple[int, ...] = (10, 30, 100)  # N', the proposals multi-pass has to crop
    warmup: int = 2
    repeats: int = 5
    device: str = "cpu"
    bf16: bool = False  # autocast to bfloat16 (GPU)
    anchors: AnchorConfig = field(default_factory=lambda: AnchorConfig("query", layers=1, heads=8, ffn_dim=1024))

    @classmethod
    def tiny(cls) -> BenchConfig:
        """The toy CLIP at 128 px with 16 proposals: seconds on a CPU (CI mode)."""
        return cls(clip="toy", short_side=128, num_queries=16, valid=(2, 8, 16), warmup=1, repeats=3,
                   anchors=AnchorConfig("query", layers=1))


def build_models(config: BenchConfig) -> tuple[DeOP, MultiPass]:
    """DeOP (prompts, GPS, CAL; the released configuration) and the multi-pass classifier, sharing one
    random-weight proposal network (ResNet-101 MaskFormer at the paper's scale) and one CLIP."""
    if config.clip == "toy":
        clip = load_clip("toy", device=config.device)
        proposal_config = ProposalConfig()
        prompts = PromptConfig(text="learned", visual="add")
    else:
        clip = load_clip(config.clip, pretrained=None, device=config.device)
        proposal_config = ProposalConfig.real()
        proposal_config.pretrained_backbone = False
        prompts = PromptConfig.real()
    proposal_config.num_queries = config.num_queries
    proposals = MaskProposalNetwork(proposal_config).to(config.device).eval()
    deop_config = DeOPConfig(prompts, severance=GPS_LAST, anchors=config.anchors, void=True)
    classifier = MaskClassifier(clip, deop_config, config.num_queries)
    deop = DeOP(proposals, classifier).to(config.device).eval().requires_grad_(False)  # inference only
    return deop, MultiPass(clip)


def synthetic_masks(num_queries: int, valid: int, size: int, device="cpu") -> torch.Tensor:
    """(1, N, size, size) mask probabilities of which exactly ``valid`` are non-empty (random boxes)."""
    generator = torch.Generator().manual_seed(valid)
    masks = torch.zeros(1, num_queries, size, size)
    for n in range(valid):
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        height, width = torch.randint(size // 8, size // 2, (2,), generator=generator).tolist()
        masks[0, n, top:top + height, left:left + width] = 0.9
    return masks.to(device)


def median_seconds(calls: dict[str, Callable[[], object]], warmup: int, repeats: int, device: str) -> dict[str, float]:
    """Median wall time of each call over ``repeats`` rounds after ``warmup`` rounds, synchronising a GPU.

    The calls are **interleaved**: every round runs each of them once, so a slow drift of the machine
    (another tenant, the clock speed) slows every method alike instead of whichever ran at that moment.
    """
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    times = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, fn in calls.items():
            sync()
            tic = time.perf_counter()
            fn()
            sync()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` (2 per multiply-add). PyTorch's fused attention kernels are counted too: the fast
    path of ``nn.MultiheadAttention`` is switched off and the CPU flash-attention op is given a formula."""
    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


@torch.no_grad()
def clip_flops(name: str, side: int) -> dict:
    """FLOPs of CLIP ``name`` for one dense pass over a side x side image and for one crop at CLIP's own
    input size, counted on PyTorch's meta device: shapes only, no weights, no memory, no time."""
    import open_clip

    from .clip import dense_features
    logging.disable(logging.WARNING)  # open_clip's "initialized randomly" warning: asked for on purpose
    try:
        with torch.device("meta"):
            model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True, device="meta")
    finally:
        logging.disable(logging.NOTSET)
    crop = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    one_pass = count_flops(lambda: dense_features(model.visual, torch.empty(1, 3, side, side, device="meta")))
    one_crop = count_flops(lambda: model.encode_image(torch.empty(1, 3, crop, crop, device="meta")))
    return {"clip": name, "side": side, "crop": crop, "one_pass": one_pass, "one_crop": one_crop,
            "break_even_crops": one_pass / one_crop}


@torch.no_grad()
def run_bench(config: BenchConfig, progress: bool | None = None) -> dict:
    """Time and count both methods at every N'. Returns a JSON-ready dict (see :func:`summarize`)."""
    from tqdm.auto import tqdm
    deop, multipass = build_models(config)
    names = [f"class {i}" for i in range(20)] if config.clip != "toy" else ["sky", "grass", "ladybird", "clock"]
    image = torch.rand(1, 3, config.short_side, config.short_side, device=config.device)
    autocast = (torch.autocast(device_type=torch.device(config.device).type, dtype=torch.bfloat16) if config.bf16
                else contextlib.nullcontext())
    deop.classifier.text_embeddings(names)  # computed once beforehand and cached, in both methods
    multipass.text_embeddings(names)
    time_it = lambda calls: median_seconds(calls, config.warmup, config.repeats, config.device)
    rows = []
    with autocast:
        proposals = lambda: proposal_masks(deop.proposals, image, refinement=None)  # the network, shared by both methods
        proposals_time = time_it({"proposals": proposals})["proposals"]
        proposals_flops = count_flops(proposals)
        for valid in tqdm(config.valid, desc="N'", disable=runtime.CI if progress is None else not progress):
            masks = synthetic_masks(config.num_queries, valid, config.short_side, config.device)
            row = {"valid": valid, **measure(deop, multipass, image, masks, names, time_it)}
            for method in ("deop", "multipass"):
                row[method]["seconds"]["proposals"] = proposals_time
                row[method]["seconds"]["total"] = proposals_time + row[method]["seconds"]["classify"]
                row[method]["flops"] += proposals_flops
            rows.append(row)
    return summarize(config, rows)


def measure(deop: DeOP, multipass: MultiPass, image: torch.Tensor, masks: torch.Tensor, names: list[str],
            time_it: Callable[[dict], dict]) -> dict:
    """Seconds per stage and FLOPs of classifying ``masks`` (1, N, H, W) of ``image`` with each method.

    DeOP: ``clip_pass`` (one dense pass with prompts and GPS), ``anchors`` (CAL), ``classify`` (all of the
    classification stream), and ``pooling_and_rest`` = classify - clip_pass - anchors. Multi-pass: ``crops``,
    ``classify``, and ``clip_passes_and_rest`` = classify - crops (one batched CLIP call on N' crops). The two
    residuals are differences of medians timed apart: a negative one is timing noise and is reported as 0.
    """
    classifier = deop.classifier
    dense_feats = classifier.dense_features(image, masks)  # (1, D, h, w)
    deop_calls = {"clip_pass": lambda: classifier.dense_features(image, masks),
                  "anchors": lambda: classifier.learned.anchor_decoder(dense_feats, masks),
                  "classify": lambda: classifier(image, masks, names)}
    multi_calls = {"crops": lambda: multipass.crops(image[0], masks[0]),
                   "classify": lambda: multipass(image, masks, names)}
    seconds = time_it({**{f"deop {k}": fn for k, fn in deop_calls.items()},
                       **{f"multi {k}": fn for k, fn in multi_calls.items()}})  # interleaved
    deop_s = {stage: seconds[f"deop {stage}"] for stage in deop_calls}
    deop_s["pooling_and_rest"] = max(0.0, deop_s["classify"] - deop_s["clip_pass"] - deop_s["anchors"])
    multi_s = {stage: seconds[f"multi {stage}"] for stage in multi_calls}
    multi_s["clip_passes_and_rest"] = max(0.0, multi_s["classify"] - multi_s["crops"])
    return {"deop": {"seconds": deop_s, "flops": count_flops(deop_calls["classify"])},
            "multipass": {"seconds": multi_s, "flops": count_flops(multi_calls["classify"])}}


def summarize(config: BenchConfig, rows: list[dict]) -> dict:
    """Add images/s, speed and FLOP ratios, DeOP's distance to its floor and the N' where DeOP is 4x faster.

    DeOP's floor is the proposal network plus one CLIP pass. That pass is the same work at every N' (timed
    once per N'), so its best estimate is the median of all those timings: one noisy timing then moves
    neither the floor nor DeOP's distance to it.
    """
    clip_pass = statistics.median(r["deop"]["seconds"]["clip_pass"] for r in rows)
    for row in rows:
        row["deop"]["floor"] = row["deop"]["seconds"]["proposals"] + clip_pass
        deop, multi = row["deop"], row["multipass"]
        row["deop_images_per_s"] = 1 / deop["seconds"]["total"]
        row["multipass_images_per_s"] = 1 / multi["seconds"]["total"]
        row["speed_ratio"] = multi["seconds"]["total"] / deop["seconds"]["total"]
        row["flop_ratio"] = multi["flops"] / deop["flops"]
        row["deop_over_floor"] = deop["seconds"]["total"] / deop["floor"] - 1
    # The multi-pass time grows linearly in N': fit it, and solve total_multi(N') = 4 total_deop.
    valid = torch.tensor([r["valid"] for r in rows], dtype=torch.float64)
    multi = torch.tensor([r["multipass"]["seconds"]["total"] for r in rows], dtype=torch.float64)
    deop_mean = statistics.mean(r["deop"]["seconds"]["total"] for r in rows)
    slope, intercept = (torch.linalg.lstsq(torch.stack([valid, torch.ones_like(valid)], 1), multi[:, None]).solution[:, 0]
                        if len(rows) > 1 else (multi[0] / valid[0], torch.tensor(0.0)))
    four_x = float((4 * deop_mean - intercept) / slope)
    return {"config": {**asdict(config), "torch": torch.__version__, "machine": runtime.describe()},
            "rows": rows, "valid_at_4x": four_x}


def plot(result: dict):
    """Seconds per image against N' for both methods, DeOP's floor dashed."""
    import matplotlib.pyplot as plt
    rows = result["rows"]
    valid = [r["valid"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(valid, [r["multipass"]["seconds"]["total"] for r in rows], "o-", label="multi-pass (one CLIP pass per crop)")
    ax.plot(valid, [r["deop"]["seconds"]["total"] for r in rows], "o-", label="DeOP (one pass)")
    ax.plot(valid, [r["deop"]["floor"] for r in rows], "--", color="gray", label="DeOP floor: proposals + one CLIP pass")
    config = result["config"]
    ax.set_xlabel("valid proposals N'")
    ax.set_ylabel("seconds per image")
    ax.set_title(f"{config['clip']}, {config['short_side']} px, N = {config['num_queries']}, {config['device']}"
                 f"{' bf16' if config['bf16'] else ''}", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# What a reader waits for: drawing toy scenes, redrawing the α explorer

def toyworld_throughput(scenes: int = 500, rounds: int = 3, image_size: int = 64) -> dict:
    """Toy scenes drawn per second (NumPy on one thread; the best of ``rounds`` runs of ``scenes`` fresh scenes
    each; the texture bank is built first, as it is once per process)."""
    from . import toyworld
    config = toyworld.ToyWorldConfig(image_size=image_size)
    toyworld.texture_bank()
    rates = []
    for attempt in range(rounds):
        tic = time.perf_counter()
        for index in range(scenes):
            toyworld.make_scene(toyworld.scene_rng("train", index + scenes * attempt), config)
        rates.append(scenes / (time.perf_counter() - tic))
    return {"image_size": image_size, "scenes": scenes, "rounds": rounds, "scenes_per_s": max(rates),
            "median_scenes_per_s": statistics.median(rates)}


def explorer_latency(redraws: int = 10) -> dict:
    """Seconds per redraw of notebook 03's ``viz.AlphaExplorer`` (toy CLIP, 128 px scenes, ground-truth masks),
    alternating the mode and α as a reader moving the controls would: the median and the slowest redraw."""
    import matplotlib.pyplot as plt

    from . import toyworld, viz
    clip = load_clip("toy")
    world = toyworld.segmentation_world("val", 2)
    images = torch.stack([world[i]["image_raw"] for i in range(2)])  # (2, 3, 128, 128)
    label = torch.stack([world[i]["label"] for i in range(2)])  # (2, 128, 128)
    masks = (label[:, None] == torch.arange(len(toyworld.CLASS_NAMES))[None, :, None, None]).float()  # (2, C, H, W)
    explorer = viz.AlphaExplorer(clip, images, toyworld.CLASS_NAMES, masks)
    explorer.update()  # the first draw builds the figure
    settings = [{"mode": "GPS", "alpha": a / redraws, "blocks": 1 + a % explorer.depth} if i % 3
                else {"mode": ("MPS", "none")[i % 2]} for i, a in enumerate(range(redraws))]
    times = []
    for change in settings:
        tic = time.perf_counter()
        explorer.update(**change)
        times.append(time.perf_counter() - tic)
    plt.close(explorer.fig)
    return {"redraws": redraws, "median_s": statistics.median(times), "max_s": max(times),
            "threads": torch.get_num_threads()}


def format_result(result: dict) -> str:
    lines = [f"{'N′':>4s} {'DeOP img/s':>10s} {'multi img/s':>11s} {'speed ×':>8s} {'FLOP ×':>7s} {'DeOP vs floor':>13s}"]
    for r in result["rows"]:
        lines.append(f"{r['valid']:4d} {r['deop_images_per_s']:10.3f} {r['multipass_images_per_s']:11.3f} "
                     f"{r['speed_ratio']:8.2f} {r['flop_ratio']:7.2f} {100 * r['deop_over_floor']:+12.1f}%")
    stages = result["rows"][-1]
    lines.append("stages at N′ = {}: DeOP ".format(stages["valid"]) + ", ".join(
        f"{k} {1000 * v:.0f} ms" for k, v in stages["deop"]["seconds"].items()) + " | multi-pass " + ", ".join(
        f"{k} {1000 * v:.0f} ms" for k, v in stages["multipass"]["seconds"].items()))
    lines.append(f"DeOP is 4x faster from N′ ≈ {result['valid_at_4x']:.0f}")
    return "\n".join(lines)


@checks.command("deop-lite bench")
def main(argv: Sequence[str] | None = None) -> dict:
    import argparse

    import matplotlib
    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(prog="deop-lite bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", nargs="?", default="one-pass", choices=("one-pass", "toyworld", "explorer"),
                        help="one pass against many (default; the options below), toy scenes per second, or "
                             "the α explorer's redraw time")
    parser.add_argument("--clip", default="ViT-B-16", help="open_clip architecture (random weights) or 'toy'")
    parser.add_argument("--short-side", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100, help="N, proposals per image")
    parser.add_argument("--valid", type=int, nargs="+", default=[10, 30, 100], help="N' values to sweep")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    parser.add_argument("--tiny", action="store_true", help="toy CLIP at 128 px, N = 16 (seconds; CI)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = parser.parse_args(argv)
    if args.task == "toyworld":
        result = toyworld_throughput()
        print(f"toy world: {result['scenes_per_s']:,.0f} scenes/s at {result['image_size']} px on one thread (best of "
              f"{result['rounds']} x {result['scenes']} scenes; median {result['median_scenes_per_s']:,.0f})")
        return result
    if args.task == "explorer":
        result = explorer_latency()
        print(f"α explorer: {1000 * result['median_s']:.0f} ms per redraw (median of {result['redraws']}; slowest "
              f"{1000 * result['max_s']:.0f} ms) on {result['threads']} CPU thread(s)")
        return result
    if args.tiny:
        config = BenchConfig.tiny()
    else:
        checks.at_least(args.queries, 1, "--queries")
        checks.at_least(min(args.valid), 1, "every --valid value")
        checks.at_least(args.repeats, 1, "--repeats")
        checks.at_least(args.warmup, 0, "--warmup")
        if args.short_side < 32 or args.short_side % 32:
            raise checks.InputError(f"--short-side must be a positive multiple of 32 (the proposal network's stride), "
                                    f"got {args.short_side}")
        if any(v > args.queries for v in args.valid):
            raise checks.InputError(f"--valid values must be at most --queries ({args.queries}), got {args.valid}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise checks.InputError(f"--device {args.device}: no CUDA GPU is visible here; use --device cpu")
        config = BenchConfig(args.clip, args.short_side, args.queries, tuple(args.valid), args.warmup, args.repeats,
                             args.device, args.bf16)
    out = checks.output_folder(args.out)
    result = run_bench(config)
    print(format_result(result))
    stem = f"bench_{config.clip}_{config.short_side}_{config.device}{'_bf16' if config.bf16 else ''}"
    with checks.atomic_path(out / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    with checks.atomic_path(out / f"{stem}.png") as tmp:
        plot(result).savefig(tmp, dpi=100)
    print(f"wrote {args.out / stem}.json and .png")
    return result


if __name__ == "__main__":
    main()
