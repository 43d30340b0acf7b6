"""All drawing in one place: the class palette, label overlays, galleries, confusion matrices,
training curves and the DeOP pipeline figure. Notebooks call these; they never redefine them."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.patches import FancyBboxPatch, Patch

from . import checks
from .clip import patch_scores
from .metrics import IGNORE_INDEX
from .model import classify_masks_with
from .severance import NONE, Severance, severed_features_and_attention, severed_features_and_rollout
from .toyworld import CLASS_NAMES, UNSEEN_CLASSES

PALETTE = (np.concatenate([
    np.array(sns.color_palette("tab20", 20))[[0, 4, 18, 16, 6, 10, 15, 14, 2, 8, 12, 3, 1, 19, 9, 5]],  # the toy classes
    np.array(sns.color_palette("tab20", 20))[[7, 11, 13, 17]],  # the rest of tab20: 20 distinct colours in all (VOC)
    np.array(sns.color_palette("husl", 236))[np.argsort(np.arange(236) * 97 % 236)],  # up to 255 classes, hues spread
]) * 255).astype(np.uint8)
"""(256, 3) uint8: one colour per class id: the 16 toy classes in ``CLASS_NAMES`` order, then distinct colours
up to 20 classes (VOC), then spread hues for the large label sets (COCO-Stuff 171, ADE 150)."""
IGNORE_COLOUR = np.array([0, 0, 0], np.uint8)


def setup_notebook(dpi: int = 72) -> None:
    """Figure defaults for notebooks: a modest dpi keeps committed notebooks small (< 2 MB)."""
    plt.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "axes.titlesize": 9})


def to_hwc(image_raw) -> np.ndarray:
    """(3, H, W) tensor in [0, 1] or (H, W, 3) uint8 array -> (H, W, 3) float array in [0, 1]."""
    if isinstance(image_raw, torch.Tensor):
        return image_raw.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    image = np.asarray(image_raw)
    return image.astype(np.float32) / 255 if image.dtype == np.uint8 else image


def colorize(label) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 palette colours; IGNORE_INDEX is black."""
    label = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label).astype(np.int64)
    out = PALETTE[label % len(PALETTE)]
    out[label == IGNORE_INDEX] = IGNORE_COLOUR
    return out


def overlay(image_raw, label, opacity: float = 0.55) -> np.ndarray:
    """Blend the palette colours of ``label`` (H, W) over the image; ignored pixels (IGNORE_INDEX) are drawn
    black, opaque, so that what a loss never sees stands out."""
    image = to_hwc(image_raw)
    label_np = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label)
    blend = (1 - opacity) * image + opacity * colorize(label_np) / 255
    return np.where((label_np == IGNORE_INDEX)[..., None], 0.0, blend)


def legend_colour_index(name: str, position: int) -> int:
    """The palette entry of a class in legends: its toy-world id, or its position in another vocabulary."""
    return CLASS_NAMES.index(name) if name in CLASS_NAMES else position % len(PALETTE)


def class_legend(ax, class_names: Sequence[str] = CLASS_NAMES, unseen: Sequence[str] = UNSEEN_CLASSES,
                 ncol: int = 8, **kwargs) -> None:
    """A legend of palette colours; unseen classes are marked with an asterisk."""
    handles = [Patch(color=PALETTE[legend_colour_index(c, i)] / 255,
                     label=f"{c}*" if c in unseen else c) for i, c in enumerate(class_names)]
    ax.legend(handles=handles, ncol=ncol, frameon=False, fontsize=8, **kwargs)


def show_scenes(images, label=None, captions: Sequence[str] | None = None, ncols: int = 6,
                size: float = 2.0):
    """A gallery: each image with its label overlay (if given) and caption as title. Returns the figure."""
    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(overlay(images[i], label[i]) if label is not None else to_hwc(images[i]))
        if captions is not None:
            ax.set_title("\n".join(textwrap.wrap(captions[i], 26)), fontsize=7)
    if label is not None:
        class_legend(fig, loc="lower center")
    fig.tight_layout(rect=(0, 0.06 if label is not None else 0, 1, 1))
    return fig


