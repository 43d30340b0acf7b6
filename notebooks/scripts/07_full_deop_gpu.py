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
# # 07 · Full DeOP at the paper's scale
# *From the toy world to PASCAL VOC and COCO-Stuff: the same modules, real images, a real CLIP, one GPU or several.*
#
# - **You will build:** the real-world path of `deop_lite.datasets` and `deop_lite.realworld`: datasets prepared from their official downloads under the zero-shot protocol, presets at the paper's scale with the official code's recipe, and the same recipe shrunk for one 24 GB GPU, the three training stages (prompts, proposals, DeOP), multi-GPU training with `torchrun`, and the evaluations of Tables 1 and 2 written to JSON.
# - **You need:** notebooks 01–04 (every model part used here was built there). For real results: a GPU, OpenAI's ViT-B/16 weights and a prepared VOC or COCO-Stuff folder. Without them (CPU mode and CI mode) the very same cells run on the 17 real VOC images shipped in `data/fixtures/voc/` (6 validate; of the others, those with a seen class left train, section 1), with a random-initialised ViT-B/16 and a small ResNet-18 MaskFormer for two steps per stage: the path runs end to end, but learns nothing.
# - **Runtime:** as the [README's notebook table](../README.md#notebooks) gives it, measured with the shipped checkpoints; CI mode (`DEOP_CI=1`) is shorter.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from deop_lite import bench, datasets, metrics, realworld, runtime, stages, toyworld, train, viz
from deop_lite.clip import load_clip, resize_pos_embed

runtime.set_seed(0)
viz.setup_notebook()
print(runtime.describe())

# %% tags=["parameters"]
GPU = runtime.run_mode() == "GPU"
PRESET = "voc" if GPU else "tiny"  # "coco" for COCO-Stuff 156/15; "tiny" = the VOC fixture, random CLIP, 2 steps a stage
CONSUMER_GPU = True  # bf16 autocast + gradient accumulation: the official code's recipe on one 24 GB GPU (section 2)
RAW_DATA = "~/data/voc"  # the official download, unpacked: VOCdevkit/VOC2012/... (+ SBD), see section 1
PREPARED = "~/data/deop/voc"  # where the prepared dataset goes
RUN_DIR = Path("runs/real/notebook") / PRESET  # checkpoints; copy trained files here to evaluate them instead
PROBE_PAPER_SCALE = not runtime.CI  # section 3.2 also times one step of the voc preset (ViT-B/16, 512 px); CI mode skips it
PROBE_STEPS = 1 if runtime.CI else 3  # timed training steps per probe (section 3.2), after one warm-up step; CI mode: 1

# %%
config = realworld.preset(PRESET, consumer_gpu=CONSUMER_GPU and PRESET != "tiny")
if PRESET == "tiny":
    data = realworld.prepare_fixture(RUN_DIR / "data")
    print(f"the fixture: {len(list(realworld.FIXTURE.glob('VOCdevkit/VOC2012/JPEGImages/*.jpg')))} VOC images")
else:
    datasets.prepare(config.dataset, RAW_DATA, PREPARED)  # idempotent; says where to download what is missing
    data = Path(PREPARED).expanduser()
print(f"preset {config.name}: CLIP {config.clip} ({config.clip_weights or 'random weights'}), {config.crop} px crops, "
      f"N = {config.proposals.num_queries} proposals, backbone {config.proposals.backbone}, data {data}")

