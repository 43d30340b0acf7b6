# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · The toy world and CLIP
# *Zero-shot recognition from scratch: a world we can generate, and a CLIP we can train on a laptop.*
#
# - **You will build:** the zero-shot segmentation problem and its ZS3 protocol, a procedural toy world of stuff and things with captions, a tiny CLIP pre-trained on those captions, zero-shot classification, and dense CLIP patch features with the naive per-patch labelling that the rest of the series improves on.
# - **You need:** nothing but a CPU; the toy CLIP ships in `data/`. Modules: `deop_lite.toyworld`, `deop_lite.clip`, `deop_lite.toyclip`, `deop_lite.metrics`, `deop_lite.viz`.
# - **Runtime:** as the [README's notebook table](../README.md#notebooks) gives it, measured with the shipped checkpoints; CI mode (`DEOP_CI=1`) is shorter.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import inspect

from deop_lite import bench, clip as clip_lib, losses, metrics, proposals, runtime, severance, stages, toyclip, toyworld, viz
from deop_lite.train import read_log, read_metadata

runtime.set_seed(0)
viz.setup_notebook()
DATA = runtime.DATA_DIR
print(runtime.describe())
viz.pipeline_figure("00", title="DeOP pipeline: this notebook builds the highlighted boxes")
plt.show()

# %% tags=["parameters"]
# Dials (papermill can override them).
N_GALLERY = 12  # scenes in the gallery of section 2
N_SCENES_SPEED = 100 if runtime.CI else 500  # scenes per timing round in section 2: more scenes, a steadier rate
REAL_CLIP_WEIGHTS = None  # e.g. "openai" or "/path/to/ViT-B-16.bin" to run the last section on real CLIP

# %% [markdown]
# ## 1. The problem: zero-shot semantic segmentation
#
# Semantic segmentation labels every pixel with a class. In the **zero-shot** setting (ZS3, the protocol of ZS3Net that DeOP follows) the classes split into seen and unseen:
#
# > We follow the settings of zero-shot segmentation in ZS3Net [2], which defines all classes as $C = C_s \cup C_u$ and $C_s \cap C_u = \emptyset$, where $C_s$ is the category set of seen classes and $C_u$ is the set of unseen classes. — DeOP §3
#
# The segmentation model is trained with labels of $C_s$ only (pixels of unseen classes are ignored, the images are kept), and at test time must label all of $C$. What carries knowledge of the unseen classes is a vision-language model, CLIP, pre-trained on image–caption pairs that mention everything.
#
# Our toy world has 16 classes: 8 *stuff* (textures filling regions) and 8 *things* (shapes). A quarter of them is unseen, stuff and things alike; COCO-Stuff's 156/15 split also hides both kinds, and its unseen list holds grass and road too.

# %%
# NBVAL_CHECK_OUTPUT
print("stuff :", toyworld.STUFF_CLASSES)
print("things:", toyworld.THING_CLASSES)
print("seen  :", toyworld.SEEN_CLASSES)
print("unseen:", toyworld.UNSEEN_CLASSES)
print(f"{len(toyworld.CLASS_NAMES)} classes: {len(toyworld.SEEN_CLASSES)} seen, {len(toyworld.UNSEEN_CLASSES)} unseen")


# %% [markdown]
# Results are reported as mIoU over seen classes, mIoU over unseen classes, and their **harmonic mean**, which is only high when both are:
#
# $$\mathrm{hIoU} = \frac{2\,\mathrm{mIoU}_s\,\mathrm{mIoU}_u}{\mathrm{mIoU}_s + \mathrm{mIoU}_u}$$
#
# The tables of this series add two columns: **pAcc**, pixel accuracy (the share of labelled pixels given their true class), and **things**, the mIoU over the 8 thing classes alone. Pixels labelled `IGNORE_INDEX` (`255`) count in no metric.

# %%
def h_iou(seen, unseen):
    return 2 * seen * unseen / (seen + unseen)

# DeOP on COCO-Stuff (paper Table 1): seen 38.0, unseen 38.4 -> hIoU 38.2
print(f"{h_iou(38.0, 38.4):.1f}")
assert h_iou(38.0, 38.4) == metrics.harmonic_mean(38.0, 38.4)

