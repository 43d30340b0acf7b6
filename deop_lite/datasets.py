"""The real world's data: COCO-Stuff-164k, PASCAL VOC 2012 (+ SBD), Pascal Context-59 and ADE20K-150.

Each dataset is read from its **official download layout** by a preparation command that writes one
format for all of them (after DeOP's datasets/prepare_coco_stuff_164k_sem_seg.py and prepare_voc_sem_seg.py):

    <out>/labels/<split>/<id>.png        uint8 class indices into the dataset's class list, 255 = ignore
    <out>/<split>.json                   the index: class names, seen / unseen split, (image, label) pairs
    <out>/<split>_label_count.json       pixels per class (the file SimBaseline's loader looks for)

Training splits are **seen-only**: unseen pixels (and VOC's background) become 255, images are kept
(DeOP's data code), and images with no labelled pixel left are dropped. Evaluation splits keep every
class. Preparation is idempotent: finished label files are skipped, and the index is written last, so an
interrupted run resumes where it stopped.

    python -m deop_lite.datasets prepare voc --root ~/data/VOCdevkit/.. --out ~/data/deop/voc
    python -m deop_lite.datasets info ~/data/deop/voc

``SegmentationDataset(out, split)`` reads the result; its items have the toy world's format
(``image_raw`` (3, H, W) in [0, 1], ``label`` (H, W) int64), so every stage runs on either world.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import checks, runtime
from .metrics import IGNORE_INDEX
from .world import World, shard

# ----------------------------------------------------------------------------------------------------
# Class lists and zero-shot splits

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOC_UNSEEN = VOC_CLASSES[15:]  # pottedplant, sheep, sofa, train, tvmonitor (DeOP's datasets/prepare_voc_sem_seg.py)

# COCO-Stuff: category ids 1..182 without the 11 unused ones; the PNG maps store id - 1, 255 = unlabeled.
COCO_STUFF_IDS = tuple(i for i in range(1, 183) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91})
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood")
# unseen classes of DeOP's datasets/prepare_coco_stuff_164k_sem_seg.py
COCO_STUFF_UNSEEN = ("cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard", "clouds",
                     "grass", "playingfield", "river", "road", "tree", "wall-concrete")

CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow",
    "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")

ADE150_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")


@dataclass(frozen=True)
class DatasetInfo:
    """What the preparation command and the loaders need to know about one dataset."""
    name: str
    class_names: tuple[str, ...]
    unseen: tuple[str, ...]  # empty: a cross-dataset evaluation set (every class counts as unseen there)
    splits: tuple[str, ...]  # official split names we prepare: (train, val) or (val,)
    layout: str  # the official layout, shown when files are missing
    download: str

    @property
    def seen(self) -> tuple[str, ...]:
        return tuple(c for c in self.class_names if c not in self.unseen)


DATASETS: dict[str, DatasetInfo] = {
    "voc": DatasetInfo(
        "voc", VOC_CLASSES, VOC_UNSEEN, ("train", "val"),
        "ROOT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}; optional SBD "
        "aug: ROOT/VOCdevkit/VOC2012/SegmentationClassAug/*.png (+ ImageSets/Segmentation/trainaug.txt) or "
        "ROOT/benchmark_RELEASE/dataset/cls/*.mat",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar (SBD: "
        "http://home.bharathh.info/pubs/codes/SBD/download.html)"),
    "coco_stuff": DatasetInfo(
        "coco_stuff", COCO_STUFF_CLASSES, COCO_STUFF_UNSEEN, ("train", "val"),
        "ROOT/images/{train2017,val2017}/*.jpg and either ROOT/stuffthingmaps_trainval2017/{train2017,val2017}/*.png "
        "or ROOT/annotations/{instances,stuff}_{train,val}2017.json (COCO JSON, read with pycocotools)",
        "http://images.cocodataset.org/zips/{train,val}2017.zip and "
        "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip"),
    "context59": DatasetInfo(
        "context59", CONTEXT59_CLASSES, (), ("val",),
        "ROOT/VOCdevkit/VOC2010/{JPEGImages, ImageSets/Main/val.txt} and ROOT/trainval/*.mat + ROOT/labels.txt (the "
        "official PASCAL-Context release; the 59 classes are picked by name)",
        "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz and "
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar"),
    "ade150": DatasetInfo(
        "ade150", ADE150_CLASSES, (), ("val",),
        "ROOT/ADEChallengeData2016/{images,annotations}/validation/*",
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"),
}
"""The four datasets of the paper's Tables 1 and 2. VOC and COCO-Stuff train and evaluate (Table 1);
Context-59 and ADE-150 only evaluate a COCO-Stuff model (Table 2)."""


class DatasetNotFound(checks.InputError, FileNotFoundError):
    """A dataset folder or file is missing, unprepared or unreadable; the message says which layout is expected,
    where to get it, or how to prepare it again."""


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise checks.InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _require(path: Path, info: DatasetInfo, root: Path) -> Path:
    if not path.exists():
        raise DatasetNotFound(f"{info.name}: {path} does not exist. Expected the official layout under --root "
                              f"{root}:\n  {info.layout}\nDownload: {info.download}")
    return path


# ----------------------------------------------------------------------------------------------------
# Readers: (split, root) -> iterator of (id, image path, function giving the full label map)
# A full label map holds indices into ``info.class_names`` and IGNORE_INDEX.

LabelReader = Callable[[], np.ndarray]


def _lookup(table: dict[int, int]) -> np.ndarray:
    """A 256-entry uint8 table mapping raw label values to class indices (everything else -> ignore)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for raw, index in table.items():
        lut[raw] = index
    return lut