def show_segmentations(image_raw, columns: dict, size: float = 2.0, class_names: Sequence[str] = CLASS_NAMES,
                       unseen: Sequence[str] = UNSEEN_CLASSES):
    """Rows of scenes: the image, then one column per named label map, e.g. {"ground truth": label,
    "prediction": pred}, each (B, H, W); the legend lists ``class_names`` (unseen starred). Returns the figure."""
    n = len(image_raw)
    fig, axes = plt.subplots(n, 1 + len(columns), figsize=(size * (1 + len(columns)), size * n + 0.4),
                             squeeze=False)
    for row in range(n):
        axes[row, 0].imshow(to_hwc(image_raw[row]))
        for col, (title, label) in enumerate(columns.items(), start=1):
            axes[row, col].imshow(overlay(image_raw[row], label[row], opacity=0.75))
            if row == 0:
                axes[row, col].set_title(title, fontsize=9)
    axes[0, 0].set_title("image", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    class_legend(fig, class_names, unseen, loc="lower center", ncol=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_confusion(confusion, class_names: Sequence[str] = CLASS_NAMES, unseen: Sequence[str] = UNSEEN_CLASSES,
                   ax=None, title: str = ""):
    """Row-normalised confusion matrix (rows: true class) as a seaborn heatmap; unseen classes starred."""
    conf = np.asarray(confusion, dtype=float)
    conf = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    names = [f"{c}*" if c in unseen else c for c in class_names]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(conf, ax=ax, cmap="Blues", vmin=0, vmax=1, xticklabels=names, yticklabels=names,
                square=True, cbar_kws={"shrink": 0.7, "label": "fraction of the row"})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (* = unseen in segmentation training)")
    ax.set_title(title)
    return ax.figure


def plot_history(history: Sequence[dict], keys: Sequence[str] = ("loss",), ax=None, title: str = ""):
    """Training curves: each key of the history records against the step (records lacking it skipped)."""
    return _plot_curves({key: (history, key) for key in keys}, ax, title, legend_size=None)


def plot_runs(histories: dict[str, Sequence[dict]], key: str, ax=None, title: str = ""):
    """One key of several runs' histories against the step, one curve per named run (records lacking it skipped)."""
    return _plot_curves({name: (history, key) for name, history in histories.items()}, ax, title or key, legend_size=8)


def plot_run_panels(histories: dict[str, Sequence[dict]], panels: dict[str, str], size: tuple[float, float] = (9, 2.8)):
    """Side by side, one panel per logged key (key -> panel title), each with one curve per named run. Returns the figure."""
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    for ax, (key, title) in zip(axes[0], panels.items()):
        plot_runs(histories, key, ax=ax, title=title)
    return fig


def _plot_curves(curves: dict[str, tuple[Sequence[dict], str]], ax, title: str, legend_size: int | None):
    """One curve per label: (history records, key) -> the key's values against the step."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    for label, (history, key) in curves.items():
        points = [(r["step"], r[key]) for r in history if key in r]
        ax.plot(*zip(*points), marker="o" if len(points) < 20 else None, ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=legend_size)
    ax.grid(alpha=0.3)
    return ax.figure


_SWEEP_CLIPS = {"shipped": "shipped toy CLIP", "like_vit_b16": "toy CLIP like ViT-B/16"}
"""The sweep's toy CLIPs (``clip`` of each run) as a legend names them."""


def plot_severance_sweep(runs: Sequence[dict], key: str = "hIoU"):
    """The severed-blocks sweep (``model.severance_sweep()``): left, ``key`` of baseline+ w/ PS ("ps") and DeOP
    ("deop") on the shipped toy CLIP against the number K of severed blocks, one line style per training length;
    right, CAL's gain (DeOP − PS), one line per toy CLIP and training length, with its 95 % paired interval over
    the scenes as a band where the runs carry one (``cal_gain``). Returns the figure."""
    fig, (ax, gain_ax) = plt.subplots(1, 2, figsize=(9.5, 3.3))
    final = {(r.get("clip", "shipped"), r["variant"], r["blocks"], r["steps"]): r["final"][key] for r in runs}
    paired = {(r.get("clip", "shipped"), r["blocks"], r["steps"]): r["cal_gain"][key][1:] for r in runs
              if r["variant"] == "deop" and key in r.get("cal_gain", {})}  # (low, high)
    styles = dict(zip(sorted({r["steps"] for r in runs}), ("-", "--", ":")))
    for clip, colour in zip(sorted({c for c, *_ in final}, key=lambda c: c != "shipped"), ("k", "tab:purple")):
        for steps, style in styles.items():
            blocks = sorted(b for c, v, b, n in final if (c, v, n) == (clip, "deop", steps) and (clip, "ps", b, n) in final)
            if not blocks:
                continue
            if clip == "shipped":
                for variant, line_colour in (("ps", "tab:blue"), ("deop", "tab:red")):
                    ax.plot(blocks, [final[(clip, variant, b, steps)] for b in blocks], style, color=line_colour, marker="o",
                            ms=4, label=f"{'PS' if variant == 'ps' else 'DeOP (PS + CAL)'}, {steps} steps")
            gain_ax.plot(blocks, [final[(clip, "deop", b, steps)] - final[(clip, "ps", b, steps)] for b in blocks], style,
                         color=colour, marker="o", ms=4, label=f"{_SWEEP_CLIPS.get(clip, clip)}, {steps} steps")
            if all((clip, b, steps) in paired for b in blocks):
                low, high = zip(*(paired[(clip, b, steps)] for b in blocks))
                gain_ax.fill_between(blocks, low, high, color=colour, alpha=0.12, lw=0)
    gain_ax.axhline(0, color="gray", lw=0.8)
    bottom, top = gain_ax.get_ylim()
    gain_ax.set_ylim(bottom, top + 0.5 * (top - bottom))  # room for the legend above the bands
    depth = max(r["blocks"] for r in runs)
    for axis, title, ylabel in ((ax, f"shipped toy CLIP: {key}, last K blocks severed", key),
                                (gain_ax, "CAL's gain, DeOP − PS (bands: 95 % paired intervals)", f"Δ {key}")):
        axis.set_xticks(range(1, depth + 1))
        axis.set_xlabel(f"K, severed blocks (of {depth})")
        axis.set_ylabel(ylabel)
        axis.set_title(title, fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(frameon=False, fontsize=7, loc="lower right" if axis is ax else "upper right")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# The DeOP pipeline, with one notebook's stages highlighted

_BOXES = {  # key: (x, y, width, height, text)
    "data": (0.0, 1.25, 1.5, 1.1, "image\n(toy world /\nCOCO-Stuff)"),
    "proposals": (2.2, 2.5, 2.6, 1.0, "mask proposal network\n(class-agnostic MaskFormer)"),
    "clip_image": (2.2, 1.2, 2.6, 1.0, "frozen CLIP image encoder\nONE pass, visual prompts"),
    "severance": (2.45, 0.95, 2.1, 0.38, "patch severance (GPS/MPS)"),
    "names": (0.0, -0.3, 1.5, 0.8, "class names\nseen + unseen"),
    "clip_text": (2.2, -0.3, 2.6, 0.8, "CLIP text encoder\n+ learned text prompts"),
    "anchors": (5.5, 1.3, 2.2, 1.0, "CAL heatmap decoder\n$H=\\mathrm{softmax}(qF_V^T/\\sqrt{d})\\odot M$"),
    "classify": (8.4, 0.9, 2.4, 1.8, "pooling $F_I = H \\odot F_V$\n$F_C = F_T * F_I$\n$O = F_C * M$\n→ label map"),
}
_ARROWS = [("data", "proposals", ""), ("data", "clip_image", ""), ("names", "clip_text", ""),
           ("proposals", "anchors", "$M$"), ("clip_image", "anchors", "$F_V$"), ("anchors", "classify", "$H$"),
           ("clip_text", "classify", "$F_T$"), ("proposals", "classify", "")]
NOTEBOOK_STAGES = {
    "00": ("data", "names", "clip_image", "clip_text"), "01": ("proposals", "classify"),
    "02": ("clip_image", "clip_text"), "03": ("severance",), "04": ("anchors", "classify"),
    "05": ("clip_image", "classify"), "06": ("severance", "proposals"), "07": tuple(_BOXES),
}
"""Which boxes each notebook builds (its pipeline figure highlights them)."""


def pipeline_figure(highlight: Sequence[str] | str = (), title: str = "DeOP: decoupled one-pass"):
    """Draw DeOP's pipeline. ``highlight``: box keys, or a notebook number such as "03"."""
    if isinstance(highlight, str):
        highlight = NOTEBOOK_STAGES[highlight]
    fig, ax = plt.subplots(figsize=(9, 3.1))
    for key, (x, y, w, h, text) in _BOXES.items():
        lit = key in highlight
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.03", lw=1.5 if lit else 0.8,
                                    fc="#ffd8a8" if lit else "#f1f3f5", ec="#e8590c" if lit else "#868e96",
                                    zorder=3 if key == "severance" else 2))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=7.5, zorder=4,
                fontweight="bold" if lit else "normal")
    for start, end, label in _ARROWS:
        x0, y0, w0, h0, _ = _BOXES[start]
        x1, y1, w1, h1, _ = _BOXES[end]
        ax.annotate("", xy=(x1, y1 + h1 / 2), xytext=(x0 + w0, y0 + h0 / 2),
                    arrowprops=dict(arrowstyle="->", color="#495057", lw=1, shrinkA=2, shrinkB=2))
        if label:
            ax.text((x0 + w0 + x1) / 2, (y0 + h0 / 2 + y1 + h1 / 2) / 2 + 0.1, label, fontsize=8,
                    ha="center", color="#495057")
    ax.set_xlim(-0.1, 10.9)
    ax.set_ylim(-0.45, 3.65)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _tinted_grid(images_raw, masks, titles, outlines=None, ncols: int = 8, size: float = 1.5, dim: bool = False,
                 suptitle: str | None = None):
    """A grid of images, each with its mask (H, W) in [0, 1] tinted orange (``dim``: the image darkened where
    the mask is off, which reads on any colour) and, optionally, an outline (H, W) binary drawn in green."""
    nrows = -(-len(images_raw) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3), squeeze=False)
    tint = np.array([1.0, 0.35, 0.0])
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image_raw, mask) in enumerate(zip(axes.flat, images_raw, masks)):
        image = to_hwc(image_raw)
        mask = torch.as_tensor(mask).detach().float().cpu().numpy()[..., None]  # (H, W, 1)
        ax.imshow(image * (0.1 + 0.9 * mask ** 2) if dim else np.clip(image * (1 - 0.6 * mask) + 0.6 * mask * tint, 0, 1))
        if dim and mask.max() > 0.5:
            ax.contour(mask[..., 0], [0.5], colors="cyan", linewidths=0.8)
        if outlines is not None:
            ax.contour(torch.as_tensor(outlines[i]).float().cpu().numpy(), [0.5], colors="lime", linewidths=1.2)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def show_proposals(image_raw, mask_probs, titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.5):
    """One image's proposals: the image as each mask σ(M_n) (N, H, W) sees it, dark where the mask is low, with
    the σ = 0.5 contour in cyan (an idle query's panel is dark). Returns the figure."""
    return _tinted_grid([image_raw] * len(mask_probs), mask_probs, titles, ncols=ncols, size=size, dim=True,
                        suptitle="each query's mask σ(M_n): the image shows through where it is high; cyan: σ(M_n) = 0.5")