# %% [markdown]
# ## 2. The toy world
#
# A scene is a canvas of stuff textures in regions (wavy bands, cells or blobs) with things on top. Stuff is texture (grass blades, water ripples, bricks); **things are objects assembled from parts**: a ladybird is a shell with a black head, spots and a midline, a car a body with windows and two wheels, a clock a rim, a face, ticks and hands. Parts are one of the criteria COCO-Stuff lists for telling things from stuff:
#
# > Thing classes have identifiable parts [...], whereas stuff classes do not (e.g. a piece of grass is still grass, but a wheel is not a car). — Caesar et al., COCO-Stuff, CVPR 2018
#
# Parts are drawn in the thing's own coordinates, so they scale with it: a patch of a large ladybird shows a spot, whatever the ladybird's size, and a patch of a mushroom cap shows white dots on red, not black spots. Each class comes in the colours of its palette (ladybirds are red, orange or yellow), rotated a little and lit from a random side. Each scene has a label map and a caption naming what is visible, in varied wording. Scenes are a pure function of `(split, seed, index)`: no files, byte-identical everywhere.
#
# The scene statistics were chosen from real data before anything was trained on them:
#
# | choice (128-px segmentation scenes) | value | the real-data statistic it mirrors (from the datasets' papers) |
# |---|---|---|
# | pixels that are things | about a third (measured below) | COCO-Stuff: stuff covers about two thirds of the pixels, things the rest (Caesar et al.) |
# | things per scene | 2 to 5, each class at most once (mean 3.5) | COCO: 3.5 object categories per image on average (Lin et al., ECCV 2014) |
# | thing diameters | log-uniform, 0.2 to 0.9 of the side (3 to 14 patches of 8 px) | COCO's object areas span two orders of magnitude (41 % small, 34 % medium, 24 % large instances): a log scale, cut at 3 patches because a thing smaller than a patch is invisible on a 16 × 16 grid |
# | unseen classes | grass and road (stuff), fish and car (things): 4 of 16 | COCO-Stuff's ZS3 split: 15 of 171 unseen, stuff (grass, road, river, …) and things (giraffe, cow, …) among them |

# %%
# NBVAL_CHECK_OUTPUT
seg = toyworld.ToyWorldConfig.segmentation()
stats_scenes = [toyworld.make_scene(toyworld.scene_rng("val", i), seg) for i in range(200)]
thing_ids = [toyworld.CLASS_NAMES.index(c) for c in toyworld.THING_CLASSES]
coverage = sum(float(np.isin(s.label, thing_ids).mean()) for s in stats_scenes) / len(stats_scenes)
visible = [sum(c in toyworld.THING_CLASSES for c in s.classes) for s in stats_scenes]
print(f"things cover {100 * coverage:.1f} % of the pixels of 200 validation scenes; "
      f"{sum(visible) / len(visible):.2f} things per scene are big enough to be named in the caption")
(low, high), patch = seg.thing_size, clip_lib.ToyClipConfig.patch_size
print(f"things drawn per scene: {seg.things[0]} to {seg.things[1]} (mean {sum(seg.things) / 2:.1f}); diameters {low} to {high} "
      f"of the side: {low * seg.image_size / patch:.0f} to {high * seg.image_size / patch:.0f} patches of {patch} px")
pre = toyworld.ToyWorldConfig()  # the 64 x 64 images the toy CLIP is pre-trained on (section 3)
print("pre-training images: " + ", ".join(f"{100 * p:.0f} % {kind}" for kind, p in zip(toyworld.SCENE_KINDS, pre.kind_probs))
      + f"; a thing is named with its colour {100 * pre.colour_word_prob:.0f} % of the time")

# %%
fig, axes = plt.subplots(1, 8, figsize=(12, 1.8))
for ax, name in zip(axes, toyworld.THING_CLASSES):
    single = toyworld.make_scene(toyworld.scene_rng("val", 5), kind="object", classes=(name,))
    ax.imshow(single.image); ax.set_title(name + ("*" if name in toyworld.UNSEEN_CLASSES else ""), fontsize=9); ax.axis("off")
fig.suptitle("the eight things (* unseen)", fontsize=10)
plt.show()

# %%
world = toyworld.ToyScenes("val", length=N_GALLERY, config=toyworld.ToyWorldConfig.segmentation())
scenes = [world.scene(i) for i in range(N_GALLERY)]
fig = viz.show_scenes([s.image for s in scenes], [s.label for s in scenes], [s.caption for s in scenes], size=2.3)
fig.suptitle(f"{N_GALLERY} validation scenes: each panel's title is its caption; label colours (legend) blended over the image", fontsize=10)
fig.tight_layout(rect=(0, 0.06, 1, 1))
plt.show()

# %% [markdown]
# Besides multi-object scenes the world draws two single-class kinds, which play the role of CLIP's object-centric web photos: a texture filling the image (`"stuff"`), and one large thing on a plain, unlabelled background (`"object"`, label `IGNORE_INDEX = 255`). Figures draw unlabelled pixels black.

