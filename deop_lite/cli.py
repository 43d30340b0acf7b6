"""The ``deop-lite`` command line.

    deop-lite demo [--out outputs/demo] [--scenes 64]
    deop-lite segment IMAGE --classes "ladybird, grass, sky" [--clip toy | --clip ViT-B-16 --weights PATH]
    deop-lite bench [--clip ViT-B-16] [--valid 10 30 100] [--device cuda --bf16] [--tiny]
    deop-lite bench toyworld | explorer

``demo`` runs the shipped toy models (toy CLIP, proposal network, DeOP) on validation scenes, prints
their metrics and writes figures; ``segment`` labels your own image with the classes you name; ``bench``
times DeOP's one pass against a multi-pass classifier, the toy world's drawing and the α explorer's redraw
(``deop_lite.bench``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from . import checks, runtime, toyworld


def demo(out: Path, n_scenes: int) -> dict:
    """Zero-shot recognition with the shipped toy models: CLIP image classification, then segmentation of
    validation scenes, from naive per-patch labelling and the one-pass baseline to the trained toy DeOP.
    Returns DeOP's metrics."""
    matplotlib.use("Agg")
    import torch

    from . import viz
    checks.at_least(n_scenes, 1, "--scenes")
    out = checks.output_folder(out)
    from .clip import TOY_CLIP_CHECKPOINT as TOY_CLIP
    from .clip import load_clip, naive_dense_labels
    from .metrics import format_table
    from .model import DeOP, one_pass_baseline
    from .severance import last_blocks_severed
    from .stages import checkpoint_path, load_deop, load_proposals
    from .toyclip import evaluate_zero_shot
    from .train import read_metadata
    from .world import evaluate, segments

    print(runtime.describe())
    clip = load_clip("toy")
    print(f"toy CLIP: {TOY_CLIP.relative_to(runtime.PROJECT_ROOT)} (re-train: {read_metadata(TOY_CLIP)['summary']['command']})")
    result = evaluate_zero_shot(clip, n_per_class=10 if runtime.CI else 50)
    print(f"zero-shot classification of single-class images, {len(toyworld.CLASS_NAMES)} classes: "
          f"top-1 {100 * result['top1']:.1f}% (seen {100 * result['seen_top1']:.1f}%, "
          f"unseen {100 * result['unseen_top1']:.1f}%)")
    with checks.atomic_path(out / "confusion.png") as tmp:
        viz.plot_confusion(result["confusion"], title="toy CLIP zero-shot classification").savefig(
            tmp, dpi=100, bbox_inches="tight")

    names = toyworld.CLASS_NAMES
    proposal_net = load_proposals()[0]
    models = {title: load_deop(variant, proposals=proposal_net, clip=clip) for title, variant in
              (("one-pass baseline", "baseline"), ("baseline+", "baseline_plus"), ("baseline+ w/ PS", "ps"), ("DeOP", "deop"))}
    models["every block severed, untrained"] = DeOP(proposal_net, one_pass_baseline(clip, last_blocks_severed(4, 4)))
    world = toyworld.ToyWorld()
    predictors = {"naive CLIP patches": lambda batch: naive_dense_labels(clip, batch["image_raw"], names),
                  **{title: segments(m, world, world.refinement) for title, m in models.items()}}
    print(f"toy DeOP: {checkpoint_path('deop').relative_to(runtime.PROJECT_ROOT)} "
          f"(re-train: {models['DeOP'].metadata['summary']['command']})")
    print(f"segmentation of {n_scenes} validation scenes, all {len(names)} classes (unseen: "
          f"{', '.join(toyworld.UNSEEN_CLASSES)}):")
    results = {name: evaluate(predict, world, n_scenes, progress=False) for name, predict in predictors.items()}
    print(format_table(results) + "\n(mIoU over the seen and the unseen classes, their harmonic mean hIoU, and the "
          "things' mIoU)")
    val = world.validation_set(n_scenes)
    batch = torch.utils.data.default_collate([val[i] for i in range(min(4, n_scenes))])
    columns = {"ground truth": batch["label"], **{n: predictors[n](batch) for n in ("one-pass baseline", "DeOP")}}
    with checks.atomic_path(out / "segmentation.png") as tmp:
        viz.show_segmentations(batch["image_raw"], columns).savefig(tmp, dpi=100, bbox_inches="tight")
    print(f"wrote {out / 'confusion.png'} and {out / 'segmentation.png'}")
    return results["DeOP"]


MAX_SIDE = {"toy": 512, "real": 1024}
"""Longest side an image is resized to (toy images are small; the real world segments at 512 short side)."""
MIN_SIDE = 32
"""Shortest side an image may have: smaller ones hold too little to upscale into a segmentation."""