# %% [markdown]
# ## 1. The data, under the zero-shot protocol
#
# Each dataset is read from its **official download layout** (`datasets.DATASETS[name].layout` says which files, `.download` where to get them) and converted once into one format: a label PNG per image with class indices (255 = ignore) and a JSON index. The paper gives the class split (ZS3Net's, supplementary C), describes the datasets (supplementary B.1) and says this about which images train:
#
# > During training, we only use images belonging to seen classes in the training dataset, while including all images in the validation dataset.
#
# DeOP's data code does it this way ([datasets/prepare_voc_sem_seg.py](https://github.com/CongHan0808/DeOP/blob/master/datasets/prepare_voc_sem_seg.py), [datasets/prepare_coco_stuff_164k_sem_seg.py](https://github.com/CongHan0808/DeOP/blob/master/datasets/prepare_coco_stuff_164k_sem_seg.py)), and so does `deop_lite.datasets`, on the *training* labels only:
#
# - unseen pixels become 255 ("ignore") and the image is **kept**, so the proposal network and DeOP see unseen objects; what their losses do with those pixels is a separate choice (section 2);
# - an image left with no labelled pixel at all is dropped;
# - VOC's background is ignored everywhere (the 20 object classes are scored), and the evaluation split keeps every class.
#
# | dataset | classes | unseen | used for |
# |---|---|---|---|
# | PASCAL VOC2012 + SBD (`voc`) | 20 | pottedplant, sheep, sofa, train, tvmonitor | training and Table 1 |
# | COCO-Stuff-164k (`coco_stuff`) | 171 | 15 (cow, giraffe, ..., grass, road, tree, wall-concrete) | training and Table 1 |
# | Pascal Context-59 (`context59`) | 59 | – | Table 2 (a COCO model evaluated on it) |
# | ADE20K-150 (`ade150`) | 150 | – | Table 2 |
#
# Context-59 and ADE-150 have no seen/unseen split: every class is scored, as the paper's cross-dataset Table 2 does. Many of their classes are also COCO-Stuff classes, so "new" in the cell below means only "not split".
#
# The same facts, as `deop_lite.datasets` holds them:

# %%
# NBVAL_CHECK_OUTPUT
# "no split": every class of the dataset is scored (Table 2); the classes are not all new to a COCO model
for name, info in datasets.DATASETS.items():
    unseen = f"{len(info.unseen)} unseen: {', '.join(info.unseen)}" if info.unseen else "no split, every class new to a COCO model"
    print(f"{name:10s} {len(info.class_names):3d} classes, splits {'/'.join(info.splits):9s} | {unseen}")
print("label of ignored pixels:", metrics.IGNORE_INDEX)

# %% [markdown]
# The command line does the same as this notebook: `python -m deop_lite.datasets prepare voc --root RAW --out DIR`. It shows a progress bar, skips what is done (re-running is free, an interrupted run resumes) and writes `train_label_count.json`, the per-class pixel counts SimBaseline's loader expects. On the fixture, preparation drops one of the listed training images: it shows only VOC's background, which is ignored, and sheep, an unseen class, so no labelled pixel is left. Hence the 10 training images below.

# %%
# NBVAL_CHECK_OUTPUT
train_set, val_set = datasets.SegmentationDataset(data, "train"), datasets.SegmentationDataset(data, "val")
print(train_set, val_set, sep="\n")
print("seen:", ", ".join(train_set.seen_classes))
print("unseen:", ", ".join(train_set.unseen_classes))
counts = json.loads((data / "train_label_count.json").read_text())
print("seen classes with no training pixel:", ", ".join(c for c, n in counts.items() if n == 0) or "none")

# %% [markdown]
# Validation images with their ground truth (unseen classes starred in the legend; black = ignored, here VOC's background and the object borders VOC leaves unlabelled):

# %%
shown = [val_set[i] for i in range(min(4, len(val_set)))]
viz.show_segmentations([it["image_raw"] for it in shown], {"ground truth": [it["label"] for it in shown]},
                       class_names=train_set.class_names, unseen=train_set.unseen_classes, size=2.4)
plt.show()

# %% [markdown]
# **Training samples are a function of the step.** DeOP's input pipeline ([configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_bs32_60k_proposalmask_featupsample_img512.yaml](https://github.com/CongHan0808/DeOP/blob/master/configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_bs32_60k_proposalmask_featupsample_img512.yaml) and its bases): resize to a random short side in {0.5, 0.6, ..., 1.5} × the crop size, take a random crop (padded with grey / ignore when the image is smaller), flip half of the time. In `datasets.training_sample` every random choice is drawn from a generator seeded by the sample's position in the endless training stream, and the stream's order by the epoch. So global batch `step` is always the same images with the same crops, whoever computes it: this is what lets an interrupted run resume exactly, and lets W processes share a batch. Process r of W takes samples `[r·B/W, (r+1)·B/W)` of it:

# %%
# NBVAL_CHECK_OUTPUT
world = datasets.DatasetWorld(data, config.crop, config.seed)  # the prepared dataset as a world (what every stage reads)
whole = world.training_batch(step=0, batch_size=4)
halves = [world.training_batch(step=0, batch_size=4, share=r, shares=2) for r in range(2)]
assert torch.equal(whole["image_raw"], torch.cat([h["image_raw"] for h in halves]))
print("one process :", tuple(whole["image_raw"].shape), tuple(whole["label"].shape))
print("two processes:", [tuple(h["image_raw"].shape) for h in halves], "-> the same 4 samples")
print("short side / crop size, one drawn per sample:", ", ".join(f"{s:.1f}" for s in datasets.SCALES))

# %% [markdown]
# The four samples of step 0. Black is ignored: VOC's background, unseen objects, and the padding where a crop overhangs its image.

# %%
viz.show_segmentations(whole["image_raw"], {"training label (seen only)": whole["label"]},
                       class_names=train_set.class_names, unseen=train_set.unseen_classes, size=2.0)
plt.show()

# %% [markdown]
# ## 2. The presets: the official code's recipe, and the same on one consumer GPU
#
# `realworld.RealConfig.voc()` and `.coco()` mirror the official scripts ([scripts/train_learn_prompts.sh](https://github.com/CongHan0808/DeOP/blob/master/scripts/train_learn_prompts.sh), [scripts/train_learned_prompts_maskformer.sh](https://github.com/CongHan0808/DeOP/blob/master/scripts/train_learned_prompts_maskformer.sh), [scripts/deop_train.sh](https://github.com/CongHan0808/DeOP/blob/master/scripts/deop_train.sh)): CLIP ViT-B/16 at 512 × 512 crops; a MaskFormer with N = 100 queries, 6 decoder layers and hidden size 256 on a ResNet-101; DeOP with 16 learned text-context vectors, visual prompts added at the input and in blocks 1–5, GPS (α = 1 in the last layer) and query-based CAL with K = 1 (8 heads, FFN 1024, dropout 0.1); at test time the short side resized to 512, the long side at most 2048 (VOC) or 2560 (COCO-Stuff). The paper's implementation details give only the batch and the iterations:
#
# > The experiments are conducted on 8 Tesla V100 32G GPUs, and the batch size is set to 32. The training iterations are 20k for PASCAL VOC 2012 and 60k for COCO-Stuff. — DeOP §5
#
# The learning rates and schedules below, and DeOP's global batch of 16, come from the official scripts and configs, not from the paper. The presets as the package holds them:

# %%
# NBVAL_CHECK_OUTPUT
for name in ("voc", "coco"):
    c = realworld.preset(name)
    p, m, a = c.proposals, c.model, c.model.anchors
    print(f"{name}: CLIP {c.clip} ({c.clip_weights} weights), {c.crop} px crops, pixel norm {c.pixel_norm!r}; "
          f"evaluation: short side {c.eval_short_side}, long side at most {c.eval_max_side}")
print(f"proposals : {p.backbone}, N = {p.num_queries} queries, {p.layers} decoder layers, hidden {p.dim}, "
      f"class_aware={p.class_aware}, ignored_pixels={p.ignored_pixels!r}")
print(f"prompts   : text {m.prompts.text!r} with {m.prompts.n_ctx} context vectors; visual {m.prompts.visual!r} "
      f"at blocks {m.prompts.visual_layers} (0 = the input)")
print(f"severance : {m.severance.mode!r}, alpha per block {m.severance.alphas} (-1 = the last)")
print(f"CAL       : {a.kind!r}, K = {a.layers}, {a.heads} heads, FFN {a.ffn_dim}, dropout {a.dropout}")
print(f"DeOP loss : ignore_as_void={c.ignore_as_void}")