# %%
singles = [toyworld.make_scene(toyworld.scene_rng("val", i), kind=kind) for i, kind in enumerate(["stuff", "object"] * 3)]
fig = viz.show_scenes([s.image for s in singles], [s.label for s in singles], [s.caption for s in singles], size=2.3)
fig.suptitle('the single-class kinds, "stuff" and "object": each panel\'s title is its caption; unlabelled pixels black', fontsize=10)
fig.tight_layout(rect=(0, 0.17, 1, 1))  # one row: the legend needs a larger share of the height
plt.show()

# %% [markdown]
# **The ZS3 protocol in the data.** Training labels hide the unseen classes: their pixels become `IGNORE_INDEX` (drawn black below), so no loss is ever computed on them. The paper says this about its training images:
#
# > During training, we only use images belonging to seen classes in the training dataset, while including all images in the validation dataset. — DeOP §5.1
#
# The official data code keeps every training image and relabels the unseen pixels as ignored. This project does the same, so the model does see unseen objects, unlabelled.

# %%
train_world = toyworld.ToyScenes("train", length=64, config=toyworld.ToyWorldConfig.segmentation())
index = next(i for i in range(64) if set(train_world.scene(i).classes) & set(toyworld.UNSEEN_CLASSES))
scene, item = train_world.scene(index), train_world[index]
fig = viz.show_scenes([scene.image, scene.image], [scene.label, item["label"]],
                      ["evaluation labels", "training labels: unseen pixels ignored (black)"], ncols=2, size=3)
fig.suptitle(f"training scene {index}: {scene.caption}", fontsize=10)
fig.tight_layout(rect=(0, 0.06, 1, 1))
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
unseen_ids = torch.tensor([toyworld.CLASS_NAMES.index(c) for c in toyworld.UNSEEN_CLASSES])
print("unseen classes in this scene:", sorted(set(scene.classes) & set(toyworld.UNSEEN_CLASSES)))
print("unseen pixels in training labels:", torch.isin(item["label"], unseen_ids).sum().item())

# %% [markdown]
# Determinism and speed: the same index gives the same bytes, and generation is fast enough to stream fresh scenes into training instead of storing a dataset. The rate depends on the machine; the cell times the 64 × 64 pre-training images on one thread.

# %%
# NBVAL_IGNORE_OUTPUT
a, b = toyworld.make_scene(toyworld.scene_rng("train", 7)), toyworld.make_scene(toyworld.scene_rng("train", 7))
assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption
speed = bench.toyworld_throughput(scenes=N_SCENES_SPEED, rounds=3)  # what `deop-lite bench toyworld` measures
print(f"{speed['scenes_per_s']:.0f} scenes/s (64 x 64) on one thread: the best of 3 rounds "
      f"(median {speed['median_scenes_per_s']:.0f})")

# %% [markdown]
# ## 3. CLIP, and how the toy CLIP was trained
#
# CLIP has an image encoder $f$ (a ViT) and a text encoder $g$ (a causal transformer read at the end-of-text token), trained so that a batch of $B$ matching image–caption pairs lines up: with unit-norm embeddings $x_i = f(\text{image}_i)$, $t_j = g(\text{caption}_j)$ and a learned temperature $\tau$, the logits are $\ell_{ij} = \tau\, x_i^\top t_j$ and the loss is cross-entropy both ways, image→text and text→image.
#
# Plain CLIP treats every other caption in the batch as a negative. Our captions repeat: "a red ladybird on grass." and "grass with a red ladybird." say the same thing. We put captions that name the same classes and colours into one *group* $G(i)$ and spread the target over it:
#
# $$\mathcal{L} = \tfrac12\big[\mathrm{CE}(\ell, T) + \mathrm{CE}(\ell^\top, T)\big],\qquad T_{ij} = \frac{[G(i)=G(j)]}{|G(i)|}$$

# %%
captions = ["a photo of a red ladybird on grass.", "grass with a red ladybird.", "a ladybird on grass.", "a photo of sky."]
groups = toyclip.caption_groups(captions)  # (B,)
targets = (groups[:, None] == groups[None, :]).float()
targets = targets / targets.sum(1, keepdim=True)  # (B, B) rows sum to 1
print(groups.tolist())
print(targets)

# %%
torch.manual_seed(0)
x, t = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)  # (B, D) each
tau = torch.tensor(10.0)
logits = tau * x @ t.T  # (B, B)
ours = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
pkg = toyclip.contrastive_loss(x, t, groups, tau.log())
assert torch.allclose(ours, pkg)
print(f"loss {ours.item():.4f}")

