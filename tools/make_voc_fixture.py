"""Build data/fixtures/voc/, a 17-image PASCAL VOC 2012 tree in the official layout, from the real VOC pairs
in ../shared/data/voc_sample (see its SOURCE.md; research and testing use only).

- deeplabv3plus_samples/N_{image,target}.png (VOC2012 val, 513 x 513, colour-coded targets) become
  JPEGImages/dlv3p_N.jpg and palette PNGs SegmentationClass/dlv3p_N.png (exact palette colours -> indices);
- labelme_voc/ (3 VOC2011 images with palette masks) is copied as is.
Splits: one sheep image and the sofa image (unseen classes) and four others form val; the other eleven form
train (one of them shows sheep, ignored in its training labels).

    python tools/make_voc_fixture.py [--source ../shared/data/voc_sample]
"""
import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def voc_palette() -> np.ndarray:
    """The standard VOC colour map: (256, 3) uint8, index -> RGB (bit-interleaved)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/voc_sample")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data/fixtures/voc")
    args = parser.parse_args()
    voc = args.out / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    colour_to_index = {tuple(rgb): i for i, rgb in enumerate(palette) if i <= 20 or i == 255}
    ids = []
    for target_path in sorted((args.source / "deeplabv3plus_samples").glob("*_target.png"), key=lambda p: int(p.stem.split("_")[0])):
        n = target_path.stem.split("_")[0]
        rgb = np.asarray(Image.open(target_path).convert("RGB"))
        codes = rgb.reshape(-1, 3)
        colours, inverse = np.unique(codes, axis=0, return_inverse=True)
        index = np.array([colour_to_index[tuple(c)] for c in colours], dtype=np.uint8)[inverse.ravel()].reshape(rgb.shape[:2])
        mask = Image.fromarray(index, mode="P")
        mask.putpalette(palette.ravel().tolist())
        image_id = f"dlv3p_{int(n):03d}"
        mask.save(voc / "SegmentationClass" / f"{image_id}.png")
        Image.open(args.source / "deeplabv3plus_samples" / f"{n}_image.png").convert("RGB").save(
            voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        ids.append((image_id, set(np.unique(index).tolist())))
    for mask_path in sorted((args.source / "labelme_voc" / "SegmentationClass").glob("*.png")):
        shutil.copy(mask_path, voc / "SegmentationClass" / mask_path.name)
        shutil.copy(args.source / "labelme_voc" / "JPEGImages" / f"{mask_path.stem}.jpg", voc / "JPEGImages")
        ids.append((mask_path.stem, set(np.unique(np.asarray(Image.open(mask_path))).tolist())))
    unseen = {16, 17, 18, 19, 20}  # raw ids of pottedplant, sheep, sofa, train, tvmonitor
    with_unseen = [i for i, classes in ids if classes & unseen]
    val = with_unseen[1:]  # the first one trains, its unseen pixels ignored (the ZS3 protocol at work)
    val += [i for i, classes in ids if i not in with_unseen][:6 - len(val)]
    train = [i for i, _ in ids if i not in val]
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(val) + "\n")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(train) + "\n")
    print(f"wrote {args.out}: {len(train)} train, {len(val)} val images ({', '.join(val)})")


if __name__ == "__main__":
    main()
