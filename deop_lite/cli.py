"""The ``deop-lite`` command line.

    deop-lite demo [--out outputs/demo] [--scenes 64]

``demo`` runs the shipped toy models (toy CLIP, proposal network, DeOP) on validation scenes, prints
their metrics and writes figures.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from . import runtime, toyworld


def demo(out: Path, n_scenes: int) -> dict:
    """Zero-shot recognition with the shipped toy models: CLIP image classification, then segmentation of
    validation scenes, from naive per-patch labelling and the one-pass baseline to the trained toy DeOP.
    Returns DeOP's metrics."""
    matplotlib.use("Agg")
    import torch

    from . import viz
    from .clip import load_clip, naive_dense_labels
    from .metrics import evaluate_segmentation
    from .model import checkpoint_path, load_deop
    from .proposals import load_proposals
    from .toyclip import DEFAULT_CHECKPOINT as TOY_CLIP
    from .toyclip import evaluate_zero_shot
    from .train import read_metadata

    out.mkdir(parents=True, exist_ok=True)
    print(runtime.describe())
    clip = load_clip("toy")
    print(f"toy CLIP: {TOY_CLIP.relative_to(runtime.PROJECT_ROOT)} (re-train: {read_metadata(TOY_CLIP)['summary']['command']})")
    result = evaluate_zero_shot(clip, n_per_class=10 if runtime.CI else 50)
    print(f"zero-shot classification of single-class images, {len(toyworld.CLASS_NAMES)} classes: "
          f"top-1 {100 * result['top1']:.1f}% (seen {100 * result['seen_top1']:.1f}%, "
          f"unseen {100 * result['unseen_top1']:.1f}%)")
    viz.plot_confusion(result["confusion"], title="toy CLIP zero-shot classification").savefig(
        out / "confusion.png", dpi=100, bbox_inches="tight")

    names = toyworld.CLASS_NAMES
    proposal_net = load_proposals()[0]
    models = {title: load_deop(variant, proposals=proposal_net, clip=clip) for title, variant in
              (("one-pass baseline", "baseline"), ("baseline+", "baseline_plus"), ("DeOP", "deop"))}
    predictors = {"naive CLIP patches": lambda x: naive_dense_labels(clip, x, names),
                  **{title: (lambda x, m=m: m.predict(x, names)["label"]) for title, m in models.items()}}
    print(f"toy DeOP: {checkpoint_path('deop').relative_to(runtime.PROJECT_ROOT)} "
          f"(re-train: {models['DeOP'].metadata['summary']['command']})")
    val = toyworld.ToyWorld("val", n_scenes, toyworld.ToyWorldConfig.segmentation())
    print(f"segmentation of {n_scenes} validation scenes, all {len(names)} classes (unseen: "
          f"{', '.join(toyworld.UNSEEN_CLASSES)}):")
    for name, predict in predictors.items():
        seg = evaluate_segmentation(predict, val, names, toyworld.SEEN_CLASSES, toyworld.UNSEEN_CLASSES, progress=False)
        print(f"  {name:20s} pAcc {seg['pAcc']:5.1f} | mIoU seen {seg['seen']:5.1f} | unseen {seg['unseen']:5.1f} "
              f"| hIoU {seg['hIoU']:5.1f}")
    batch = torch.utils.data.default_collate([val[i] for i in range(min(4, n_scenes))])
    columns = {"ground truth": batch["label"], **{n: predictors[n](batch["image_raw"]) for n in ("one-pass baseline", "DeOP")}}
    viz.show_segmentations(batch["image_raw"], columns).savefig(out / "segmentation.png", dpi=100, bbox_inches="tight")
    print(f"wrote {out / 'confusion.png'} and {out / 'segmentation.png'}")
    return seg


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