# %% [markdown]
# A subtlety worth knowing: for *exact* duplicate captions this grouping changes nothing, because identical captions have identical text embeddings, their logits tie, and plain CLIP's loss and gradients are already the same (a test in `tests/test_toyclip.py` checks it). What grouping changes is paraphrases.
#
# The toy CLIP is an open_clip `CLIP` built from a small config (4-layer ViT of width 128, patch 8 on 64×64 images; 2-layer text transformer; QuickGELU like OpenAI's ViT-B/16), with a word tokenizer over the toy vocabulary. The transformer blocks, which later notebooks hook, are open_clip's own. It was pre-trained on a stream of fresh toy images whose captions cover **all 16 classes**: CLIP's pre-training saw everything; only segmentation training will be restricted to seen classes. Four choices make a CLIP this small, pre-trained for 40 minutes on a CPU (printed below), behave like a web-scale one where DeOP relies on it:
#
# 1. **A convolutional stem** instead of one linear 8×8 projection: three stride-2 3×3 convolutions, then two more at the token resolution, so a patch token sees about 6×6 patches around it before any attention (a "hybrid" ViT). Early convolutions are a known cure for ViTs trained from scratch on little data (Xiao et al., 2021); the two extra ones give a token room to see a part (a wheel, a spot), not only a colour.
# 2. **The image embedding is the mean of the patch tokens** (open_clip's `pool_type="avg"`), not the CLS token: what the whole image means is then literally the average of what its patches mean.
# 3. **Pre-training sees things at the pixel scale of segmentation**: a multi-object pre-training image is a 64-px window of a 128-px segmentation scene, so a patch shows as much of a thing as it will in notebooks 01–06. 40 % of the images are single objects filling a plain background (CLIP's object-centric web photos), and a thing is named with its colour only 25 % of the time (§2's cell prints it), so that shape and parts, not colour, tell a ladybird from a mushroom.
# 4. **Stochastic severance** in pre-training: at each step each block's attention is replaced by the identity (GPS with α = 1, notebook 03) with probability ½, as stochastic depth drops whole blocks. A web-scale CLIP's patch tokens carry what their patch shows; a toy CLIP learns that only when its tokens must sometimes do without mixing. The gate in §4 shows what this buys.
#
# The cell below is the series' **load-or-train** pattern: it loads the shipped checkpoint from `data/` when it is there (the normal case), and otherwise trains a tiny stand-in for a few steps, so that the notebook still runs; the command that trains the real one is printed. Every notebook loads its trained parts this way.

# %%
checkpoint = clip_lib.TOY_CLIP_CHECKPOINT
if checkpoint.exists():
    print(f"Found checkpoint {checkpoint.relative_to(runtime.PROJECT_ROOT)}, loading")
else:  # a few steps of a tiny model, so the notebook still runs; the real one: python -m deop_lite.toyclip train
    print(f"No {checkpoint.name}: training a tiny stand-in (run `{clip_lib.TOY_CLIP_TRAIN_COMMAND}` for the real one)")
    stages.train_toy_clip(toyworld.ToyWorld(), clip_lib.ToyClipConfig.tiny(), stages.Run("runs/toy_clip_tiny", checkpoint))
clip = clip_lib.load_clip("toy")
meta = read_metadata(checkpoint)

# %%
# NBVAL_CHECK_OUTPUT
config = clip_lib.ToyClipConfig.from_dict(meta["config"])
print(config)
print(f"{sum(p.numel() for p in clip.model.parameters()) / 1e6:.2f} M parameters, vocabulary of {len(clip.tokenizer.vocabulary)} words")
summary = meta["summary"]
print(f"pre-trained for {summary['steps']} steps of {config.batch_size} image-caption pairs, "
      f"{summary['train_minutes_this_session']:.0f} min on a CPU; re-train with: {summary['command']}")