def show_segment_matches(images_raw, segments, proposals, titles: Sequence[str], ncols: int = 6, size: float = 1.8):
    """Ground-truth segments (outlined in green) and the proposal matched to each (tinted orange), said in the
    figure's title.

    Args:
        images_raw: (K, 3, H, W) in [0, 1]; segments, proposals: (K, H, W) binary masks; titles: K strings.
    """
    return _tinted_grid(images_raw, proposals, titles, outlines=segments, ncols=ncols, size=size,
                        suptitle="green outline: the ground-truth segment (the truth); orange fill: its best proposal")


def plot_per_class(values: dict, ylabel: str, title: str = "", unseen: Sequence[str] = UNSEEN_CLASSES, ax=None):
    """Bars of one number per class ({class: value}), in palette colours; unseen classes starred."""
    names = [c for c in CLASS_NAMES if c in values] + [c for c in values if c not in CLASS_NAMES]
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 2.6))
    colours = [PALETTE[CLASS_NAMES.index(c)] / 255 if c in CLASS_NAMES else "grey" for c in names]
    ax.bar(range(len(names)), [np.nan_to_num(values[c]) for c in names], color=colours)
    ax.set_xticks(range(len(names)), [f"{c}*" if c in unseen else c for c in names], rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return ax.figure


def show_attention(image_raw, attention, patch: tuple[int, int], maps: dict | None = None, size: float = 2.2):
    """Paper Fig. 5: the image with the chosen patch boxed, then the attention of that patch over the grid
    for each setting. ``attention``: {title: (h, w, h, w)} maps from ``severance.patch_attention``;
    ``maps``: optional extra {title: (H, W)} panels (a proposal mask, a heatmap). Returns the figure."""
    from matplotlib.patches import Rectangle
    image = to_hwc(image_raw)
    panels = {**{t: a[patch[0], patch[1]] for t, a in attention.items()}, **(maps or {})}
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(size * (1 + len(panels)), size + 0.3))
    h, w = next(iter(attention.values())).shape[:2]
    ph, pw = image.shape[0] / h, image.shape[1] / w
    axes[0].imshow(image)
    axes[0].add_patch(Rectangle((patch[1] * pw, patch[0] * ph), pw, ph, fill=False, ec="red", lw=2))
    axes[0].set_title(f"patch ({patch[0]}, {patch[1]})")
    for ax, (title, panel) in zip(axes[1:], panels.items()):
        panel = panel.detach().cpu().numpy() if isinstance(panel, torch.Tensor) else np.asarray(panel)
        ax.imshow(image)
        ax.imshow(panel, cmap="magma", alpha=0.75, extent=(0, image.shape[1], image.shape[0], 0), interpolation="nearest")
        ax.set_title(title)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