# %% [markdown]
# Where the paper and the official code differ, or where the paper says nothing, the presets pick one side and keep the other as an option. The column "from" says where the preset's choice comes from:
#
# | choice | preset | from | the official code's, as an option |
# |---|---|---|---|
# | proposals | class-agnostic MaskFormer | the paper (§3.1, supplementary A) | class-aware over the seen classes: `config.proposals.class_aware = True` |
# | unseen pixels in the proposals' mask loss | left out | ours: the paper does not say | background of every matched mask: `config.proposals.ignored_pixels = "negative"` |
# | unseen pixels in DeOP's loss | left out | ours: the paper does not say | supervised as void: `config.ignore_as_void = True` |
# | patch severance | GPS, last layer α = 1 | the paper (§4.1, Table 4) | "GPS with mask": `config.model.severance_mode = "gps_mask"` |
# | pixel normalisation for CLIP | CLIP's mean / std | ours: CLIP's own; the paper does not say | ImageNet's: `config.pixel_norm = "imagenet"` |
#
# On unseen pixels the paper's problem definition (§3) says only:
#
# > In training stage, the model needs to project the images into different regions with seen classes.
#
# The official code teaches the unseen pixels of a training image as something: background in every matched proposal, void in DeOP's loss ([mask_former/modeling/criterion_decoder.py](https://github.com/CongHan0808/DeOP/blob/master/mask_former/modeling/criterion_decoder.py)). The presets leave those pixels out of both losses instead, so that no loss tells the network what an unseen object is; that is our choice, not the paper's.
#
# Two more choices are ours, not theirs: stage 1 runs our shared AdamW loop (SimBaseline trains its prompts with SGD), and the backbone is torchvision's ResNet-101 with frozen BatchNorm (the official one is detectron2's deeplab-stem "R101c", whose weights torchvision does not ship).
#
# `.for_consumer_gpu()` shrinks a preset the way nanoGPT's README shrinks GPT-2, keeping what defines the result:
# - **bf16 autocast** (forward passes only; weights, optimiser and losses stay fp32): about half the activation memory, about twice the matmul speed on Ampere and newer GPUs;
# - **gradient accumulation**: the global batch stays 16 (DeOP) and 16 / 32 (proposals), made of micro-batches of 4, so learning rates and schedules stay the official code's;
# - nothing else: the same steps, crops, N and CLIP. The run is slower, and bf16 changes its results in the last bits.

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for name in ("voc", "coco"):
    for consumer in (False, True):
        c = realworld.preset(name, consumer_gpu=consumer)
        for stage, s in c.stages.items():
            rows.append(f"{c.name:14s} {stage:9s} steps {s.train.steps:6d} | global batch {s.batch_size:2d} = "
                        f"{s.accumulate} x {s.batch_size // s.accumulate:2d} | lr {s.train.lr:.0e} {s.train.schedule:6s} | clip {s.train.grad_clip:g}"
                        f" | bf16 {c.bf16}")
print("\n".join(rows))

# %% [markdown]
# ## 3. What changes at scale
#
# ### 3.1 Resolution: interpolating the positional embedding
#
# CLIP ViT-B/16 was trained at 224 × 224: 14 × 14 patches, so its positional embedding has 1 + 196 rows. DeOP runs it at 512 × 512, a 32 × 32 grid, *without re-training*: the 14 × 14 table is resized bicubically to 32 × 32 (the CLS row kept) on every forward pass (`clip.resize_pos_embed`, as DeOP's code does). The visual prompts added to the tokens are resized the same way from their 24 × 24 reference grid: the official code sizes them for a smaller input (`cfg.INPUT.LEARNPOSITIONRES = 384`, that is 24 × 24 patches; `PromptConfig.real()`). Each position's embedding stays most similar to its neighbours', which is all the network needs:

# %%
# NBVAL_CHECK_OUTPUT
clip = load_clip(config.clip, pretrained=config.clip_weights)
pos = clip.visual.positional_embedding.detach()  # (1 + 14 * 14, 768)
pos_512 = resize_pos_embed(pos, (32, 32))  # (1 + 32 * 32, 768)
print(f"positional embedding at 224 px: {tuple(pos.shape)} = 1 + {pos.shape[0] - 1} rows; at 512 px: {tuple(pos_512.shape)}")
with torch.no_grad():
    dense_feats = clip.dense_features(clip.normalize(torch.rand(1, 3, 512, 512)))
print(f"dense CLIP features of a 512 x 512 image, one pass: {tuple(dense_feats.shape)}")


# %%
def similarity_map(table: torch.Tensor, grid: int, row: int, col: int) -> torch.Tensor:
    # cosine similarity of one patch position's embedding with every other: (grid, grid)
    patches = torch.nn.functional.normalize(table[1:], dim=-1)  # (grid * grid, W)
    return (patches @ patches[row * grid + col]).view(grid, grid)