VOC_LUT = _lookup({raw: raw - 1 for raw in range(1, 21)})  # 0 background and 255 border -> ignore


def _read_png(path: Path, lut: np.ndarray) -> LabelReader:
    return lambda: lut[np.asarray(Image.open(path))]


def _read_sbd(path: Path) -> LabelReader:
    def read() -> np.ndarray:
        from scipy.io import loadmat
        return VOC_LUT[loadmat(path)["GTcls"]["Segmentation"][0, 0].astype(np.uint8)]
    return read


def _list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_voc(root: Path, split: str) -> Iterator[tuple[str, Path, LabelReader]]:
    info = DATASETS["voc"]
    voc = _require(root / "VOCdevkit" / "VOC2012", info, root)
    lists = voc / "ImageSets" / "Segmentation"
    val_ids = _list(_require(lists / "val.txt", info, root))
    if split == "val":
        for image_id in val_ids:
            label = voc / "SegmentationClass" / f"{image_id}.png"
            yield image_id, voc / "JPEGImages" / f"{image_id}.jpg", _read_png(label, VOC_LUT)
        return
    # train: SBD-augmented when present ("trainaug", 10,582 images), else VOC's own train list (1,464)
    aug_png, sbd = voc / "SegmentationClassAug", root / "benchmark_RELEASE" / "dataset" / "cls"
    if aug_png.is_dir():
        listed = lists / "trainaug.txt"
        ids = _list(listed) if listed.exists() else sorted(p.stem for p in aug_png.glob("*.png"))
        readers = {i: _read_png(aug_png / f"{i}.png", VOC_LUT) for i in ids}
    else:
        ids = _list(_require(lists / "train.txt", info, root))
        readers = {i: _read_png(voc / "SegmentationClass" / f"{i}.png", VOC_LUT) for i in ids}
        if sbd.is_dir():
            extra = sorted(p.stem for p in sbd.glob("*.mat"))
            ids += [i for i in extra if i not in readers]
            readers.update({i: _read_sbd(sbd / f"{i}.mat") for i in extra if i not in readers})
    excluded = set(val_ids)  # SBD overlaps VOC val: never train on validation images
    for image_id in ids:
        if image_id not in excluded:
            yield image_id, voc / "JPEGImages" / f"{image_id}.jpg", readers[image_id]


