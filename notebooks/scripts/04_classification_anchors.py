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
# # 04 · Classification anchors and the full DeOP
# *Learn which patches to pool for each proposal, assemble DeOP, and measure what every component adds.*
#
# - **You will build:** classification anchor learning (CAL): the query-based heatmap decoder of Eq. 3 and the conv-based one of Eq. 4, each derived and checked against `deop_lite.anchors`; heatmap-based pooling; DeOP assembled from frozen proposals, frozen CLIP with prompts and patch severance, CAL and learned text; the toy-world analogues of the paper's Tables 3 and 5 and of Fig. 5.
# - **You need:** notebooks 01–03 (proposals, prompts and severance; all shipped in `data/`).
# - **Runtime:** as the [README's notebook table](../README.md#notebooks) gives it, measured with the shipped checkpoints; CI mode (`DEOP_CI=1`) is shorter.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from deop_lite import anchors, clip as clip_lib, metrics, model as model_lib, proposals, runtime, severance, toyworld, transformer, viz

runtime.set_seed(0)
viz.setup_notebook()
print(runtime.describe())
viz.pipeline_figure("04", title="DeOP pipeline: this notebook builds the highlighted boxes")
plt.show()

# %% tags=["parameters"]
N_VAL = 200  # scenes behind every checked number (fixed, so CI checks the same numbers)
DEMO_STEPS = 5 if runtime.CI else 100  # a live DeOP training run in section 4 (the shipped models are loaded, not re-trained)

# %%
clip = clip_lib.load_clip("toy")
net, _ = proposals.load_proposals()
val = toyworld.segmentation_world("val", N_VAL)
names = toyworld.CLASS_NAMES
deop = model_lib.load_or_train_deop("deop", net, clip)
print(deop.config)

# %% [markdown]
# ## 1. Not every patch in a mask is a good witness
#
# Paper §3.3 names the baseline's second limitation: mask-based pooling averages *every* patch under the mask, although some patches say more about the segment's class than others. Patches on a segment's border see two classes at once. We can measure it with the training-free severed CLIP of notebook 03: label each patch on its own and compare patches deep inside a segment (all 8 neighbours share its class) with border patches.

# %%
# NBVAL_CHECK_OUTPUT
batch = torch.utils.data.default_collate([val[i] for i in range(50)])
with torch.no_grad():
    dense_feats = severance.severed_dense_features(clip.visual, clip.normalize(batch["image_raw"]), model_lib.GPS_TOY)  # (50, D, 16, 16)
    patch_class = torch.einsum("bdhw,cd->bchw", dense_feats, clip.text_embeddings(names)).argmax(1)  # (50, 16, 16)
truth = batch["label"][:, 4::8, 4::8]  # (50, 16, 16): the class at each patch centre
neighbours = F.unfold(truth[:, None].float(), 3, padding=1).view(50, 9, 16, 16)  # (50, 9, 16, 16), zero-padded
interior = (neighbours == truth[:, None]).all(1)  # (50, 16, 16), border of the image counts as border
correct = patch_class == truth
print(f"per-patch zero-shot accuracy, interior patches: {100 * correct[interior].float().mean():.1f} % "
      f"({interior.sum()} patches)")
print(f"per-patch zero-shot accuracy, border patches  : {100 * correct[~interior].float().mean():.1f} % "
      f"({(~interior).sum()} patches)")

# %% [markdown]
# Mask pooling gives border patches the same weight as interior ones. CAL lets the network learn the weights: a heatmap $H_n$ over the patch grid for each proposal $n$, used for the pooling instead of the mask.

# %% [markdown]
# ## 2. The query-based heatmap decoder (Eq. 3)
#
# N **anchor queries**, one per proposal (query $n$ belongs to proposal $n$), first attend to the dense CLIP features $F_V$ through K standard transformer decoder layers. Then the **heatmap output layer** replaces the last cross-attention: self-attention among the anchors, then
#
# $$H = \operatorname{softmax}\!\left(\frac{q \times F_V^\top}{\sqrt{d}}\right) * M \qquad (N, hw) \text{ per head}$$
#
# with learned projections of $q$ and $F_V$ (per head), the proposal mask multiplied *after* the softmax and nothing re-normalised (the official code's choices: [mask_former/modeling/transformer/transformer.py](https://github.com/CongHan0808/DeOP/blob/master/mask_former/modeling/transformer/transformer.py), `MultiHeadAttentionMy`). The pooling reads the raw CLIP features, with no value or output projection, so the segment embedding stays in CLIP's space, where the text embeddings live:
#
# $$F_I = H \odot F_V = \sum_{l} H(l)\, F_V(l) \qquad \text{then } L_2\text{-normalised}$$
#
# By hand, with the trained toy DeOP's decoder:

# %%
decoder = deop.learned.anchor_decoder
images = batch["image_raw"][:4]
with torch.no_grad():
    mask_probs = deop.proposal_mask_probs(images)  # (B, N, 128, 128), refined (TOY_REFINEMENT)
    dense_feats = deop.dense_features(images, mask_probs)  # F_V (B, D, 16, 16): prompts + GPS
    B, D, h, w = dense_feats.shape
    memory = dense_feats.flatten(2).transpose(1, 2)  # (B, hw, D)
    memory_pos = transformer.sine_position_encoding(h, w, D)[None]  # (1, hw, D)
    query_pos = decoder.query_pos.weight[None].expand(B, -1, -1)  # (B, N, D): one anchor per proposal
    q = torch.zeros_like(query_pos)
    for layer in decoder.layers:  # K standard decoder layers
        q = layer(q, query_pos, memory, memory_pos)
    q = decoder.out_norm(q + decoder.out_self_attn(q + query_pos, q + query_pos, q)[0])  # self-attention among anchors
    heads = decoder.heads
    split = lambda t: t.unflatten(-1, (heads, D // heads)).transpose(1, 2)  # (B, L, D) -> (B, heads, L, D/heads)
    Q, K = split(decoder.q_proj(q + query_pos)), split(decoder.k_proj(memory + memory_pos))
    M = F.interpolate(mask_probs, size=(h, w), mode="area").flatten(2)[:, None]  # (B, 1, N, hw)
    H = (Q @ K.transpose(-1, -2) / (D // heads) ** 0.5).softmax(-1) * M  # Eq. 3: (B, heads, N, hw)
    F_I = F.normalize((H @ split(memory)).transpose(1, 2).flatten(2), dim=-1)  # (B, N, D)

    package_F_I, package_H = decoder(dense_feats, mask_probs)
assert torch.allclose(F_I, package_F_I, atol=1e-5) and torch.allclose(H.mean(1).view(B, -1, h, w), package_H, atol=1e-6)
print("hand-built Eq. 3 = deop_lite.anchors.QueryHeatmapDecoder:", tuple(F_I.shape), tuple(package_H.shape))

# %% [markdown]
# Mask-based pooling is the special case $H_n = M_n / \sum M_n$: CAL can only re-weight the patches that the baseline already pools (up to the softmax), and it learns how.

# %%
uniform = M[:, 0] / M[:, 0].sum(-1, keepdim=True).clamp(min=1e-6)  # (B, N, hw): the mask as a heatmap
assert torch.allclose(F.normalize(uniform @ memory, dim=-1), model_lib.mask_pooling(dense_feats, mask_probs), atol=1e-5)
print("heatmap pooling with H = M / ΣM is exactly mask-based pooling")

# %% [markdown]
# ## 3. The conv-based heatmap decoder (Eq. 4)
#
# The simple counterpart the paper compares against: apply each mask to $F_V$, run K conv-BN-ReLU layers (3 × 3), map to one channel, softmax over positions:
#
# $$H = \sigma\big(\mathrm{conv}(\mathrm{CBR}_K(\cdots \mathrm{CBR}_1(F_V * M)))\big)$$
#
# The official source of this variant was never published (only compiled bytecode survives: DeOP's [`mask_former/__pycache__/zero_shot_clipfeat_upsample_vit16_query2D_maskvit_convdecoder.cpython-37.pyc`](https://github.com/CongHan0808/DeOP/blob/master/mask_former/__pycache__/zero_shot_clipfeat_upsample_vit16_query2D_maskvit_convdecoder.cpython-37.pyc)), so `deop_lite.anchors.ConvHeatmapDecoder` is built from the paper's text alone, with 64 channels instead of 512 for the toy CLIP. Each heatmap is a distribution over the patches:

# %%
conv_deop = model_lib.load_or_train_deop("deop_conv3", net, clip)
with torch.no_grad():
    conv_emb, conv_H = conv_deop.learned.anchor_decoder(conv_deop.dense_features(images, mask_probs), mask_probs)
assert torch.allclose(conv_H.flatten(2).sum(-1), torch.ones(conv_H.shape[:2]))
print("conv heatmaps", tuple(conv_H.shape), "each sums to 1 over the 16 x 16 patches")

# %% [markdown]
# ## 4. Training DeOP
#
# DeOP is trained exactly like *baseline+* (notebook 02): proposal network and CLIP frozen, DeOP's segmentation loss, unseen pixels left out. What trains: the text context (started from the offline initialisation), the added visual prompts, the void embedding and the CAL decoder. Patch severance has no parameters: GPS, α = 1 in the last 2 of the toy CLIP's 4 blocks (`model.GPS_TOY`; §6 shows why two, and notebook 03 §4 why not all four; the paper's last layer only is `model.GPS_PAPER`, and the official code's default "GPS with mask" is `DeOPConfig(severance_mode="gps_mask")`). The CAL decoder trains with the official code's dropout (0.1) and learning rate (2e-4, a tenth of the toy prompts' 2e-3: `model.CAL_LR`). Every variant trains for 500 steps, a length chosen on the seen classes (§6). Inference uses no ensemble with the proposal stream (paper §4). A short live run, in a temporary folder:

# %%
demo = model_lib.train_briefly("deop", DEMO_STEPS)  # train_deop with fewer steps, into a temporary folder

# %% [markdown]
# The shipped variants, 500 steps of 8 scenes each (`python -m deop_lite.model train --variant NAME`):

# %%
histories = {variant: model_lib.shipped_history(variant) for variant in ("baseline_plus", "ps", "cal", "deop")}
viz.plot_run_panels(histories, {"loss": "DeOP loss (training batches)", "hIoU": "hIoU on 48 validation scenes"})
plt.show()

# %% [markdown]
# ## 5. The toy-world Table 3: what each component adds
#
# Same frozen proposal network and CLIP, same 200 validation scenes, all 16 classes. The paper's baseline classifies with the offline-learned text prompt (notebook 02's "text, offline").

# %%
evaluated = {}  # variant -> its metrics: a variant in both tables below is evaluated once


def evaluate_rows(rows: dict) -> dict:
    for variant in rows.values():
        if variant not in evaluated:
            evaluated[variant] = model_lib.evaluate_deop(model_lib.load_or_train_deop(variant, net, clip), N_VAL,
                                                         progress=False, interval=True)
    results = {title: evaluated[variant] for title, variant in rows.items()}
    print(metrics.format_table(results))
    return results


# %%
# NBVAL_CHECK_OUTPUT
table3 = evaluate_rows({"baseline": "text_offline", "baseline+": "baseline_plus", "baseline+ w/ PS": "ps",
                        "baseline+ w/ CAL": "cal", "DeOP": "deop",
                        "baseline+ w/ PS, last layer only": "ps_last_layer"})

# %% [markdown]
# The paper's Table 3 for comparison:
#
# | | COCO pAcc | hIoU | Seen | Unseen | VOC pAcc | hIoU | Seen | Unseen |
# |---|---|---|---|---|---|---|---|---|
# | Baseline | 15.6 | 7.0 | 6.2 | 8.0 | 46.6 | 30.7 | 37.5 | 26.0 |
# | Baseline+ | 27.6 | 8.3 | 8.0 | 8.7 | 64.3 | 33.4 | 53.2 | 24.4 |
# | Baseline+ w/ PS | 53.9 | 25.8 | 25.9 | 25.4 | 72.7 | 47.6 | 64.0 | 37.9 |
# | Baseline+ w/ CAL | 54.2 | 23.2 | 28.8 | 21.0 | 88.1 | 70.5 | 83.3 | 61.2 |
# | DeOP | 62.2 | 38.2 | 38.0 | 38.4 | 92.5 | 80.8 | 88.2 | 74.6 |

# %%
batch5 = torch.utils.data.default_collate([val[i] for i in range(5)])
columns = {"ground truth": batch5["label"]}
for title, variant in (("baseline", "text_offline"), ("baseline+", "baseline_plus"), ("DeOP", "deop")):
    columns[title] = model_lib.load_deop(variant, proposals=net, clip=clip).predict(batch5["image_raw"], names)["label"]
viz.show_segmentations(batch5["image_raw"], columns)
plt.show()

# %% [markdown]
# ## 6. Why CAL: what it repairs, and when
#
# CAL learns where to pool because mask pooling averages patch tokens that have mixed with their neighbours in CLIP's unsevered blocks. So its worth should depend on how much mixing severance leaves. The sweep below trains *baseline+ w/ PS* and DeOP (PS + CAL) with GPS α = 1 in the last K of the toy CLIP's 4 blocks, for 500 and 1,000 steps (`python tools/severance_sweep.py`; each run's command is in `data/deop/severance_sweep.json`, its curve in the lab book). Read from the file, evaluated on the same 200 validation scenes as Table 3:

# %%
# NBVAL_CHECK_OUTPUT
sweep = model_lib.severance_sweep()
print(metrics.format_table({f"{'PS  ' if r['variant'] == 'ps' else 'DeOP'} K = {r['blocks']}, {r['steps']:4d} steps": r["final"]
                            for r in sorted(sweep, key=lambda r: (r["blocks"], r["steps"], r["variant"] != "ps"))},
                           columns=("pAcc", "seen", "unseen", "hIoU")))

# %%
viz.plot_severance_sweep(sweep)
plt.show()

# %% [markdown]
# What the sweep says (hIoU on the 200 validation scenes, the shipped toy CLIP unless named):
#
# - **CAL repairs mixing.** After 500 steps CAL adds 6.7 and 7.0 points of hIoU when the last 1 or 2 blocks are severed, and nothing once 3 or 4 are (71.4 → 71.1 and 73.6 → 72.8). The fewer blocks are severed, the more each patch token that mask pooling averages has drawn on other segments (the explorer of notebook 03 shows how much), and the more it pays to learn which tokens to pool. With every block severed, mask pooling of the toy CLIP's tokens is exactly the pooling it was pre-trained to classify (its image embedding is the mean of its patch tokens): there is nothing left to repair.
# - **Trained longer, CAL loses its gain.** After 1,000 steps DeOP trails PS at every K. Between the two lengths, with two blocks severed, DeOP's unseen mIoU falls from 58.7 to 53.5 while its seen mIoU barely moves (80.4, 79.3), and PS's unseen mIoU rises from 50.7 to 57.3. A decoder that learns where to look from 12 seen classes learns where to look *for them*; the paper's trains on 156. (The lab book swaps the longer-trained decoder for mask pooling: its prompts alone do better than either model.)
# - **Why 500 steps and two blocks.** The length was chosen on the seen classes only: DeOP's seen mIoU is higher after 500 steps than after 1,000. Two blocks is the regime, chosen knowing this table: it leaves mixing for CAL to repair, as the paper's ViT-B/16 keeps eleven blocks of mixing when it severs the last, and it is where Table 3 holds. Given its own better length by seen mIoU, PS (1,000 steps) reaches 66.8, inside Table 3's 95 % interval of DeOP: what CAL reliably buys in the toy world is the same result in half the training.

# %% [markdown]
# ## 7. The toy-world Table 5: which heatmap decoder
#
# All rows are DeOP with patch severance (the last 2 blocks); only the pooling differs.

# %%
# NBVAL_CHECK_OUTPUT
table5 = evaluate_rows({"w/o CAL (mask pooling)": "ps", "conv-based, K=3": "deop_conv3", "query-based, K=1": "deop",
                        "query-based, K=3": "deop_query3", "query-based, K=5": "deop_query5"})


# %% [markdown]
# The paper's Table 5 (COCO-Stuff, ViT-B/16):
#
# | Type | K | pAcc | hIoU | Seen | Unseen |
# |---|---|---|---|---|---|
# | DeOP w/o CAL | 0 | 53.9 | 25.7 | 25.9 | 25.4 |
# | Conv-based | 3 | 58.8 | 31.4 | 31.4 | 31.4 |
# | Query-based | 1 | 62.2 | 38.2 | 38.0 | 38.4 |
# | Query-based | 3 | 62.2 | 37.7 | 37.9 | 37.6 |
# | Query-based | 5 | 62.2 | 38.0 | 38.0 | 38.0 |
#
# Where the toy differs: its conv-based decoder is *below* mask pooling (53.4 against 60.8; the paper's is above it). As in the paper, the query-based decoders are ahead of mask pooling (67.7 to 68.6 against 60.8; the paper: 37.7 to 38.2 against 25.7), and their depth K hardly matters.

# %% [markdown]
# ## 8. What the anchors look at (Fig. 5)
#
# For one seen and one unseen segment: the image with a patch $i$ inside the segment, the last-layer attention of patch $i$ and of a patch $j$ elsewhere in the *stock* CLIP, the proposal that covers patch $i$, and DeOP's learned anchor heatmap for that proposal.

# %%
def figure5(class_name: str):
    class_id = names.index(class_name)
    index = next(i for i in range(len(val)) if (val[i]["label"] == class_id).sum() > 300)
    item = val[index]
    segment = item["label"] == class_id  # (128, 128)
    rows, cols = segment.nonzero().float().mean(0).long().tolist()
    patch_i, patch_j = (rows // 8, cols // 8), ((rows // 8 + 8) % 16, (cols // 8 + 8) % 16)
    out = deop.predict(item["image_raw"][None], names)
    ious = (out["mask_probs"][0] > 0.5).flatten(1).float() @ segment.flatten().float()  # (N,) intersections
    ious = ious / ((out["mask_probs"][0] > 0.5).flatten(1).sum(1) + segment.sum() - ious).clamp(min=1)
    owner = int(ious.argmax())
    attention = severance.patch_attention(clip.visual, clip.normalize(item["image_raw"][None]), layers={})[0]  # (16,16,16,16)
    viz.show_attention(item["image_raw"], {"attention, patch i": attention}, patch_i,
                       maps={"attention, patch j": attention[patch_j], f"proposal (IoU {ious[owner]:.2f})": out["mask_probs"][0, owner],
                             "anchor heatmap": out["heatmaps"][0, owner]})
    plt.suptitle(f"{class_name} ({'unseen' if class_name in toyworld.UNSEEN_CLASSES else 'seen'}); predicted: "
                 f"{names[int(out['class_probs'][0, owner].argmax())]}", y=1.02)
    plt.show()


figure5("ladybird")
figure5("fish")

# %% [markdown]
# ## 9. Where DeOP's unseen errors come from
#
# Two suspects: the proposals (notebook 01: unseen Recall@50 0.68 refined, 0.61 for the network's own masks) and a bias towards the seen classes that every ZS3 model trained on seen labels risks. First, give DeOP's classification stream perfect masks (one per ground-truth class, as in notebook 01), and its own unrefined proposals; then look at where the unseen pixels go.

# %%
# NBVAL_CHECK_OUTPUT
training_free = model_lib.OnePassBaseline(net, clip, severance=model_lib.GPS_TOY)
print(metrics.format_table({
    "DeOP, refined proposals (TOY_REFINEMENT)": evaluated["deop"],
    "DeOP, the network's own masks": model_lib.evaluate_deop(deop, N_VAL, progress=False, refinement=None),
    "DeOP, ground-truth masks": model_lib.evaluate_deop(deop, N_VAL, progress=False, masks="ground_truth"),
    "training-free GPS, ground-truth masks": model_lib.evaluate_deop(training_free, N_VAL, progress=False,
                                                                     masks="ground_truth")}))

# %%
import time

images32 = torch.stack([val[i]["image_raw"] for i in range(32)])  # (32, 3, 128, 128)
proposals.PROPOSAL_CACHE.clear()  # time the refinement itself, not a cache hit
for name, refinement in (("the network's own masks", None), ("refined along colour edges", proposals.TOY_REFINEMENT)):
    start = time.perf_counter()
    proposals.proposal_masks(net, images32, refinement=refinement)  # (32, N, 128, 128)
    print(f"{name:27s} {1000 * (time.perf_counter() - start) / 32:5.1f} ms per scene on this machine")

# %% [markdown]
# Which component decides the unseen classes? Take the trained DeOP and swap its CAL decoder for plain mask pooling, keeping everything it learned besides:

# %%
# NBVAL_CHECK_OUTPUT
deop_mask_pooling = model_lib.load_deop("deop", proposals=net, clip=clip)
deop_mask_pooling.learned.anchor_decoder = None  # DeOP's prompts and void embedding, mask pooling instead of CAL
print(metrics.format_table({"DeOP": evaluated["deop"],
                            "DeOP's prompts, mask pooling": model_lib.evaluate_deop(deop_mask_pooling, N_VAL, progress=False),
                            "baseline+ w/ PS": evaluated["ps"]}))

# %%
# NBVAL_CHECK_OUTPUT
deop_meter = metrics.SegmentationMeter(names)
for start in range(0, N_VAL, 25):
    b = torch.utils.data.default_collate([val[i] for i in range(start, start + 25)])
    deop_meter.update(deop.predict(b["image_raw"], names)["label"], b["label"])
conf = deop_meter.confusion.double()  # (C, C) rows: truth
seen_ids = [names.index(c) for c in toyworld.SEEN_CLASSES]
iou = deop_meter.per_class_iou()
for c in toyworld.UNSEEN_CLASSES:
    row = conf[names.index(c)] / conf[names.index(c)].sum()
    worst = row.clone(); worst[names.index(c)] = 0
    print(f"{c:6s}: IoU {iou[names.index(c)]:4.1f} | {100 * row[names.index(c)]:4.1f} % of its pixels right, "
          f"{100 * row[seen_ids].sum():4.1f} % called a seen class (most often {names[int(worst.argmax())]}, {100 * worst.max():.1f} %)")

# %%
viz.plot_confusion(deop_meter.confusion, title="toy DeOP on 200 validation scenes")
plt.show()

# %% [markdown]
# What the numbers say (200 validation scenes; the proposals refined along colour edges at inference, notebook 01 §4, while every variant was trained on the network's own masks):
#
# - **Table 3 holds in the toy world.** Prompts lift the baseline (17.7 → 34.2 hIoU with *baseline+*), PS lifts *baseline+* to 60.8, CAL alone to 44.5, and DeOP, with both, is the best row: 67.8 (95 % interval [64.0, 71.3], against PS's [57.2, 64.0]). The paper's last layer alone gives 50.1.
#
# > Both PS and CAL bring improvements in all metrics. — DeOP §5.3
#
# - **DeOP recognises the unseen classes, things included.** Unseen mIoU 58.7; grass 74.1, road 76.0, car 46.7 and fish 37.9, the hardest: 46.2 % of the fish's pixels go to a seen class (flower most often), 36.7 % of the car's.
# - **Given the right masks, classification is far from the limit.** With ground-truth masks DeOP reaches hIoU 91.6, the training-free pass with the same two severed blocks 64.3: what separates 67.8 from 91.6 is the proposals (notebook 01: unseen Recall@50 0.68). Refining them along colour edges lifts hIoU from 64.6 to 67.8, at 52.2 against 3.8 ms per scene (the timing cell above).
# - **At inference, the trained decoder and mask pooling are level.** DeOP's own prompts with mask pooling in place of its decoder score 67.4 against DeOP's 67.8, while PS scores 60.8. So the gain of Table 3's last row over PS comes mostly from what CAL does *during training*: the prompts trained beside it are better prompts. §6 shows the other side: trained for longer, the decoder itself costs the unseen classes.
# - **Query-based beats conv-based CAL, and the depth K hardly matters** (Table 5): 67.8 / 68.6 / 67.7 for K = 1, 3, 5 against 53.4 for the conv decoder, which is below mask pooling here.
# - **Border patches are weaker witnesses:** with the toy DeOP's two blocks severed, they are classified right less often than interior ones (70.4 % against 74.9 %, section 1).

# %% [markdown]
# ## Summary
# - Mask pooling weighs every patch of a mask alike, although border patches are right less often (70.4 % against 74.9 % on their own). CAL learns a heatmap per proposal: Eq. 3's query decoder (mask after the softmax, raw CLIP features pooled head by head) or Eq. 4's conv decoder; both match `deop_lite.anchors`, and mask pooling is the special case H = M / ΣM.
# - DeOP = frozen proposals + frozen CLIP with prompts and GPS in the last 2 of its 4 blocks + CAL + learned text, trained for 500 steps with DeOP's loss on seen classes: pAcc 88.9, hIoU 67.8 (seen 80.4, unseen 58.7) on 200 validation scenes, the best row of Table 3. With ground-truth masks it reaches 91.6: the proposals are the limit.
# - CAL's gain depends on the mixing that severance leaves: 6.7 and 7.0 hIoU with the last 1 or 2 blocks severed, none with 3 or 4, and none at any K after 1,000 steps, when the decoder has fitted the 12 seen classes.
#
# ## Exercises
# 1. Multiply the mask *before* the softmax in Eq. 3 (so each heatmap is a distribution inside its mask), with the query projection started at zero so that training starts from mask pooling. Does CAL still drift away from it? (The lab book has our run.)
# 2. Train DeOP with the official code's severance ("GPS with mask", `severance_mode="gps_mask"`) or with the official loss (`ignore_as_void=True`). Which of the code's choices help in the toy world?
# 3. Give the query decoder the masks in its K standard layers too (masked cross-attention, as Mask2Former does). Does CAL still need them at the output?
# 4. Plot, per class, how far the anchor heatmap's peak lies from the mask's centre. Which classes are classified from their border?
#
# **Next:** [05_one_pass_vs_multi_pass.ipynb](05_one_pass_vs_multi_pass.ipynb): why multi-pass methods are slow, and how much faster one pass is.