# %%
history = read_log(DATA / "toy_clip_train.log")
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
viz.plot_history(history, ["loss"], ax=ax1, title="contrastive loss")
viz.plot_history(history, ["top1", "seen_top1", "unseen_top1"], ax=ax2, title="zero-shot top-1, 20 validation images per class")
ax2.set_ylim(0, 1.05)  # the full scale: top-1 is at or near 1 from the first evaluation on
fig.suptitle("pre-training the toy CLIP", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Zero-shot classification
#
# To classify an image among class names given only at test time, embed one prompt per class ("a photo of a {}.", averaged over a few templates) and pick the class whose text embedding $t_c$ is closest to the image embedding $x$:
#
# $$p(c \mid x) = \frac{\exp(\tau\, x^\top t_c)}{\sum_{c'} \exp(\tau\, x^\top t_{c'})}$$

# %%
text_emb = clip.text_embeddings(toyworld.CLASS_NAMES)  # (C, D), unit norm
image_raw, targets = toyworld.single_class_images(20, "val")  # (C * 20, 3, 64, 64), (C * 20,)
with torch.no_grad():
    x = clip.encode_image(clip.normalize(image_raw))  # (N, D)
    probs = (clip.model.logit_scale.exp() * x @ text_emb.T).softmax(-1)  # (N, C)
print(image_raw.shape, text_emb.shape, probs.shape)

# %%
# NBVAL_CHECK_OUTPUT
result = toyclip.evaluate_zero_shot(clip, n_per_class=20)
assert (probs.argmax(-1) == targets).float().mean().item() == result["top1"]
print(f"top-1 over 16 classes, 20 validation images per class: {100 * result['top1']:.1f}%  "
      f"(seen {100 * result['seen_top1']:.1f}%, unseen {100 * result['unseen_top1']:.1f}%)")

# %%
viz.plot_confusion(result["confusion"], title="toy CLIP, zero-shot, 20 validation images per class")
plt.show()

# %% [markdown]
# Unseen classes are recognised as well as seen ones: for CLIP there is no difference, it saw all of them in captions. The zero-shot difficulty in segmentation comes from the *segmentation* training, which sees only $C_s$ labels; keeping CLIP frozen is how DeOP protects this ability.

# %% [markdown]
# ### The gate: can one pass read what a thing is?
#
# DeOP's one pass reads every segment from the same patch tokens, while the multi-pass methods it is compared with (notebook 05) crop each segment and run CLIP on the crop. Before anything downstream is trained on this world we check that one pass *can* read things: the ground-truth masks of 200 validation scenes are classified by the one-pass baseline (mask pooling of the patch tokens, nothing trained) and by one CLIP pass per mask crop. Proposals play no part. One pass must be within 5 points of the crops' thing mIoU, and must give every thing, seen and unseen, some IoU.
#
# The gate borrows three tools before the notebooks that build them: mask pooling (average the patch tokens inside a mask, then take the nearest class embedding; notebook 01), GPS (a block's attention replaced by the identity; notebook 03) and one CLIP pass per masked crop (notebook 05); here they are black boxes. Given the true masks, each row is an upper bound for its classifier: it asks only whether CLIP can name a segment, not whether anything can find it.
#
# > After conducting a thorough analysis, we discover that the main reason for poor classification performance lies in the segment classification rather than the quality/recall of the masks. — DeOP §1

# %%
# NBVAL_CHECK_OUTPUT
N_GATE = 200  # validation scenes
gate = toyclip.ground_truth_gate(clip, N_GATE, progress=False)
print(f"ground-truth masks of {N_GATE} validation scenes, mIoU and IoU (%); the 8 things' IoU on the right")
print(f"{'':30s} seen unseen  hIoU things | " + " ".join(f"{c[:5]:>5s}" for c in toyworld.THING_CLASSES))
for name, row in gate.items():
    print(f"{name:30s} {row['seen']:4.1f} {row['unseen']:6.1f} {row['hIoU']:5.1f} {row['things']:6.1f} | "
          + " ".join(f"{row['IoU'][c]:5.0f}" for c in toyworld.THING_CLASSES))

# %% [markdown]
# The gate passes. With every block's attention severed (GPS α = 1 in all 4 layers), one pass reads the things of these 200 scenes at a thing mIoU of 92.5 against the crops' 94.6, and gives every thing, seen and unseen, an IoU of 83 or more (the fish is the lowest). The unmodified CLIP (19.5) and DeOP's severed last layer alone (31.2) are far behind: the tokens of our 4-block CLIP mix from the first block on, so severing only the last block leaves three blocks of mixing. The paper, with ViT-B/16's twelve blocks, found severing shallow layers harmful; this toy CLIP was pre-trained to be severed everywhere (§3, choice 4, and §7 below), and notebook 03 measures what each choice does. The toy CLIPs that failed this gate, and what each one measured, are in `docs/experiments.md`.

# %% [markdown]
# ## 5. Dense patch features, and naive per-patch labelling
#
# For segmentation we need CLIP's view of every *patch*, not one vector per image. DeOP passes the whole image through CLIP **once** and reads the patch tokens of the last block:
#
# $$F_V = \mathrm{normalize}\big(\mathrm{ln\_post}(z_{1:hw})\,W_{proj}\big) \in \mathbb{R}^{D \times h \times w}$$
#
# where $z$ are the last block's tokens and the CLS token $z_0$ is dropped. Images of any size work: the positional embedding, learned for an 8×8 grid, is resized bicubically to the current grid. Pixels are normalised with CLIP's own mean and std; the official code feeds ImageNet-normalised pixels instead ([mask_former/zero_shot_clipfeat_upsample_vit16_query2D_maskvit.py](https://github.com/CongHan0808/DeOP/blob/master/mask_former/zero_shot_clipfeat_upsample_vit16_query2D_maskvit.py)), available as `load_clip(..., pixel_norm="imagenet")`.

# %%
image = clip.normalize(torch.stack([world[i]["image_raw"] for i in range(4)]))  # (4, 3, 128, 128)
visual = clip.visual
z = visual.conv1(image)  # (B, W, h, w): one token per 8x8 patch
B, W, h, w = z.shape
z = z.flatten(2).transpose(1, 2)  # (B, h*w, W)
z = torch.cat([visual.class_embedding.expand(B, 1, W), z], dim=1)  # (B, 1 + h*w, W)
z = visual.ln_pre(z + clip_lib.resize_pos_embed(visual.positional_embedding, (h, w)))  # 8x8 grid -> 16x16
print(z.shape)

# %%
with torch.no_grad():
    for block in visual.transformer.resblocks:
        z = block(z)  # (B, 1 + h*w, W)
    f_v = F.normalize(visual.ln_post(z[:, 1:]) @ visual.proj, dim=-1)  # (B, h*w, D)
    f_v = f_v.transpose(1, 2).reshape(B, -1, h, w)  # (B, D, h, w)
    assert torch.allclose(f_v, clip.dense_features(image), atol=1e-6)
print(f_v.shape)

# %% [markdown]
# The most naive zero-shot segmenter labels each patch with its nearest class embedding, $\hat y_{ij} = \arg\max_c\, t_c^\top F_V[:, i, j]$, upsampled to pixels. How good is it?
#
# We score it on the first 200 validation scenes, as notebooks 01 to 05 score their main tables, so notebook 01's row "naive CLIP patches (notebook 00)" is this same number; on fewer scenes it prints another (exercise 1). A metric over a few scenes moves with the scenes drawn: beside each number the table prints its 95 % bootstrap interval (the scenes resampled with replacement), and two results whose intervals overlap widely are not told apart by these scenes.

# %%
# NBVAL_CHECK_OUTPUT
N_VAL = 200  # the first 200 validation scenes, as in the main tables of notebooks 01 to 05
val = toyworld.ToyScenes("val", length=N_VAL, config=toyworld.ToyWorldConfig.segmentation())
meter = metrics.SegmentationMeter(toyworld.CLASS_NAMES, per_scene=True)  # also one confusion per scene, for the interval
for start in range(0, N_VAL, 25):
    batch = torch.utils.data.default_collate([val[i] for i in range(start, start + 25)])
    pred = clip_lib.naive_dense_labels(clip, batch["image_raw"], toyworld.CLASS_NAMES)  # (25, 128, 128)
    meter.update(pred, batch["label"])
split = toyworld.SEEN_CLASSES, toyworld.UNSEEN_CLASSES, toyworld.THING_CLASSES
naive = {**meter.compute(*split), "interval": meter.interval(*split), "scenes": N_VAL}
print(metrics.format_table({"naive CLIP patches": naive}))

# %%
batch = torch.utils.data.default_collate([val[i] for i in range(4)])
pred = clip_lib.naive_dense_labels(clip, batch["image_raw"], toyworld.CLASS_NAMES)  # (4, 128, 128)
viz.show_segmentations(batch["image_raw"], {"ground truth": batch["label"], "naive CLIP patches": pred})
plt.show()

# %%
viz.plot_per_class(naive["IoU"], "IoU (%)", f"naive per-patch labelling, per class, {N_VAL} validation scenes (* unseen)")
plt.show()

# %% [markdown]
# The same CLIP that classified all 320 single-class images of §4 correctly labels patches poorly: hIoU 23.9 on these 200 scenes. Two reasons, which the rest of the series takes apart:
#
# 1. **Patch tokens mix.** In every block of the unmodified CLIP each patch attends to the whole image, so a patch of sand on a scene full of water "talks about" water too. DeOP's patch severance (notebook 03) cuts exactly this; the gate above shows how much it can recover when the segments are known.
# 2. **Patches do not know where objects end.** A class-agnostic mask proposal network (notebook 01) groups pixels into segments first, so that CLIP features are pooled per segment and classified once.

# %% [markdown]
# ## 6. The same calls on real CLIP (ViT-B/16)
#
# Everything above works unchanged with open_clip's ViT-B/16: `load_clip("ViT-B-16", pretrained="openai")` loads OpenAI's weights (QuickGELU variant) from open_clip's cache or the internet, or `pretrained="/path/to/file"` a local checkpoint. Where weights cannot be had, the error says what to do; random weights are never substituted silently. Here, without `REAL_CLIP_WEIGHTS`, we ask for random weights *explicitly* (`pretrained=None`) to show shapes at the paper's resolution:

# %%
try:
    clip_lib.load_clip("ViT-B-16", pretrained="/nonexistent/ViT-B-16.bin")
except clip_lib.ClipWeightsUnavailable as error:
    print("ClipWeightsUnavailable:", str(error)[:160], "...")

# %%
# NBVAL_CHECK_OUTPUT
real = clip_lib.load_clip("ViT-B-16", pretrained=REAL_CLIP_WEIGHTS)  # None: random init, asked for explicitly
with torch.no_grad():
    dense_feats = real.dense_features(torch.randn(1, 3, 512, 512))  # one pass at 512 x 512: a 32 x 32 grid
print("patch size", real.patch_size, "| native size", real.image_size, "| F_V", tuple(dense_feats.shape))

# %% [markdown]
# With random weights the features mean nothing, but the shapes, the one-pass computation and the equality with open_clip's own token output (tested in `tests/test_clip.py`) are real. With OpenAI's weights, `naive_dense_labels(real, image_raw, ["cat", "grass", "sky"])` runs as above.

# %% [markdown]
# ## 7. What the toy world changes, and why
#
# Every notebook after this one rebuilds a table or a figure of the paper in the toy world. Where the toy world departs from the paper's setting, it does so for a reason, and each departure moves some numbers and not others:
#
# | the toy world's departure | why | what it moves |
# |---|---|---|
# | A toy CLIP of 4 blocks, pre-trained here on captions of toy scenes (the paper: OpenAI's ViT-B/16) | no downloads; it trains on a CPU | every absolute number |
# | Its image embedding is the mean of its patch tokens, its stem's convolutions let each token see its neighbours, and pre-training severs each block at random (OpenAI's CLIP: the CLS token, a linear patch embedding, never severed) | so that its patch tokens carry class meaning that severance can read | Table 4: severing every block helps it most, where the paper found severing shallow layers harmful; notebook 03 §4 compares a second toy CLIP pre-trained like ViT-B/16, which cannot be severed everywhere |
# | Severance in the last 2 of its 4 blocks (the paper: the last of ViT-B/16's twelve) | it leaves mixing between patches for CAL (classification anchor learning, notebook 04) to repair, as ViT-B/16 keeps its first eleven blocks | Tables 3 and 5 (notebook 04 §5 and §7; §6 varies the number of severed blocks) |
# | Proposals refined along colour edges at test time (the paper: the proposal network's masks as they are) | the network's coarse masks spill over their objects' edges | every toy-world segmentation table (all rows share the same proposals) |
# | Objects and stuff of no class pasted into the proposal network's training scenes | trained on the seen things alone, the network learns what those look like, not what an object is | unseen Recall@50, the share of unseen segments that some proposal covers with IoU $\ge 0.5$ (notebook 01 §4) |
# | Unseen pixels left out of every loss (the official code: background in the proposal network's loss, void targets in DeOP's, i.e. each unseen pixel a target of an extra learned "void" class) | the paper says only "we only use images belonging to seen classes" (§5.1); the official data code keeps the images and relabels unseen pixels as ignored, as we do; left out of the loss, they are taught as nothing | the unseen columns, by an amount not measured here (`ProposalConfig(ignored_pixels="negative")` and `DeOPStage(ignore_as_void=True)` train the official way) |
# | Few seen classes (12) and short training (500 steps) | a CPU; trained longer, CAL's decoder fits its seen classes and loses its unseen gain (notebook 04 §6) | Table 3 (notebook 04 §5) |
# | The loss constants σ(3S − 3), with S the per-pixel class score map of notebook 02 §5, and 2·focal + 0.8·dice | the paper does not give them; they are the official code's ([mask_former/modeling/criterion_decoder.py](https://github.com/CongHan0808/DeOP/blob/master/mask_former/modeling/criterion_decoder.py)) | nothing: they are how DeOP was trained |
#
# Each row, read from the package:

# %%
# NBVAL_CHECK_OUTPUT
for name, c in (("the shipped toy CLIP", config), ("ToyClipConfig.like_vit_b16()", clip_lib.ToyClipConfig.like_vit_b16())):
    print(f"{name:28s}: {c.vision_layers} blocks, pool={c.pool!r}, severance_drop={c.severance_drop}, stem_context={c.stem_context}")
print(f"the toy DeOP severs blocks {sorted(stages.GPS_TOY.alphas)} of 0..{config.vision_layers - 1} (stages.GPS_TOY); "
      f"the paper's setting: {severance.GPS_LAST.alphas} (severance.GPS_LAST)")
print(f"test-time proposal refinement: {toyworld.REFINEMENT}; training uses the network's own masks")
print(f"proposal training scenes: up to {toyworld.NO_CLASS_OBJECTS} objects of no class each, and a stuff of no class in half of them")
print(f"segmentation training: {len(toyworld.SEEN_CLASSES)} seen classes, {stages.variant_stage('deop').train.steps} steps per variant")
loss = inspect.signature(losses.deop_segmentation_loss).parameters
k = loss["sharpness"].default
print(f"DeOP's loss: P = sigmoid({k:g}·S - {k:g}), {loss['weight_focal'].default:g}·focal + {loss['weight_dice'].default:g}·dice; "
      f"ignore_as_void={loss['ignore_as_void'].default}; the proposals' ignored_pixels={proposals.ProposalConfig().ignored_pixels!r}")

# %% [markdown]
# ## Summary
# - Zero-shot segmentation (ZS3) trains on seen classes only and is scored by the harmonic mean of seen and unseen mIoU.
# - The toy world generates 16-class scenes with labels and captions, byte-identical per index, fast enough to stream into training (§2's cell printed 1249 scenes of 64 × 64 per second on one thread, the best of 3 rounds); things are assembled from parts, cover about a third of the pixels, and training labels hide the 4 unseen classes.
# - The toy CLIP (1.65 M parameters, hybrid conv-stem ViT whose image embedding is the mean of its patch tokens, pre-trained on captions of all classes at the pixel scale of segmentation, with stochastic severance) classifies single-class images zero-shot at 100.0 % top-1, unseen classes as well as seen.
# - The gate: on ground-truth masks, one training-free pass with every block severed reads things almost as well as one pass per crop (thing mIoU 92.5 against 94.6); the unmodified CLIP does not (19.5).
# - Its dense patch features, read in one pass without severance, label pixels poorly (hIoU 23.9 on 200 validation scenes, §5): good image-level recognition does not give good patch-level recognition.
# - §7 lists where the toy world departs from the paper's setting, why, and which tables each departure moves.
#
# ## Exercises
# 1. **Fewer scenes** (seconds). Score the naive labelling on the first 32 validation scenes only: `world.evaluate(lambda batch: clip_lib.naive_dense_labels(clip, batch["image_raw"], toyworld.CLASS_NAMES), toyworld.ToyWorld(), 32, interval=True)` (`from deop_lite import world`), printed with `metrics.format_table`. *Hint:* an interval's width shrinks roughly as one over the square root of the number of scenes. *Expect:* a wider interval than on 200 scenes, and an hIoU that may land above or below the 200-scene value; check whether the 32-scene interval holds the 200-scene value. A number without its scene count cannot be compared.
# 2. **Earlier blocks** (seconds). Label patches with the tokens after 0, 1, 2 or 3 blocks: stop the loop of §5 early, then apply `ln_post` and `proj`, and label with `clip_lib.patch_scores(f_v, text_emb, (128, 128)).argmax(1)` (`text_emb` from §4). *Hint:* score with a `SegmentationMeter`, as in §5. *Expect:* not measured here. Each block mixes the patch tokens further, which argues for stopping early; but the toy CLIP was never trained to read `ln_post` and `proj` from earlier blocks. Which wins? See what happens.
# 3. **Severed patches, no masks** (seconds). Label patches with every block severed: `severance.severed_dense_features(clip.visual, clip.normalize(x), severance.last_blocks_severed(4, 4))`, then `patch_scores` as in exercise 2. *Hint:* it is the severance of the gate's best one-pass row, with no masks to pool over. *Expect:* far above the unsevered labelling, and still below the gate: patches still do not know where objects end (reason 2 above).
# 4. **ImageNet pixels** (seconds). Feed ImageNet-normalised pixels (`load_clip("toy", pixel_norm="imagenet")`, the official code's choice) to the toy CLIP, and run `toyclip.evaluate_zero_shot` and the labelling of §5. *Hint:* compare the two normalisations' means and standard deviations first (`clip_lib.PIXEL_NORMS`). *Expect:* the zero-shot top-1 stays where it is, and the naive hIoU moves by less than its interval: the two normalisations are close.
# 5. **Plain CLIP loss** (a re-train of the toy CLIP, about 40 minutes). Re-train it with `caption_groups(captions)` replaced by `torch.arange(len(captions))` in the step loss of `stages.train_toy_clip`, writing to another file (its `Run`'s `out`). *Hint:* identical captions change nothing (§3); what changes is paraphrases, which become each other's negatives. *Expect:* to read the difference, if any, in the zero-shot top-1 curve and in the naive hIoU with its interval, not in one number.
# 6. **A new thing** (a re-train of the toy CLIP and of everything trained on its features). Add a class to `toyworld.THING_CLASSES` with its parts function. *Hint:* each thing has an entry in the toy world's tables of drawings, body colours and rotations (`toyworld._THINGS`, `toyworld.THING_PALETTES` and `toyworld._MAX_ROTATION`); captions and the vocabulary follow the class names. *Expect:* the shipped toy CLIP cannot know it, since its vocabulary has no word for it: the toy CLIP must be re-trained, and with it every learned part that reads its features (notebooks 02 to 04).
#
# **Next:** [01_baseline.ipynb](01_baseline.ipynb): a class-agnostic mask proposal network, trained on seen classes, and the decoupled one-pass baseline.