COCO_STUFF_LUT = _lookup({cat_id - 1: index for index, cat_id in enumerate(COCO_STUFF_IDS)})


def read_coco_stuff(root: Path, split: str) -> Iterator[tuple[str, Path, LabelReader]]:
    info = DATASETS["coco_stuff"]
    images = _require(root / "images" / f"{split}2017", info, root)
    maps = root / "stuffthingmaps_trainval2017" / f"{split}2017"
    if maps.is_dir():
        for path in sorted(maps.glob("*.png")):
            yield path.stem, images / f"{path.stem}.jpg", _read_png(path, COCO_STUFF_LUT)
        return
    yield from _read_coco_json(root, split, images, info)


def _read_coco_json(root: Path, split: str, images: Path, info: DatasetInfo) -> Iterator[tuple[str, Path, LabelReader]]:
    """COCO-Stuff from its JSON annotations: things (instances_*.json) painted over stuff (stuff_*.json)."""
    from pycocotools.coco import COCO
    files = [root / "annotations" / f"{kind}_{split}2017.json" for kind in ("stuff", "instances")]
    present = [f for f in files if f.exists()]
    if not present:
        _require(files[0], info, root)
    index_of = {cat_id: index for index, cat_id in enumerate(COCO_STUFF_IDS)}
    apis = [COCO(str(f)) for f in present]  # stuff first, then things on top
    for image_id in sorted(apis[0].getImgIds()):
        meta = apis[0].loadImgs(image_id)[0]

        def read(image_id=image_id, meta=meta) -> np.ndarray:
            label = np.full((meta["height"], meta["width"]), IGNORE_INDEX, dtype=np.uint8)
            for api in apis:
                for ann in api.loadAnns(api.getAnnIds(imgIds=image_id, iscrowd=None)):
                    if ann["category_id"] in index_of:  # 183 "other" stays ignored
                        label[api.annToMask(ann).astype(bool)] = index_of[ann["category_id"]]
            return label
        yield Path(meta["file_name"]).stem, images / meta["file_name"], read


def read_context59(root: Path, split: str) -> Iterator[tuple[str, Path, LabelReader]]:
    """PASCAL-Context's official release: 459-class label maps in .mat files, reduced to the 59 classes."""
    from scipy.io import loadmat
    info = DATASETS["context59"]
    voc = _require(root / "VOCdevkit" / "VOC2010", info, root)
    names459 = {}
    for line in _require(root / "labels.txt", info, root).read_text().splitlines():
        if ":" in line:
            raw, name = line.split(":", 1)
            names459[int(raw)] = name.strip()
    missing = set(CONTEXT59_CLASSES) - set(names459.values())
    if missing:
        raise ValueError(f"{root / 'labels.txt'} lacks the PASCAL-Context-59 classes {sorted(missing)}")
    lut = np.full(max(names459) + 1, IGNORE_INDEX, dtype=np.uint8)  # the other 400 classes -> ignore
    for raw, name in names459.items():
        if name in CONTEXT59_CLASSES:
            lut[raw] = CONTEXT59_CLASSES.index(name)
    for image_id in _list(_require(voc / "ImageSets" / "Main" / f"{split}.txt", info, root)):
        mat = _require(root / "trainval" / f"{image_id}.mat", info, root)
        yield image_id, voc / "JPEGImages" / f"{image_id}.jpg", lambda mat=mat: lut[loadmat(mat)["LabelMap"]]


ADE_LUT = _lookup({raw: raw - 1 for raw in range(1, 151)})  # 0 "other" -> ignore


