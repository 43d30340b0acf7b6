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
# # 03 · Patch severance
# *Cut the links between CLIP's patch tokens, and watch zero-shot segmentation improve with no training at all.*
#
# - **You will build:** a measurement of how poorly CLIP's last-layer patch tokens are localised, generalized patch severance (GPS) and mask-guided patch severance (MPS) derived and checked against `deop_lite.severance`, the toy-world analogue of the paper's Table 4 (severing the last block, the last 2, every block), an α sweep, why a CLIP pre-trained like ViT-B/16 cannot be severed everywhere, and an interactive α explorer. The training-free methods that came after DeOP (MaskCLIP to CorrCLIP) have a notebook of their own, 06.
# - **You need:** notebooks 00 and 01 (the toy CLIP and the proposal network, both shipped in `data/`).
# - **Runtime:** as the [README's notebook table](../README.md#notebooks) gives it, measured with the shipped checkpoints; CI mode (`DEOP_CI=1`) is shorter.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from deop_lite import clip as clip_lib, metrics, model as model_lib, proposals, runtime, severance, stages, toyclip, toyworld, viz
from deop_lite.severance import Severance
from deop_lite.clip import embed_image

runtime.set_seed(0)
viz.setup_notebook()
print(runtime.describe())
viz.pipeline_figure("03", title="DeOP pipeline: this notebook builds the highlighted box")
plt.show()

# %% tags=["parameters"]
N_VAL = 200  # validation scenes behind Table 4 (the same in CI mode, so are its numbers)
N_SWEEP = 30 if runtime.CI else 100  # validation scenes per point of the α sweep (fewer in CI mode: the curves' shape)
N_GT = 100  # validation scenes of the two CLIPs' ground-truth comparison

# %%
clip = clip_lib.load_clip("toy")
net, _ = stages.load_proposals()
val = toyworld.segmentation_world("val", N_VAL)
split = (toyworld.CLASS_NAMES, toyworld.SEEN_CLASSES, toyworld.UNSEEN_CLASSES)
print(f"toy CLIP: {len(clip.visual.transformer.resblocks)} blocks, {clip.patch_size}x{clip.patch_size} patches; "
      f"{len(val)} validation scenes of {val.config.image_size}x{val.config.image_size}")

# %% [markdown]
# ## 1. Where does a patch look in CLIP's last layer?
#
# Notebook 01 ended with a puzzle: pooling CLIP's patch features inside *perfect* masks classified segments no better than labelling patches one by one. The paper's explanation:
#
# > The patch embeddings that belong to different segments interact too much with each other in the original CLIP visual backbone. — DeOP §1
#
# We can measure it. For every patch, take its attention in the last layer (averaged over heads) and ask what share of it lands on patches of its **own** ground-truth segment. Uniform attention would give the segment's share of the image.