def load_image(path: Path, short_side: int, max_side: int) -> tuple:
    """Read any image PIL can open as (3, H, W) float in [0, 1], H and W multiples of 32.

    Grayscale, palette, RGBA (composited on white), CMYK and 16-bit images are converted to 8-bit RGB;
    the short side is resized to ``short_side`` (the long side capped at ``max_side``). Returns the image and
    notes on what was done. Raises ``checks.InputError`` with a plain message for unreadable or tiny images.
    """
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    notes = []
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except FileNotFoundError:
        raise checks.InputError(f"no image at {path}") from None
    except IsADirectoryError:
        raise checks.InputError(f"{path} is a folder; pass one image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise checks.InputError(f"cannot read {path} as an image ({error}); use a PNG or JPEG file") from None
    if min(image.size) < MIN_SIDE:
        raise checks.InputError(f"{path} is {image.size[0]}x{image.size[1]} pixels; deop-lite segment needs at least "
                                f"{MIN_SIDE}x{MIN_SIDE}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or 32-bit: rescale to 8 bits
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        notes.append(f"{image.mode} image (more than 8 bits) rescaled to 8 bits")
        image = Image.fromarray(((values - low) / ((high - low) or 1) * 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        notes.append("transparency composited on white")
    if image.mode != "RGB":
        notes.append(f"converted from {image.mode} to RGB")
        image = image.convert("RGB")
    width, height = image.size
    scale = min(short_side / min(width, height), max_side / max(width, height))
    new_w, new_h = (max(32, round(width * scale / 32) * 32), max(32, round(height * scale / 32) * 32))
    if (new_w, new_h) != (width, height):
        notes.append(f"resized from {width}x{height} to {new_w}x{new_h} (multiples of 32)")
        image = image.resize((new_w, new_h), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255, notes


def segment(image_path: Path, class_names: str | Sequence[str], clip_name: str, weights: str | None, out: Path) -> Path:
    """Segment one image into ``class_names`` and write ``<stem>_overlay.png`` and ``<stem>_labels.png``.

    With the toy CLIP the shipped toy DeOP segments (only toy-world class names are known). With a real
    CLIP there is no trained real DeOP yet (notebook 07 trains one), so the image is labelled training-free:
    patch features with the last layer severed (GPS, α = 1, as MaskCLIP and DeOP's demo), each patch
    classified on its own.
    """
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from PIL import Image

    from . import viz
    from .clip import load_clip, patch_scores
    from .severance import GPS_LAST, severed_dense_features

    class_names = checks.class_names(class_names, toyworld.CLASS_NAMES if clip_name == "toy" else None)
    out = checks.output_folder(out)
    image_raw, notes = load_image(image_path, 128 if clip_name == "toy" else 512,
                                  MAX_SIDE["toy" if clip_name == "toy" else "real"])
    for note in notes:
        print(f"note: {note}")
    if clip_name == "toy":
        from .stages import load_deop
        label = load_deop("deop").predict(image_raw[None], class_names, toyworld.REFINEMENT)["label"][0]  # (H, W)
        method = "toy DeOP"
    else:
        clip = load_clip(clip_name, pretrained=weights or "openai")
        with torch.no_grad():
            dense_feats = severed_dense_features(clip.visual, clip.normalize(image_raw[None]), GPS_LAST)  # (1, D, h, w)
            label = patch_scores(dense_feats, clip.text_embeddings(class_names), image_raw.shape[-2:]).argmax(1)[0]
        method = f"{clip_name}, training-free (GPS, α = 1)"
    stem = image_path.stem
    with checks.atomic_path(out / f"{stem}_labels.png") as tmp:
        Image.fromarray(label.numpy().astype(np.uint8)).save(tmp)  # pixel value = class index
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    axes[0].imshow(viz.to_hwc(image_raw))
    axes[1].imshow(viz.overlay(image_raw, label))
    axes[1].set_title(method, fontsize=9)
    for ax in axes:
        ax.axis("off")
    handles = [matplotlib.patches.Patch(color=viz.PALETTE[i % len(viz.PALETTE)] / 255, label=name)
               for i, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(class_names)), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with checks.atomic_path(out / f"{stem}_overlay.png") as tmp:
        fig.savefig(tmp, dpi=100)
    shares = np.bincount(label.flatten().numpy(), minlength=len(class_names)) / label.numel()
    print("pixels: " + ", ".join(f"{name} {100 * share:.0f}%" for name, share in zip(class_names, shares)))
    print(f"wrote {out / f'{stem}_overlay.png'} and {out / f'{stem}_labels.png'} (pixel value = class index)")
    return out / f"{stem}_overlay.png"


@checks.command("deop-lite")
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deop-lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="run the shipped toy models on validation scenes")
    demo_parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for the figures")
    demo_parser.add_argument("--scenes", type=int, default=16 if runtime.CI else 64, help="validation scenes")
    segment_parser = sub.add_parser("segment", help="segment your own image into the classes you name")
    segment_parser.add_argument("image", type=Path)
    segment_parser.add_argument("--classes", required=True, help='comma-separated class names, e.g. "ladybird, grass, sky"')
    segment_parser.add_argument("--clip", default="toy", help="'toy' (the shipped toy DeOP) or an open_clip "
                                "architecture such as ViT-B-16 (training-free GPS labelling)")
    segment_parser.add_argument("--weights", help="real CLIP weights: a local checkpoint file (default: 'openai')")
    segment_parser.add_argument("--out", type=Path, default=Path("outputs/segment"), help="folder for the PNGs")
    sub.add_parser("bench", help="time one pass (DeOP) against many (multi-pass), or the toy world and the α "
                   "explorer; options: `deop-lite bench --help`")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser (deop_lite.bench) takes the rest
        from .bench import main as bench_main
        bench_main(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.out, args.scenes)
    else:
        segment(args.image, args.classes, args.clip, args.weights, args.out)


if __name__ == "__main__":
    main()