def read_ade150(root: Path, split: str) -> Iterator[tuple[str, Path, LabelReader]]:
    folder = {"train": "training", "val": "validation"}[split]
    ade = _require(root / "ADEChallengeData2016", DATASETS["ade150"], root)
    for path in sorted(_require(ade / "annotations" / folder, DATASETS["ade150"], root).glob("*.png")):
        yield path.stem, ade / "images" / folder / f"{path.stem}.jpg", _read_png(path, ADE_LUT)


READERS = {"voc": read_voc, "coco_stuff": read_coco_stuff, "context59": read_context59, "ade150": read_ade150}


# ----------------------------------------------------------------------------------------------------
# Preparation: official layout -> labels/<split>/<id>.png + <split>.json

def seen_only(label: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Training labels of the ZS3 protocol: unseen classes -> IGNORE_INDEX (the images are kept)."""
    unseen = np.zeros(256, dtype=bool)
    unseen[[info.class_names.index(c) for c in info.unseen]] = True
    return np.where(unseen[label], IGNORE_INDEX, label).astype(np.uint8)


def prepare(name: str, root: str | Path, out: str | Path, splits: Sequence[str] | None = None,
            progress: bool | None = None) -> dict[str, Path]:
    """Convert ``name``'s official files under ``root`` into deop_lite's format under ``out``.

    Returns {split: index path}. Idempotent: a split whose index exists is skipped, and label files
    already written are not written again (an interrupted run resumes).
    """
    info, root, out = dataset_info(name), Path(root).expanduser(), Path(out).expanduser()
    written = {}
    for split in splits or info.splits:
        index_path = out / f"{split}.json"
        if index_path.exists():
            print(f"{name} {split}: {index_path} exists, skipping (delete it to prepare again)")
            written[split] = index_path
            continue
        train = split == "train"
        label_dir = out / "labels" / split
        label_dir.mkdir(parents=True, exist_ok=True)
        items, counts, dropped = [], np.zeros(len(info.class_names), dtype=np.int64), 0
        entries = list(READERS[name](root, split))
        for image_id, image_path, read_label in tqdm(entries, desc=f"prepare {name} {split}",
                                                     disable=runtime.CI if progress is None else not progress):
            _require(image_path, info, root)
            label_path = label_dir / f"{image_id}.png"
            label = _read_label_file(label_path) if label_path.exists() else None  # None: not written yet, or unreadable
            if label is None:
                try:
                    label = read_label()
                except (OSError, KeyError, ValueError) as error:  # a missing or unreadable annotation
                    raise DatasetNotFound(f"{info.name} {split}: cannot read the annotation of {image_id} ({error}). "
                                          f"Expected the official layout under --root {root}:\n  {info.layout}\n"
                                          f"Download: {info.download}") from error
                label = seen_only(label, info) if train else label
                if train and (label == IGNORE_INDEX).all():
                    dropped += 1  # nothing seen left to learn from: DeOP's code does not write it
                    continue
                with checks.atomic_path(label_path) as tmp:
                    Image.fromarray(label).save(tmp)
            counts += np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=len(info.class_names))[:len(counts)]
            items.append({"id": image_id, "image": str(image_path.resolve()), "label": f"labels/{split}/{image_id}.png"})
        classes = info.seen if train else info.class_names
        index = {"dataset": name, "split": split, "class_names": list(info.class_names), "unseen": list(info.unseen),
                 "seen_only": train, "root": str(root.resolve()), "dropped_all_ignore": dropped, "items": items}
        with checks.atomic_path(out / f"{split}_label_count.json") as tmp:
            tmp.write_text(json.dumps({c: int(counts[info.class_names.index(c)]) for c in classes}, indent=1))
        with checks.atomic_path(index_path) as tmp:  # last: its presence means the split is complete
            tmp.write_text(json.dumps(index, indent=1))
        print(f"{name} {split}: {len(items)} images -> {out}" + (f" ({dropped} all-unseen images dropped)" if dropped else ""))
        written[split] = index_path
    return written


def _read_label_file(path: Path) -> np.ndarray | None:
    """A prepared label PNG as an array, or None when the file is missing, truncated or not an image."""
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------
# Loading

class SegmentationDataset(torch.utils.data.Dataset):
    """A prepared split: items ``image_raw`` (3, H, W) float in [0, 1], ``label`` (H, W) int64, ``id``.

    ``class_names``, ``seen_classes`` and ``unseen_classes`` describe the label indices; training splits
    hold seen classes only (``seen_only``).
    """

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root).expanduser()
        index_path = self.root / f"{split}.json"
        if not index_path.exists():
            raise DatasetNotFound(f"no prepared split at {index_path}. Prepare it first: `python -m deop_lite.datasets "
                                  f"prepare DATASET --root RAW_DATA --out {self.root}` (datasets: {', '.join(DATASETS)})")
        try:
            index = json.loads(index_path.read_text())
            self.name, self.split, self.items = index["dataset"], split, index["items"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise DatasetNotFound(f"{index_path} is corrupt ({type(error).__name__}: {error}); delete it and prepare the "
                                  f"split again: `python -m deop_lite.datasets prepare DATASET --root RAW_DATA --out "
                                  f"{self.root}`") from None
        self.class_names = tuple(index["class_names"])
        self.unseen_classes = tuple(index["unseen"]) or self.class_names  # cross-dataset: every class is new
        self.seen_classes = tuple(c for c in self.class_names if c not in index["unseen"]) if index["unseen"] else ()
        self.seen_only = index["seen_only"]
        if not self.items:
            raise DatasetNotFound(f"{index_path} lists no images; prepare the split again")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        try:
            image = np.asarray(Image.open(item["image"]).convert("RGB"))
        except OSError as error:
            raise DatasetNotFound(f"cannot read image {item['image']} ({error}); was the raw data moved? "
                                  f"Prepare {self.name} again with the new --root") from error
        label = _read_label_file(self.root / item["label"])
        if label is None or label.shape != image.shape[:2]:
            problem = "is unreadable" if label is None else f"is {label.shape} but its image is {image.shape[:2]}"
            raise DatasetNotFound(f"the label file {self.root / item['label']} {problem}: delete "
                                  f"{self.root / (self.split + '.json')} and prepare the split again (`python -m "
                                  f"deop_lite.datasets prepare`), which rewrites unreadable label files")
        return {"image_raw": torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0,  # (3, H, W)
                "label": torch.from_numpy(label.astype(np.int64)),  # (H, W)
                "id": item["id"], "index": index}

    def __repr__(self) -> str:
        return (f"SegmentationDataset({self.name}, {self.split}: {len(self)} images, {len(self.class_names)} classes, "
                f"{len(self.unseen_classes)} unseen{', seen-only labels' if self.seen_only else ''})")


# ----------------------------------------------------------------------------------------------------
# Training samples: a pure function of (seed, position in the stream), whatever the number of processes

# DeOP's configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_bs32_60k_proposalmask_featupsample_img512.yaml, MIN_SIZE_TRAIN:
SCALES = tuple(0.5 + 0.1 * k for k in range(11))  # short side = crop x scale: {256, 307, ..., 768} for 512


def training_sample(dataset, position: int, crop: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``position`` of the endless training stream: image ``perm_epoch[position % len]``, resized to a
    random short side (``crop`` x ``SCALES``), randomly cropped to ``crop`` x ``crop`` (padded with grey /
    ignore when smaller) and flipped with probability 1/2; DeOP's input pipeline without colour jitter.

    Returns image_raw (3, crop, crop) in [0, 1] and label (crop, crop) int64.
    """
    epoch, offset = divmod(position, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    item = dataset[int(order[offset])]
    rng = torch.Generator().manual_seed(seed * 1_000_003 + position)
    image, label = item["image_raw"], item["label"]
    short = round(crop * SCALES[int(torch.randint(len(SCALES), (1,), generator=rng))])
    h, w = image.shape[-2:]
    size = (short, max(1, round(w * short / h))) if h <= w else (max(1, round(h * short / w)), short)
    image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                                            align_corners=False)[0]  # (3, h', w')
    label = torch.nn.functional.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    pad_h, pad_w = max(0, crop - size[0]), max(0, crop - size[1])
    image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=0.5)
    label = torch.nn.functional.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    top = int(torch.randint(image.shape[1] - crop + 1, (1,), generator=rng))
    left = int(torch.randint(image.shape[2] - crop + 1, (1,), generator=rng))
    image, label = image[:, top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]
    if torch.rand(1, generator=rng) < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image.clamp(0, 1), label


