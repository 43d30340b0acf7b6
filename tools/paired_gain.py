"""The gain of one toy DeOP variant over another, with its 95 % paired bootstrap interval (the lab book's CAL gains).

Both models segment the same validation scenes with the shipped refined proposals; each bootstrap resample draws the
same scenes for both (`metrics.SegmentationMeter.difference_interval`), so what the scenes share cancels.

    python tools/paired_gain.py data/deop/deop.safetensors data/deop/ps.safetensors
    python tools/paired_gain.py runs/sweep/deop_k1_s500_like_vit_b16.safetensors runs/sweep/ps_k1_s500_like_vit_b16.safetensors
"""
import argparse

import torch
from tqdm.auto import tqdm

from deop_lite import toyworld
from deop_lite.metrics import SegmentationMeter
from deop_lite.model import load_deop
from deop_lite.proposals import TOY_REFINEMENT, load_proposals
from deop_lite.train import read_metadata


@torch.no_grad()
def per_scene_meter(path: str, world, proposals, batch_size: int = 16) -> SegmentationMeter:
    model = load_deop(read_metadata(path)["variant"], path=path, proposals=proposals)
    meter = SegmentationMeter(toyworld.CLASS_NAMES, per_scene=True)
    for start in tqdm(range(0, len(world), batch_size), desc=path, leave=False):
        items = [world[i] for i in range(start, min(start + batch_size, len(world)))]
        images = torch.stack([item["image_raw"] for item in items])  # (B, 3, H, W)
        label = torch.stack([item["label"] for item in items])  # (B, H, W)
        meter.update(model.predict(images, toyworld.CLASS_NAMES, TOY_REFINEMENT)["label"], label)
    return meter


def paired_gain(model: str, reference: str, scenes: int = 200) -> dict[str, list[float]]:
    """hIoU, seen and unseen of ``model`` minus ``reference``: metric -> [difference, low, high], the 95 % paired
    bootstrap interval over the first ``scenes`` validation scenes."""
    world, proposals = toyworld.segmentation_world("val", scenes, 128), load_proposals()[0]
    split = (toyworld.SEEN_CLASSES, toyworld.UNSEEN_CLASSES, toyworld.THING_CLASSES)
    ours, theirs = (per_scene_meter(path, world, proposals) for path in (model, reference))
    interval = ours.difference_interval(theirs, *split)
    ours_result, theirs_result = ours.compute(*split), theirs.compute(*split)
    return {key: [ours_result[key] - theirs_result[key], *interval[key]] for key in ("hIoU", "seen", "unseen")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a DeOP variant's .safetensors file")
    parser.add_argument("reference", help="the variant it is compared with")
    parser.add_argument("--scenes", type=int, default=200)
    args = parser.parse_args()
    for key, (difference, low, high) in paired_gain(args.model, args.reference, args.scenes).items():
        print(f"{key:>6}: {difference:+.1f}, 95 % paired interval over {args.scenes} scenes [{low:+.1f}, {high:+.1f}]")


if __name__ == "__main__":
    main()