fig, axes = plt.subplots(1, 2, figsize=(7, 3.3), layout="constrained")
for ax, (table, grid, where) in zip(axes, [(pos, 14, (4, 9)), (pos_512, 32, (9, 21))]):
    shown_map = ax.imshow(similarity_map(table, grid, *where), cmap="magma", vmin=-1, vmax=1)
    ax.plot(where[1], where[0], "c+", markersize=8)  # the chosen position
    ax.set_title(f"{grid} x {grid}: position {where} (+)")
    ax.axis("off")
fig.colorbar(shown_map, ax=axes, shrink=0.8, label="cosine similarity")
fig.suptitle(f"positional embedding of {config.clip} ({config.clip_weights or 'random weights: a random table, no structure'})",
             fontsize=10)
plt.show()

# %% [markdown]
# With OpenAI's weights each map is a bright blob around the chosen position, the same blob at both sizes. With random weights (CPU and CI mode) the 14 × 14 table is noise: only the chosen position itself is bright. The blob at 32 × 32 then comes from the bicubic interpolation alone, which blends each new position from its neighbours.
#
# ### 3.2 Cost: tokens, FLOPs, memory
#
# Going from 224 to 512 multiplies the tokens by 5.2 (197 → 1025). The MLPs and projections grow with the tokens, attention with their square: one pass costs 6.1 times the FLOPs of a 224 crop (counted on PyTorch's meta device, no weights needed), and in training DeOP back-propagates through all 12 layers, because the visual prompts enter at layer 0 and the text context through the text tower.