class DatasetWorld(World):
    """A prepared real dataset as a :class:`~deop_lite.world.World`: its training split read DeOP's way
    (:meth:`training_batch`: random scale, ``crop`` x ``crop`` crop, flip), its validation split at full size,
    no post-processing of proposals.

    Args:
        root: the prepared folder (``python -m deop_lite.datasets prepare``).
        crop: the side of the training crops (512 in the paper).
        seed: the training stream's seed.
        val_split: the split :meth:`validation_set` reads.
    """
    refinement = None

    def __init__(self, root: str | Path, crop: int = 512, seed: int = 0, val_split: str = "val"):
        self.root, self.crop, self.seed, self.val_split = Path(root), crop, seed, val_split
        self.train = SegmentationDataset(root, "train")
        self.name, self.class_names = self.train.name, self.train.class_names
        self.seen_classes, self.unseen_classes = self.train.seen_classes, self.train.unseen_classes

    def training_batch(self, step: int, batch_size: int, share: int = 0, shares: int = 1) -> dict:
        """Share ``share`` of ``shares`` of global batch ``step`` (``world.shard``), each sample drawn from its position
        in the stream (:func:`training_sample`): one process with batch B and W processes with B/W each see exactly
        the same samples, so a multi-GPU run equals a single-GPU one (and resumes on another number of GPUs)."""
        samples = [training_sample(self.train, p, self.crop, self.seed) for p in shard(step, batch_size, share, shares)]
        return {"image_raw": torch.stack([s[0] for s in samples]), "label": torch.stack([s[1] for s in samples])}

    def training_set(self) -> SegmentationDataset:
        return self.train

    def validation_set(self, scenes: int | None = None) -> torch.utils.data.Dataset:
        val = SegmentationDataset(self.root, self.val_split)
        return val if scenes is None else torch.utils.data.Subset(val, range(min(scenes, len(val))))

    def __repr__(self) -> str:
        return f"DatasetWorld({self.name} at {self.root}, crop {self.crop})"


@checks.command("python -m deop_lite.datasets")
def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m deop_lite.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert a dataset's official files (idempotent, resumable)")
    prep.add_argument("dataset", choices=list(DATASETS))
    prep.add_argument("--root", required=True, help="where the official download was unpacked")
    prep.add_argument("--out", required=True, help="where the prepared dataset goes")
    prep.add_argument("--splits", nargs="+",
                      help="default: " + ", ".join(f"{k}: {'/'.join(v.splits)}" for k, v in DATASETS.items()))
    info = sub.add_parser("info", help="describe a prepared dataset")
    info.add_argument("out")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.dataset, args.root, checks.output_folder(args.out), args.splits)
    else:
        splits = [p.stem for p in sorted(checks.input_folder(args.out, "the folder").glob("*.json"))
                  if not p.stem.endswith("label_count")]
        if not splits:
            raise DatasetNotFound(f"{args.out} holds no prepared split: prepare one with `python -m deop_lite.datasets "
                                  f"prepare DATASET --root RAW_DATA --out {args.out}`")
        for split in splits:
            print(SegmentationDataset(args.out, split))


if __name__ == "__main__":
    main()