# %%
# NBVAL_CHECK_OUTPUT
batch = torch.utils.data.default_collate([val[i] for i in range(50)])
image = clip.normalize(batch["image_raw"])  # (50, 3, 128, 128)
segments = batch["label"][:, clip.patch_size // 2::clip.patch_size, clip.patch_size // 2::clip.patch_size]  # (50, 16, 16)
same = segments.flatten(1)[:, :, None] == segments.flatten(1)[:, None, :]  # (50, 256, 256)
print(f"share of a patch's attention inside its own segment, {len(image)} validation scenes:")
print(f"uniform attention                : {100 * same.float().mean():.1f} %")
attention = severance.patch_attention(clip.visual, image)  # (50, 16, 16, 16, 16), unmodified CLIP
print(f"stock CLIP, last layer           : {100 * severance.attention_in_segment(attention, segments).mean():.1f} %")

# %% [markdown]
# Less than uniform: in its last layer the toy CLIP's patches look *away* from their own segment, gathering context from the whole image, as a CLIP trained for image-level recognition does. Here is one patch, boxed in every panel; each map has its own colour scale:

# %%
index, patch = 1, (12, 5)
mask_probs = proposals.proposal_masks(net, batch["image_raw"][index:index + 1], refinement=toyworld.REFINEMENT).sigmoid()  # (1, N, 128, 128)
owner = mask_probs[0, :, patch[0] * 8 + 4, patch[1] * 8 + 4].argmax()  # the proposal that covers the patch
one = image[index:index + 1]
fig = viz.show_attention(batch["image_raw"][index],
                         {"stock CLIP": severance.patch_attention(clip.visual, one)[0],
                          "GPS α=0.5": severance.patch_attention(clip.visual, one, severance=Severance("gps", {-1: 0.5}))[0]},
                         patch, maps={"its proposal mask": mask_probs[0, owner]})
p = clip.patch_size
for ax, label in zip(fig.axes[1:], ["attention", "attention", "probability σ(M)"]):  # each map: its scale, the patch boxed
    ax.add_patch(plt.Rectangle((patch[1] * p, patch[0] * p), p, p, fill=False, ec="cyan", lw=1.5))
    fig.colorbar(ax.images[-1], ax=ax, fraction=0.046, pad=0.02).set_label(label, fontsize=8)
fig.suptitle(f"where patch {patch} (boxed) looks in the last layer", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Generalized patch severance (GPS)
#
# > GPS replaces the query-key multiplication in the self-attention with a weighted combination of the query-key multiplication and an identity matrix. — DeOP §4.1
#
# $$F_{out} = (\alpha E + (1-\alpha)\,Attn)\,F_{in}$$
#
# Everything else in the block stays: CLIP's own value and output projections, the residual, the MLP. α = 0 is CLIP; α = 1 cuts every link (MaskCLIP's trick). By hand, for the last block:

# %%
alpha = 0.5
visual = clip.visual
with torch.no_grad():
    x, grid = embed_image(visual, one)  # (1, 257, W)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    last = visual.transformer.resblocks[-1]
    q, k, v = severance.qkv(last, x)  # (1, heads, 257, d) each
    attn = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)  # (1, heads, 257, 257)
    eye = torch.eye(attn.shape[-1])
    f_in = v
    f_out = (alpha * eye + (1 - alpha) * attn) @ f_in  # Eq. 2, (1, heads, 257, d)
    x = severance.finish_block(last, x, f_out)  # output projection, residual, MLP
    ours = F.normalize(visual.ln_post(x[:, 1:]) @ visual.proj, dim=-1).transpose(1, 2).reshape(1, -1, *grid)
    assert torch.allclose(ours, severance.severed_dense_features(visual, one, Severance("gps", {-1: alpha})), atol=1e-5)
print(tuple(ours.shape))

# %% [markdown]
# ## 3. Mask-guided patch severance (MPS)
#
# MPS replaces the attention by one computed from the proposal masks. Let $M_{j,i}$ be the value of proposal mask $M_j$ at token $i$. Query token $i$ attends to key token $k$ as much as they share proposals:
#
# $$A[i, k] = \sum_{j=1}^N M_{j,i}\, M_{j,k}, \qquad \text{so row } i \text{ of } A \text{ is Eq. 1: } M_i = \sum_{j=1}^N M_{j,i}\, M_j$$
#
# Eq. 1 is not normalised; we divide each row by its sum (the official code takes a softmax instead, `mps_norm="softmax"`). CLS belongs to every mask, as in the official code.

# %%
m = F.interpolate(mask_probs, size=grid, mode="area").flatten(2).transpose(1, 2)  # (1, h*w, N): M_{j,i}
m = torch.cat([torch.ones_like(m[:, :1]), m], dim=1)  # (1, 257, N), CLS row all ones
mask_attention = m @ m.transpose(1, 2)  # (1, 257, 257): Eq. 1 for every i at once
mask_attention = mask_attention / mask_attention.sum(-1, keepdim=True)
pkg = severance.mps_attention(severance.token_memberships(mask_probs, grid))
assert torch.allclose(mask_attention, pkg, atol=1e-6)
print(tuple(mask_attention.shape))

# %% [markdown]
# The official code's default is a third kernel, "GPS with mask" ([third_party/CLIP/clip/model.py](https://github.com/CongHan0808/DeOP/blob/master/third_party/CLIP/clip/model.py)): identity attention whose output is scaled per token by $\sum_n \sigma(M_n)$; it is `Severance("gps_mask", ...)`.
#
# ## 4. Table 4 in the toy world
#
# The one-pass baseline of notebook 01 (frozen proposals, frozen CLIP, "a photo of a {}."), with severance in the last layer ($\alpha_{-1}$), the last two ($\alpha_{-2}, \alpha_{-1}$), or more blocks. No training anywhere. Our baseline row uses this fixed template, while the paper's Table 4 baseline uses the text prompt learned offline (paper §3.1; notebook 02 §3 builds it). The paper's Table 4 (COCO-Stuff, ViT-B/16, the baseline without prompt learning):
#
# | Type | α₋₂ | α₋₁ | hIoU | Seen | Unseen |
# |---|---|---|---|---|---|
# | Baseline | 0 | 0 | 7.0 | 6.2 | 8.0 |
# | MPS | – | – | 12.5 | 11.0 | 14.4 |
# | GPS | 0 | 0.5 | 20.0 | 17.1 | 24.0 |
# | GPS | 0 | 1.0 | 23.8 | 21.5 | 26.6 |
# | GPS | 0.5 | 1.0 | 16.2 | 15.2 | 17.4 |
# | GPS | 0.5 | 0.5 | 13.3 | 12.1 | 14.8 |
#
# > Interestingly, the best combination is that the last layer has a complete patch severance. — DeOP §5, "Analysis on PS"

# %%
# NBVAL_CHECK_OUTPUT
rows = {"baseline (no severance)": severance.NONE, "MPS, last layer": Severance("mps", {-1: 1.0}),
        "GPS with mask (official)": Severance("gps_mask", {-1: 1.0}),
        "GPS α₋₁ = 0.5": Severance("gps", {-1: 0.5}), "GPS α₋₁ = 1 (the paper)": severance.GPS_LAST,
        "GPS α₋₂ = 0.5, α₋₁ = 1": Severance("gps", {-2: 0.5, -1: 1.0}),
        "GPS α = 1, last 2 blocks (toy DeOP)": stages.GPS_TOY,
        "GPS α = 1, last 3 blocks": severance.last_blocks_severed(3, 4),
        "GPS α = 1, every block": severance.last_blocks_severed(4, 4)}
baseline = lambda setting: model_lib.DeOP(net, model_lib.one_pass_baseline(clip, setting))  # frozen proposals + CLIP
table = {name: stages.evaluate_deop(baseline(setting), N_VAL, progress=False, interval=True)
         for name, setting in rows.items()}
print(metrics.format_table(table, ("seen", "unseen", "hIoU", "things")))

# %%
sweep = {"the last block": lambda a: Severance("gps", {-1: a}),
         "the last 2 blocks (toy DeOP)": lambda a: Severance("gps", {k: a for k in stages.GPS_TOY.alphas}),
         "every block": lambda a: Severance("gps", {k: a for k in range(4)})}
alphas = [i / 10 for i in range(11)]
curves = {(where, key): [] for where in sweep for key in ("hIoU", "things")}
for where, layers in sweep.items():
    for a in alphas:
        r = stages.evaluate_deop(baseline(layers(a)), N_SWEEP, progress=False)
        for key in ("hIoU", "things"):
            curves[where, key].append(r[key])
fig, ax = plt.subplots(figsize=(6, 3.2))
for (where, key), values in curves.items():
    colour = f"C{list(sweep).index(where)}"
    ax.plot(alphas, values, marker="o", ms=3, color=colour, ls="-" if key == "hIoU" else "--", label=f"{key}, α in {where}")
ax.set_xlabel(r"$\alpha$ (weight on the identity)"); ax.set_ylabel("hIoU / things' mIoU (%)")
ax.set_title(f"GPS, training-free, {N_SWEEP} validation scenes"); ax.legend(frameon=False, fontsize=8); ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# What holds and what does not (no training anywhere; proposals refined, notebook 01 §4; 200 validation scenes, each number with its 95 % interval over them):
#
# - **Severing the last layer helps, less than in the paper.** Fully severing it lifts hIoU from 19.0 to 24.0 (things 11.1 → 16.0), and the sweep rises slowly with $\alpha_{-1}$ up to 1 (it runs on the first 100 of the 200 scenes, so its points differ a little from the table's); the two rows' intervals just touch, so this gain is at the edge of what 200 scenes can tell, and the paper's Table 4 gains far more. MPS (22.0), α₋₁ = 0.5 (21.7), α₋₁ = 1 and the official code's "GPS with mask" (25.0) have overlapping intervals: 200 scenes do not rank them, so the toy world neither confirms nor contradicts the paper's GPS ahead of MPS.
# - **Severing earlier blocks too helps the shipped toy CLIP.** Half-severing the second-to-last block takes hIoU to 33.9, its interval clear of the last layer's. The last 2 blocks fully severed give 41.1 (the toy DeOP's setting, `model.GPS_TOY`), the last 3 give 64.4, and every block 74.4 (things 67.5), each step's interval clear of the previous one's.
# - **The paper's Table 4 drops there.** Half-severing its second-to-last block under a fully severed last one costs it hIoU. The toy row with that setting (proposals, α₋₂ = 0.5) rises instead: the toy world does not reproduce the drop. The next cells use another setting (ground-truth masks, α = 1). They show where severing stops helping a CLIP pre-trained like ViT-B/16: at the first block, as the paper says of shallow layers.
# - **What the toy DeOP uses:** the last 2 blocks. Two blocks of mixing are left, as ViT-B/16's first eleven are when the paper severs its last, so the trained components have something to repair (notebook 04 §6).

# %% [markdown]
# ### Why the toy CLIP can be severed everywhere, and ViT-B/16 cannot
#
# > Notably, we also attempt to apply PS to more transformer layers in ViT. However, we find that PS may break the embedding space if it is applied in shallower layers (*i.e.* the first layer) and results in poor performance. — DeOP §5, "Analysis on PS"
#
# The shipped toy CLIP departs from ViT-B/16 in three ways that decide this (notebook 00 §3): its image embedding is the mean of its patch tokens, its pre-training replaced each block's attention by the identity at random, and two 3×3 convolutions in its stem let each patch token see its neighbours before any attention. A second toy CLIP undoes all three (`ToyClipConfig.like_vit_b16()`: CLS pooling, never severed in pre-training, no stem context; shipped as `data/toy_clip_like_vit_b16.safetensors`). Give both the ground-truth masks, so that proposals play no part, and sever their last K blocks, training-free. Where does severing stop helping each of them?

# %%
# NBVAL_CHECK_OUTPUT
like_vit = clip_lib.load_clip("toy", pretrained=clip_lib.TOY_CLIP_LIKE_VIT_B16)
settings = {f"last {k}": severance.last_blocks_severed(k, 4) for k in range(5)}  # K = 0 ... 4 severed blocks
# each classifier is given one ground-truth mask per class, so that proposals play no part
severable = {name: toyclip.ground_truth_gate(c, N_GT, settings, progress=False, interval=True)
             for name, c in (("shipped toy CLIP", clip), ("toy CLIP like ViT-B/16", like_vit))}
print(f"hIoU on the ground-truth masks of {N_GT} validation scenes, GPS α = 1 in the last K of 4 blocks "
      f"[95 % interval over the {N_GT} scenes]:")
print(f"{'':24s}" + "".join(f"{name:>26s}" for name in severable))
for row in [f"one pass, {s}" for s in settings] + ["multi-pass crops"]:
    cells = [(r["hIoU"], *r["interval"]["hIoU"]) for r in (severable[name][row] for name in severable)]
    print(f"{row.replace('last', 'K =').replace('one pass, K = 0', 'one pass, stock'):24s}"
          + "".join(f"{f'{v:.1f} [{low:.1f}, {high:.1f}]':>26s}" for v, low, high in cells))

# %%
fig, ax = plt.subplots(figsize=(5.5, 3))
for i, (name, rows) in enumerate(severable.items()):
    ax.plot(range(5), [rows[f"one pass, {s}"]["hIoU"] for s in settings], marker="o", color=f"C{i}", label=f"{name}, one pass")
    # dashed: the table's "multi-pass crops" row (one CLIP pass per crop)
    ax.axhline(rows["multi-pass crops"]["hIoU"], color=f"C{i}", ls="--", lw=1, label=f"{name}, one pass per crop")
ax.set_xticks(range(5)); ax.set_xlabel("K, severed blocks (of 4), α = 1"); ax.set_ylabel("hIoU (%)")
ax.set_title(f"ground-truth masks, training-free, {N_GT} scenes"); ax.legend(frameon=False, fontsize=7); ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# The claim holds for the CLIP it was made about. Pre-trained like ViT-B/16, the toy CLIP also gains from severing its second- and third-to-last blocks (44.6, then 63.3, each interval clear of the previous one's). It reads ground-truth masks best with its last 3 blocks severed (63.3), and drops to 51.7 when the first block is severed too, the two intervals clear of each other: severing a shallow block breaks what the blocks after it expect. Its best one pass stays far below multi-pass crops (one CLIP pass per crop: 96.6). The shipped toy CLIP, pre-trained with blocks severed at random, gains at every step, each interval clear of the previous one's, up to 95.8 with every block severed, within the interval of its multi-pass crops (one CLIP pass per crop: 96.5): it was taught to read its own patch, so it can be severed everywhere. That is a property of its pre-training, not of DeOP, and it is why the toy DeOP severs only two blocks.

# %% [markdown]
# ## 5. Explore
#
# Switch between no severance, GPS, MPS and the training-free methods that came after DeOP (SCLIP, ClearCLIP, NACLIP, ResCLIP; MaskCLIP is GPS at α = 1; notebook 06 derives them); turn the **severed blocks** dial to choose how many of the toy CLIP's last blocks the mode replaces (1 is the paper's setting, 2 the toy DeOP's), move α (GPS only; disabled otherwise), pick an image, and click a patch in any panel. The middle panel is the training-free one-pass segmentation, with a legend of its colours (unseen classes starred). The right panel is where the chosen patch's output comes from, over all four blocks: the attention rollout of [Abnar and Zuidema](https://aclanthology.org/2020.acl-main.385), $R = \prod_l \tfrac12(I + A_l)$, the half for the residual. As the dial turns, the mixing that severance leaves shrinks until, with every block severed at α = 1, the patch sees only itself.
#
# `%matplotlib widget` turns the figure into a live canvas (ipympl, JupyterLab's interactive matplotlib backend) so that a click chooses the patch; where that backend is not available, the patch sliders do the same.

# %%
# %matplotlib widget
explore_images = torch.stack([val[i]["image_raw"] for i in range(6)])  # (6, 3, 128, 128)
explore_masks = proposals.proposal_masks(net, explore_images, refinement=toyworld.REFINEMENT).sigmoid()  # (6, N, 128, 128), computed once
explorer = viz.AlphaExplorer(clip, explore_images, toyworld.CLASS_NAMES, explore_masks)
explorer.widget()

# %% [markdown]
# A page that shows this notebook without running it (GitHub's, for one) leaves the live widget above blank. Here is its first state as a picture:

# %%
import io

from IPython.display import Image

picture = io.BytesIO()
explorer.fig.savefig(picture, format="png", dpi=80)  # the explorer's figure as the widget first drew it
Image(picture.getvalue())

# %% [markdown]
# ## Summary
# - In the toy CLIP's last layer a patch keeps only 15.9 % of its attention inside its own segment, less than uniform attention would (35.7 %): patch tokens are poorly localised.
# - GPS, $(\alpha E + (1-\alpha)Attn)F_{in}$, and MPS, $M_i = \sum_j M_{j,i} M_j$, each take a few lines and match `deop_lite.severance`.
# - Without any training, severing the last layer lifts the one-pass baseline from hIoU 19.0 to 24.0 (GPS α = 1), a gain at the edge of what 200 scenes can tell; MPS (22.0) and the official GPS with mask (25.0) have intervals that overlap GPS α = 1's, so the three are not ranked. The last 2 blocks, the toy DeOP's setting, give 41.1, and every block 74.4.
# - The shipped toy CLIP can be severed everywhere because its pre-training severed blocks at random; a toy CLIP pre-trained like ViT-B/16 cannot (on ground-truth masks: 63.3 with the last 3 blocks severed, 51.7 with all 4), as the paper found for ViT-B/16.
#
# ## Exercises
# 1. **Where is localisation lost?** *(seconds)* Measure §1's share of attention inside the own segment in every layer, not only the last. *Hint:* `severance.patch_attention(clip.visual, image, layer=l)` for `l` in `range(4)`, then `severance.attention_in_segment(..., segments)` as in §1. *Expect:* every layer stays below uniform attention, and the first layers look away from their own segment even more than the last.
# 2. **Eq. 1 normalised, or the official softmax?** *(seconds)* Measure the same share under MPS in the last layer with `mps_norm="sum"` and with `mps_norm="softmax"`. *Hint:* `severance.patch_attention(clip.visual, image, severance=Severance("mps", {-1: 1.0}, mps_norm=...), mask_probs=masks)`, with `masks = proposals.proposal_masks(net, batch["image_raw"], refinement=toyworld.REFINEMENT).sigmoid()`. *Expect:* both keep far more of each patch's attention inside its segment than the stock CLIP does, the softmax less than the sum: it gives every token some weight, whichever masks they share.
# 3. **ClearCLIP's ablation in every block.** *(seconds)* Sever every block the way ClearCLIP's ablation of MaskCLIP does, without the residual and the FFN, and label each patch. *Hint:* `features = severance.severed_dense_features(clip.visual, clip.normalize(images), Severance("gps", {k: 1.0 for k in range(4)}, residual=False, ffn=False))`, then `clip_lib.patch_scores(features, clip.text_embeddings(toyworld.CLASS_NAMES), images.shape[-2:]).argmax(1)` as the `predict` of `world.evaluate(predict, toyworld.ToyWorld(), 100, interval=True)` (`predict` takes a batch: `images = batch["image_raw"]`; `from deop_lite import world`); compare with the same call keeping both. *Expect:* dropping them costs far more hIoU than the 95 % interval spans: severed in every block and without either, each block is one linear map of its token, and nothing of CLIP's per-token processing (the FFN) is left.
# 4. **The official code's residual.** *(minutes: a few lines of your own)* The official ViT block scales the shortcut in the last layer of ViT-B/16: `x = alphaShortcut * x + self.attention(self.ln_1(x))` with `alphaShortcut = 0.2` (`ResidualAttentionBlockVit` in [third_party/CLIP/clip/model.py](https://github.com/CongHan0808/DeOP/blob/master/third_party/CLIP/clip/model.py)). Do the same in the toy CLIP's last block with GPS α = 1, and label each patch. *Hint:* in §2's cell set `alpha = 1` and replace `severance.finish_block(last, x, f_out)` by the attention branch alone, `severance.finish_block(last, x, f_out, residual=False, ffn=False)`, plus `0.2 * x`, then the MLP with its own residual, `x + last.mlp(last.ln_2(x))`; with the scale set back to 1 it must give back `severance.severed_dense_features`. To score the same scenes as exercise 3, wrap it in a `predict` as in exercise 3. *Expect:* per patch, hIoU moves by a couple of points, inside the 95 % interval over those scenes: the toy world does not tell whether the down-weighting helps.
#
# **Next:** [04_classification_anchors.ipynb](04_classification_anchors.ipynb): learn where to pool (CAL), and assemble DeOP.
