"""The ``deop-lite`` command line.

    deop-lite demo [--out outputs/demo] [--scenes 64]

``demo`` runs the shipped toy models on validation scenes, prints the metrics and writes figures.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import matplotlib

from . import runtime, toyworld


def demo(out: Path, n_scenes: int) -> dict:
    """Zero-shot recognition with the shipped toy CLIP: image classification and naive dense labelling."""
    matplotlib.use("Agg")
    import torch

    from . import viz
    from .clip import load_clip, naive_dense_labels
    from .metrics import SegmentationMeter
    from .toyclip import DEFAULT_CHECKPOINT, evaluate_zero_shot
    from .train import read_metadata

    out.mkdir(parents=True, exist_ok=True)
    print(runtime.describe())
    clip = load_clip("toy")
    summary = read_metadata(DEFAULT_CHECKPOINT)["summary"]
    print(f"toy CLIP: {DEFAULT_CHECKPOINT.relative_to(runtime.PROJECT_ROOT)} (re-train: {summary.get('command')})")

    result = evaluate_zero_shot(clip, n_per_class=10 if runtime.CI else 50)
    print(f"zero-shot classification of single-class images, {len(toyworld.CLASS_NAMES)} classes: "
          f"top-1 {100 * result['top1']:.1f}% (seen {100 * result['seen_top1']:.1f}%, "
          f"unseen {100 * result['unseen_top1']:.1f}%)")
    viz.plot_confusion(result["confusion"], title="toy CLIP zero-shot classification").savefig(
        out / "confusion.png", dpi=100, bbox_inches="tight")

    val = toyworld.ToyWorld("val", n_scenes, toyworld.ToyWorldConfig.segmentation())
    batch = torch.utils.data.default_collate([val[i] for i in range(n_scenes)])
    pred = naive_dense_labels(clip, batch["image_raw"], toyworld.CLASS_NAMES)  # (B, H, W)
    meter = SegmentationMeter(toyworld.CLASS_NAMES)
    meter.update(pred, batch["label"])
    seg = meter.compute(toyworld.SEEN_CLASSES, toyworld.UNSEEN_CLASSES)
    print(f"naive per-patch labelling of {n_scenes} validation scenes: pAcc {seg['pAcc']:.1f} | "
          f"mIoU seen {seg['seen']:.1f} | unseen {seg['unseen']:.1f} | hIoU {seg['hIoU']:.1f}")
    viz.show_segmentations(batch["image_raw"][:4], {"ground truth": batch["label"][:4],
                                                    "naive CLIP patches": pred[:4]}).savefig(
        out / "naive_dense.png", dpi=100, bbox_inches="tight")
    print(f"wrote {out / 'confusion.png'} and {out / 'naive_dense.png'}")
    return {"classification": {k: result[k] for k in ("top1", "seen_top1", "unseen_top1")},
            "segmentation": {k: seg[k] for k in ("pAcc", "seen", "unseen", "hIoU")}}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deop-lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="run the shipped toy models on validation scenes")
    demo_parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for the figures")
    demo_parser.add_argument("--scenes", type=int, default=16 if runtime.CI else 64, help="validation scenes")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.out, args.scenes)


if __name__ == "__main__":
    main()