# %%
# NBVAL_CHECK_OUTPUT
tokens = {side: (side // 16) ** 2 + 1 for side in (224, 512)}
for side in (224, 512):
    flops = bench.clip_flops("ViT-B-16", side)
    print(f"ViT-B/16 dense pass at {side} x {side}: {tokens[side]:5d} tokens, {flops['one_pass'] / 1e9:6.1f} GFLOPs "
          f"= {flops['break_even_crops']:.1f} crops at 224")
print(f"tokens x {tokens[512] / tokens[224]:.1f} from 224 to 512 px; {len(clip.visual.transformer.resblocks)} transformer blocks")

# %% [markdown]
# Throughput and memory of one training step, measured here with random weights and random pixels (the cost of a step depends on neither): `realworld.throughput`, also on the command line as `python -m deop_lite.realworld probe --preset voc [--consumer-gpu] --micro-batch 4`. On a CPU the memory is the process's peak resident size, on a GPU `torch.cuda.max_memory_allocated`.

# %%
probes = [realworld.throughput(config, "deop", micro_batch=2 if PRESET == "tiny" else 4, steps=PROBE_STEPS)]
if PROBE_PAPER_SCALE and PRESET == "tiny":  # one step of the paper-scale preset on the same device, for scale
    probes.append(realworld.throughput(realworld.preset("voc"), "deop", micro_batch=1, steps=1))
for p in probes:
    print(f"{p['preset']:13s} {p['stage']} step, {p['clip']} at {p['crop']} px, micro-batch {p['micro_batch']}, "
          f"bf16 {p['bf16']}, {p['device']}: {p['images_per_s']:.2f} images/s, {p['s_per_step']:.1f} s/step, "
          f"peak memory {p['peak_memory_gb']:.1f} GB")

# %% [markdown]
# ### 3.3 Several GPUs
#
# `torchrun --nproc_per_node 4 -m deop_lite.realworld train --preset coco --data DIR` starts four processes; each joins the process group (NCCL on GPUs, gloo on CPUs), wraps the trained modules in `DistributedDataParallel` and computes its quarter of every global batch (section 1). DDP's backward averages the gradients over processes, so all four take the step one process would take with the whole batch. Rank 0 alone writes logs and checkpoints, and a checkpoint holds no trace of the number of processes: a run may stop on 4 GPUs (`--stop-at`) and resume on 1.
#
# `tests/test_realworld.py` checks both on a CPU with the gloo backend: 2 processes with half the batch each against 1 process with all of it give the same loss at every step and the same weights, and a run paused by 2 processes and finished by 1 ends with the same weights as the uninterrupted one. The test trains in float64 (`RealConfig(float64=True)`): two processes add the same numbers in another order than one, and in float32 that rounding difference alone can grow over a few AdamW steps into visibly different weights; in float64 it stays far below the test's tolerance.

# %%
print(f"one GPU : python -m deop_lite.realworld train --preset {PRESET} --data {data}")
print(f"4 GPUs  : torchrun --nproc_per_node 4 -m deop_lite.realworld train --preset {PRESET} --data {data}")
print(f"evaluate: python -m deop_lite.realworld eval --preset {PRESET} --data {data} --run-dir {RUN_DIR}")

# %% [markdown]
# ## 4. Training the three stages
#
# These are notebook 01's, 02's and 04's training calls with another world. Each stage is a function of `deop_lite.stages`, `train_X(world, stage, run)`: the toy notebooks pass the toy world, `toyworld.ToyWorld()`; here the world is the prepared dataset, `datasets.DatasetWorld(data, crop)`, whose training batches are DeOP's random scale, crop and flip, sharded across processes. The preset gives the stage configs (`realworld.deop_stage(config)` and its siblings), and the `Run` says where the files go and how the steps run (the device, micro-batches, bf16, DistributedDataParallel). Nothing else differs: the loss, the loop and the frozen parts are the toy world's.
#
# `realworld.train` runs the stages in order; each is load-or-train (skipped when its file is in the run folder, resumed from its `last.pt` when interrupted):
#
# 1. **prompts**: the text context is learned offline on CLIP embeddings of seen-class segment crops (`prompts.segment_crop_embeddings`, as in notebook 02);
# 2. **proposals**: the MaskFormer on seen classes only, Hungarian matching, focal + dice, deep supervision (notebook 01);
# 3. **deop**: visual prompts, CAL, void and the text context (started from stage 1) end to end with DeOP's segmentation loss, proposals and CLIP frozen (notebooks 02–04).

# %%
print(f"{world}: {len(world.seen_classes)} seen and {len(world.unseen_classes)} unseen classes; proposals post-processed by {world.refinement}")
print(f"the toy notebooks' world: {toyworld.ToyWorld()}; proposals post-processed by {toyworld.REFINEMENT}")
print(f"stage 3 here: {realworld.deop_stage(config).batch_size} images a step, {realworld.deop_stage(config).train.steps} steps; "
      f"in notebook 04: {stages.variant_stage('deop').batch_size} images a step, {stages.variant_stage('deop').train.steps} steps")

# %%
run_dir = realworld.train(config, data, RUN_DIR)
fig, axes = plt.subplots(1, 3, figsize=(10, 2.6))
for ax, stage in zip(axes, realworld.STAGES):
    viz.plot_history(train.read_log(run_dir / stage / "train.log"), ax=ax, title=f"stage {stage}")
plt.show()

# %% [markdown]
# ## 5. Evaluation: Table 1 (and Table 2)
#
# `realworld.evaluate` follows the official evaluation ([scripts/deop_verifycoco.sh](https://github.com/CongHan0808/DeOP/blob/master/scripts/deop_verifycoco.sh), [mask_former/evaluation/generalized_sem_seg_evaluation.py](https://github.com/CongHan0808/DeOP/blob/master/mask_former/evaluation/generalized_sem_seg_evaluation.py)): batch 1, the short side resized to 512 (long side at most 2048 for VOC, 2560 for COCO), padded to a multiple of 32, no test-time augmentation; the class map O is resized bilinearly to the label before the argmax, and every class, seen and unseen, competes. Metrics are detectron2's (notebook 01): mIoU over seen and over unseen classes and their harmonic mean hIoU (Table 1). A COCO-Stuff model evaluated on Context-59 or ADE-150 reports mIoU over all classes (Table 2: `--data` a prepared `context59` or `ade150` folder). The command line writes all of it, per-class IoUs included, to JSON.

# %%
device = runtime.default_device()
deop = realworld.build_deop(config, run_dir, device)
result = realworld.evaluate(deop, val_set, config.eval_short_side, config.eval_max_side)
(run_dir / "eval_val.json").write_text(json.dumps(result, indent=1))
paper = realworld.paper_numbers(realworld.preset("voc" if config.dataset == "voc" else "coco"), val_set)
print(f"{val_set.name + ' val, ' + str(result['images']) + ' images':26s} {'pAcc':>6s} {'seen':>6s} {'unseen':>7s} {'hIoU':>6s}")
print(f"{'measured (' + config.name + ' preset)':26s} {result['pAcc']:6.1f} {result['seen']:6.1f} {result['unseen']:7.1f} "
      f"{result['hIoU']:6.1f}   ({result['images_per_s']:.2f} images/s)")
print(f"{'paper, Table 1':26s} {'':6s} {paper['seen']:6.1f} {paper['unseen']:7.1f} {paper['hIoU']:6.1f}   "
      f"(DeOP, ViT-B/16, every val image)")
voc = realworld.preset("voc")
image, size = realworld.eval_input(torch.rand(3, 375, 500), voc.eval_short_side, voc.eval_max_side)  # a common VOC size
print(f"\nvoc preset's evaluation input: (375, 500) -> resized to {size} -> padded to {tuple(image.shape[-2:])}")

# %%
predictions = [realworld.predict_label(deop, it["image_raw"], val_set.class_names, config.eval_short_side,
                                      config.eval_max_side) for it in shown]
viz.show_segmentations([it["image_raw"] for it in shown], {"ground truth": [it["label"] for it in shown], "DeOP": predictions},
                       class_names=val_set.class_names, unseen=val_set.unseen_classes, size=2.4)
plt.show()

# %% [markdown]
# ## 6. Reading the results
#
# **In CPU and CI mode the numbers above mean nothing** beyond "the path runs": CLIP has random weights, and each stage trained for two steps on ten images. What the cells check is that every piece (data, the three stages, evaluation, JSON) fits together on real VOC images, at the same code path a GPU run takes.
#
# **On a GPU** (`PRESET = "voc"`, OpenAI weights, a prepared VOC + SBD folder), compare with the paper's DeOP (ViT-B/16), evaluated on every image of each validation set (§5.1). The paper's Tables 1 and 2:
#
# | trained on | evaluated on | hIoU | seen mIoU | unseen mIoU | mIoU, all classes |
# |---|---|---|---|---|---|
# | VOC, 15 seen classes | VOC val (Table 1) | 80.8 | 88.2 | 74.6 | – |
# | COCO-Stuff, 156 seen classes | COCO-Stuff val (Table 1) | 38.2 | 38.0 | 38.4 | – |
# | COCO-Stuff, 156 seen classes | VOC-20 (Table 2) | – | – | – | 91.7 |
# | COCO-Stuff, 156 seen classes | Context-59 (Table 2) | – | – | – | 48.8 |
# | COCO-Stuff, 156 seen classes | ADE20K-150 (Table 2) | – | – | – | 22.9 |
#
# Where yours differ, check in this order:
#
# 1. **Proposals first.** Measure the recall of seen and unseen segments (`Recall@50`: notebook 01's `proposals.proposal_recall` takes any dataset of this format). Unseen objects the network never proposes cannot be labelled.
# 2. **Classification with ground-truth masks** (`DeOP.classify_masks`, notebook 04 §9): separates what CLIP can recognise from what the proposals lose.
# 3. **The prompt stage.** SimBaseline's README warns that its prompt training "will be affected by the random seed" and advises running it several times ([its README](https://github.com/MendelXu/zsseg.baseline/blob/master/README.md)); train stage 1 with two seeds (`config.seed`) and compare its crop accuracy. Users of SimBaseline's code report numbers below the SimBaseline paper's, and its author answers the first of them that learned prompts are unstable:
#
#    Reported by users of SimBaseline's code on GitHub, beside the SimBaseline paper's numbers as they quote them:
#
#    | report | what was run | metric | reported | SimBaseline paper |
#    |---|---|---|---|---|
#    | [#19](https://github.com/MendelXu/zsseg.baseline/issues/19) | the released COCO-Stuff model, CLIP's visual encoder not tuned | seen / unseen mIoU | 21.01 / 26.95 | 26.8 / 29.7 |
#    | [#20](https://github.com/MendelXu/zsseg.baseline/issues/20) | VOC, re-trained with the official configs and a learned prompt | unseen mIoU | 62.85 | 72.5 |
#
# 4. **The protocol.** Background ignored on VOC, unseen pixels ignored in training, all classes competing at test time: the JSON lists the per-class IoUs to check against.
#
# The GPU's throughput and peak memory for the ViT-B/16 preset come from the same probe as section 3.2, run on the GPU: `python -m deop_lite.realworld probe --preset voc --micro-batch 4` (add `--consumer-gpu` for bf16 and accumulation). Section 3.2's CPU numbers give the scale of one step.

# %% [markdown]
# ## Summary
# - `deop_lite.datasets` reads VOC (+ SBD), COCO-Stuff (PNG maps or COCO JSON through pycocotools), Context-59 and ADE-150 from their official layouts and writes one format with the zero-shot protocol applied to the training labels; preparation is idempotent and resumable and says where to download what is missing.
# - `deop_lite.realworld` holds presets at the paper's scale with the official code's recipe (and the same recipe on one 24 GB GPU: bf16 autocast and gradient accumulation, nothing else changed), the three load-or-train stages, `torchrun` multi-GPU training with DDP (tested: 2 processes = 1 process; a run resumes on another number of processes) and the evaluation of Tables 1 and 2 to JSON.
# - At 512 px, CLIP's 14 × 14 positional embedding is interpolated to 32 × 32, a pass costs 6.1 crops at 224, and training back-propagates through all of CLIP: memory and throughput, not parameters, set the batch size.
#
# ## Exercises
# Each is tagged with what it costs. The first two run in seconds on a CPU, in this notebook.
#
# 1. **FLOPs against resolution** *(seconds, CPU)*. Loop `for side in (224, 384, 512, 768)`, call `bench.clip_flops("ViT-B-16", side)` and print its `break_even_crops` beside the token ratio `((side // 16) ** 2 + 1) / 197`. *Hint:* the MLPs and projections grow with the number of tokens T, attention with T². *Expect:* the FLOPs ratio grows faster than the token ratio, and the gap widens with the side, as attention's share grows (at 512 it is already the gap between 6.1 and 5.2 printed in section 3.2).
# 2. **Four processes, one batch** *(seconds, CPU)*. Split global batch 0 among 4 processes with `world.training_batch(0, 4, share=r, shares=4)` and check that the shares concatenate to `whole`; then ask for 3 processes. *Hint:* a sample's crop, scale and flip are drawn from a generator seeded by its position in the stream, not by the process. *Expect:* the 4 shares equal `whole` exactly; 3 processes are refused with an `InputError`, because a global batch of 4 does not split into 3 equal shares.
# 3. **The official code's choices** *(a re-train of the tiny preset: minutes on a CPU)*. Build `realworld.preset("tiny", ignore_as_void=True)` and, with `dataclasses.replace`, set `proposals.class_aware = True` and `model.severance = severance.Severance("gps_mask", {-1: 1.0})`; train it into a new run folder and evaluate it as in section 5. *Hint:* the run folder is load-or-train, so reusing `RUN_DIR` would load the old stages instead of training. *Expect:* the path runs end to end and the numbers still mean nothing (random CLIP, two steps a stage); the code paths that change are the proposals' loss (a class head and its loss), DeOP's loss (void targets on ignored pixels) and the severed block (its attention now uses the proposals).
# 4. **Micro-batch against throughput** *(a GPU, minutes)*. On a GPU, run `realworld.throughput(realworld.preset("voc", consumer_gpu=True), "deop", micro_batch=b)` for b = 1, 2, 4 and 8. *Hint:* `peak_memory_gb` is `torch.cuda.max_memory_allocated`. *Expect:* images/s grows with b until the GPU is busy, then flattens, while the peak memory grows about linearly in b; the largest b that fits with headroom sets the accumulation factor (global batch / b).
# 5. **Table 2 on ADE-150** *(a trained COCO-Stuff run, a dataset download and a GPU: hours)*. Prepare `ade150`'s validation split and pass it with `--data` to `python -m deop_lite.realworld eval`. *Hint:* ADE-150 has no seen / unseen split. *Expect:* the JSON reports mIoU over all classes and no hIoU; compare it with the paper's ADE20K-150 row in section 6.
#
# ## The end
# This is the last notebook. Back to the start: [00_toy_world_and_clip.ipynb](00_toy_world_and_clip.ipynb); the lab book of how the project was built is `docs/experiments.md`.