class AlphaExplorer:
    """Interactive patch severance: a mode switch (none, DeOP's GPS and MPS, and the training-free successors
    SCLIP, ClearCLIP, NACLIP, ProxyCLIP, CorrCLIP and ResCLIP; MaskCLIP is GPS at α = 1), a dial for how many of
    CLIP's last blocks the mode replaces (the paper severs the last of ViT-B/16's 12; the toy DeOP the last 2 of 4),
    α for GPS (disabled otherwise), a choice of image and patch. Redraws the training-free zero-shot labelling
    (with a legend of its classes) and, for the chosen patch, where its output comes from over all blocks (attention
    rollout, ``severance.severed_features_and_rollout``: the mixing that severance leaves) or, with the panel switch,
    the attention the last block's mode gives it. Text embeddings and masks do not depend on the settings and are
    computed once.

    With the ipympl backend (``%matplotlib widget``) the figure is a live canvas and a click on the image or
    on either map chooses the patch; with any other backend the figure is redrawn as a picture and the patch
    sliders choose it. Building the explorer draws nothing: only :meth:`widget` shows the figure.

    Args:
        clip: a ``ClipModel``.
        images_raw: (K, 3, H, W) images in [0, 1].
        class_names: the classifier's classes.
        mask_probs: optional (K, N, H, W) proposal probabilities: with them the labelling classifies
            segments (the one-pass pipeline, training-free), and MPS becomes available; without them each
            patch is labelled on its own.
        proxy: optional (K, C, h', w') features of a second model (e.g. the proposal network's pixel decoder): with
            them ProxyCLIP becomes available, and CorrCLIP with the masks too.

    >>> explorer = AlphaExplorer(clip, images_raw, CLASS_NAMES, mask_probs)   # doctest: +SKIP
    >>> explorer.widget()                                                     # doctest: +SKIP
    """

    MODES = ("none", "GPS", "MPS", "SCLIP", "ClearCLIP", "NACLIP", "ProxyCLIP", "CorrCLIP", "ResCLIP")  # MaskCLIP: GPS, α = 1
    PANELS = ("rollout", "last block")  # the right panel: where the patch's output comes from, or its last attention

    def __init__(self, clip, images_raw: torch.Tensor, class_names: Sequence[str], mask_probs: torch.Tensor | None = None,
                 proxy: torch.Tensor | None = None):
        checks.image_batch(images_raw, "images_raw", min_side=clip.patch_size, multiple_of=clip.patch_size)
        class_names = checks.class_names(class_names)
        if mask_probs is not None:
            checks.mask_batch(mask_probs, images_raw)
        if proxy is not None and (proxy.ndim != 4 or len(proxy) != len(images_raw)):
            raise checks.InputError(f"proxy must be (K, C, h, w) features of the {len(images_raw)} images, got "
                                    f"{tuple(proxy.shape)}")
        self.clip, self.images_raw, self.class_names, self.mask_probs = clip, images_raw, class_names, mask_probs
        self.proxy = proxy
        self.text_emb = clip.text_embeddings(self.class_names)  # (C, D), computed once
        self.palette_ids = torch.tensor([legend_colour_index(c, i) for i, c in enumerate(self.class_names)])  # (C,)
        self.grid = (images_raw.shape[-2] // clip.patch_size, images_raw.shape[-1] // clip.patch_size)
        self.depth = len(clip.visual.transformer.resblocks)
        self.state = {"image": 0, "mode": "GPS", "blocks": 1, "alpha": 1.0, "panel": "rollout",
                      "row": self.grid[0] // 2, "col": self.grid[1] // 2}
        backend = plt.get_backend().lower()  # under %matplotlib widget: "widget" or "module://ipympl.backend_nbagg"
        self.interactive = backend in ("widget", "ipympl") or "ipympl" in backend
        if self.interactive:  # a live canvas widget; ioff: not shown until widget() places it
            with plt.ioff():
                self.fig, self.axes = plt.subplots(1, 3, figsize=(8, 3.4))
            self.fig.canvas.header_visible = False
            self.fig.canvas.mpl_connect("button_press_event", self._on_click)
        else:  # outside pyplot, so no backend shows it at the end of the cell that built the explorer
            from matplotlib.figure import Figure
            self.fig = Figure(figsize=(8, 3.4))
            self.axes = self.fig.subplots(1, 3)
        self.fig.subplots_adjust(left=0.01, right=0.99, top=0.82, bottom=0.2, wspace=0.05)
        class_legend(self.fig, self.class_names, loc="lower center", ncol=min(len(self.class_names), 8))
        self.artists = None
        self.output = None
        self.controls: dict = {}  # the widgets, once widget() has built them
        self._moving_sliders = False  # True while select_patch() moves the patch sliders

    def available_modes(self) -> list[str]:
        """The modes this explorer's inputs allow: MPS needs masks, ProxyCLIP a proxy, CorrCLIP both."""
        needs = {"MPS": (self.mask_probs,), "ProxyCLIP": (self.proxy,), "CorrCLIP": (self.mask_probs, self.proxy)}
        return [m for m in self.MODES if all(given is not None for given in needs.get(m, ()))]

    def severance(self) -> Severance:
        """The current state's ``severance.Severance``: the last ``blocks`` blocks (α for GPS, 1 for the other modes,
        which replace the attention whole); nothing severed for "none"."""
        s = self.state
        if s["mode"] == "none":
            return NONE
        mode = "gps" if s["mode"] == "GPS" else s["mode"].lower()
        return Severance(mode, {layer: s["alpha"] if mode == "gps" else 1.0
                                for layer in range(self.depth - s["blocks"], self.depth)})

    def compute(self) -> dict:
        """Labelling (H, W) and, for the chosen patch, the right panel (h, w): its rollout over all blocks, or the
        attention the last block's mode gives it (``panel="last block"``)."""
        s = self.state
        image = self.clip.normalize(self.images_raw[s["image"]:s["image"] + 1])  # (1, 3, H, W)
        masks = None if self.mask_probs is None else self.mask_probs[s["image"]:s["image"] + 1]  # (1, N, H, W)
        proxy = None if self.proxy is None else self.proxy[s["image"]:s["image"] + 1]  # (1, C, h', w')
        with torch.no_grad():
            if s["panel"] == "rollout":
                dense_feats, maps = severed_features_and_rollout(self.clip.visual, image, self.severance(), masks, proxy)
            else:
                dense_feats, maps = severed_features_and_attention(self.clip.visual, image, self.severance(), masks,
                                                                   proxy=proxy)  # (1, h, w, h, w), the last block's
            if masks is None:
                scores = patch_scores(dense_feats, self.text_emb, image.shape[-2:])  # (1, C, H, W)
            else:
                _, scores = classify_masks_with(dense_feats, masks, self.text_emb, self.clip.model.logit_scale.exp().item())
        return {"label": scores.argmax(1)[0], "attention": maps[0, s["row"], s["col"]]}

    def select_patch(self, x: float, y: float) -> dict:
        """Choose the patch under pixel (x, y) of the image (what a click does), keeping the sliders in step."""
        height, width = self.images_raw.shape[-2:]
        if not (0 <= x < width and 0 <= y < height):
            raise checks.InputError(f"pixel ({x}, {y}) lies outside the {width} x {height} image")
        row, col = int(y * self.grid[0] / height), int(x * self.grid[1] / width)
        self._moving_sliders = True  # the sliders follow without redrawing twice
        try:
            for key, value in (("row", row), ("col", col)):
                if key in self.controls:
                    self.controls[key].value = value
        finally:
            self._moving_sliders = False
        return self.update(row=row, col=col)

    def _on_click(self, event) -> None:
        if event.inaxes in self.axes and event.xdata is not None:
            x, y = event.xdata, event.ydata
            if event.inaxes is self.axes[2]:  # the attention map is drawn on the patch grid
                x, y = (x + 0.5) * self.images_raw.shape[-1] / self.grid[1], (y + 0.5) * self.images_raw.shape[-2] / self.grid[0]
            self.select_patch(min(max(x, 0), self.images_raw.shape[-1] - 1), min(max(y, 0), self.images_raw.shape[-2] - 1))

    def _on_slider(self, change) -> None:
        if not self._moving_sliders:
            key = next(key for key, control in self.controls.items() if control is change["owner"])
            self.update(**{key: change["new"]})

    def update(self, **changes) -> dict:
        """Apply widget changes (image, mode, blocks, alpha, row, col), recompute, redraw."""
        unknown = set(changes) - set(self.state)
        if unknown:
            raise checks.InputError(f"unknown explorer setting(s) {sorted(unknown)}; known: {sorted(self.state)}")
        limits = {"image": len(self.images_raw) - 1, "row": self.grid[0] - 1, "col": self.grid[1] - 1}
        if "blocks" in changes and not (isinstance(changes["blocks"], int) and 1 <= changes["blocks"] <= self.depth):
            raise checks.InputError(f"blocks must be an integer in [1, {self.depth}] (how many of the last blocks "
                                    f"the mode replaces), got {changes['blocks']!r}")
        for key, value in changes.items():
            if key == "panel" and value not in self.PANELS:
                raise checks.InputError(f"panel must be one of {self.PANELS}, got {value!r}")
            if key == "mode" and value not in self.MODES:
                raise checks.InputError(f"mode must be one of {self.MODES}, got {value!r}")
            if key == "mode" and value not in self.available_modes():
                needs = "proposal masks (mask_probs)" if value == "MPS" else "proxy features (proxy)" \
                    if value == "ProxyCLIP" else "proposal masks (mask_probs) and proxy features (proxy)"
                raise checks.InputError(f"{value} needs {needs}: build the explorer with them")
            if key.startswith("alpha") and not 0 <= value <= 1:
                raise checks.InputError(f"{key} must lie in [0, 1] (the weight on the identity), got {value}")
            if key in limits and not (isinstance(value, int) and 0 <= value <= limits[key]):
                raise checks.InputError(f"{key} must be an integer in [0, {limits[key]}], got {value!r}")
        self.state.update(changes)
        result = self.compute()
        image = to_hwc(self.images_raw[self.state["image"]])
        label_rgb = overlay(image, self.palette_ids[result["label"]], opacity=0.8)  # colours as in the legend
        attention = result["attention"].numpy()
        ph, pw = image.shape[0] / self.grid[0], image.shape[1] / self.grid[1]
        if self.artists is None:
            from matplotlib.patches import Rectangle
            self.artists = {"image": self.axes[0].imshow(image), "label": self.axes[1].imshow(label_rgb),
                            "attention": self.axes[2].imshow(attention, cmap="magma", interpolation="nearest"),
                            "box": self.axes[0].add_patch(Rectangle((0, 0), pw, ph, fill=False, ec="red", lw=2)),
                            "grid_box": self.axes[2].add_patch(Rectangle((0, 0), 1, 1, fill=False, ec="red", lw=1.5))}
            for ax, title in zip(self.axes, ["image and patch", "zero-shot labelling", ""]):
                ax.set_title(title)
                ax.axis("off")
        s = self.state
        own = attention[s["row"], s["col"]]
        others = attention.copy()
        others[s["row"], s["col"]] = 0
        self.artists["image"].set_data(image)
        self.artists["label"].set_data(label_rgb)
        self.artists["attention"].set_data(attention)
        self.artists["attention"].set_clim(0, max(others.max(), 1e-6))  # scaled to the other patches (the own is boxed)
        self.axes[2].set_title(f"drawn from other patches: {100 * (1 - own):.0f} %", fontsize=8)
        self.artists["box"].set_xy((s["col"] * pw, s["row"] * ph))
        self.artists["grid_box"].set_xy((s["col"] - 0.5, s["row"] - 0.5))
        self.fig.suptitle("stock CLIP" if s["mode"] == "none" else f"{s['mode']} in the last {s['blocks']} of "
                          f"{self.depth} blocks" + (f", α = {s['alpha']:.2f}" if s["mode"] == "GPS" else ""), fontsize=9)
        if self.interactive:
            self.fig.canvas.draw_idle()
        elif self.output is not None:
            from IPython.display import display
            with self.output:
                self.output.clear_output(wait=True)
                display(self.fig)
        return result

    def widget(self):
        """The ipywidgets panel (sliders, mode buttons, figure)."""
        import ipywidgets as w
        s = self.state
        controls = {
            "alpha": w.FloatSlider(value=s["alpha"], min=0, max=1, step=0.05, description="α"),
            "blocks": w.IntSlider(value=s["blocks"], min=1, max=self.depth, description="severed blocks",
                                  style={"description_width": "initial"}),
            "mode": w.ToggleButtons(options=self.available_modes(), value=s["mode"]),
            "panel": w.ToggleButtons(options=self.PANELS, value=s["panel"], description="right panel",
                                     style={"description_width": "initial"}),
            "image": w.IntSlider(value=s["image"], min=0, max=len(self.images_raw) - 1, description="image"),
            "row": w.IntSlider(value=s["row"], min=0, max=self.grid[0] - 1, description="patch row"),
            "col": w.IntSlider(value=s["col"], min=0, max=self.grid[1] - 1, description="patch col"),
        }
        for control in controls.values():
            control.observe(self._on_slider, names="value")

        def alpha_applies(mode: str) -> None:  # α is read by GPS only, the dial by every mode but "none": disabled,
            controls["alpha"].disabled = mode != "GPS"  # not ignored, where they do not apply
            controls["blocks"].disabled = mode == "none"

        controls["mode"].observe(lambda change: alpha_applies(change["new"]), names="value")
        alpha_applies(s["mode"])
        self.controls = controls
        self.output = w.Output()
        self.update()
        figure = self.fig.canvas if self.interactive else self.output
        return w.VBox([w.HBox([controls["mode"], controls["image"]]), w.HBox([controls["blocks"], controls["alpha"]]),
                       w.HBox([controls["row"], controls["col"]]), controls["panel"], figure])
