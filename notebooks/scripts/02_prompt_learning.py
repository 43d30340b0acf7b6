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
# # 02 · Prompt learning
# *Adapt a frozen CLIP to segmentation through a handful of learned vectors, and measure what each kind of prompt buys.*
#
# - **You will build:** CoOp-style learned text context and visual prompts (added and prepended), most derived in a few lines and checked against `deop_lite.prompts` (prepended prompts shown by their shapes); the offline initialisation on seen-class crops; end-to-end training with DeOP's segmentation loss; the toy-world analogue of the paper's supplementary Table 7 and of Table 3's *baseline+* row.
# - **You need:** notebooks 00 and 01 (the toy CLIP and the proposal network, both shipped in `data/`).
# - **Runtime:** as the [README's notebook table](../README.md#notebooks) gives it, measured with the shipped checkpoints; CI mode (`DEOP_CI=1`) is shorter.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from deop_lite import clip as clip_lib, losses, metrics, model as model_lib, prompts, runtime, stages, toyworld, viz
from deop_lite.severance import severed_dense_features

runtime.set_seed(0)
viz.setup_notebook()
print(runtime.describe())
viz.pipeline_figure("02", title="DeOP pipeline: this notebook builds the highlighted boxes")
plt.show()

# %% tags=["parameters"]
N_VAL = 200  # validation scenes behind every table (the quick mode keeps them, so its tables read the same)
DEMO_STEPS = 5 if runtime.CI else 100  # steps of the live end-to-end run in section 5 (the shipped prompts are loaded, not re-trained)
DEMO_SCENES = 16  # validation scenes that score the live run

# %%
clip = clip_lib.load_clip("toy")
net, _ = stages.load_proposals()
val = toyworld.segmentation_world("val", N_VAL)
seen, unseen = list(toyworld.SEEN_CLASSES), list(toyworld.UNSEEN_CLASSES)
print(f"{len(val)} validation scenes; training sees {len(seen)} seen classes, never {unseen}")

# %% [markdown]
# ## 1. The constraint: CLIP stays frozen
#
# Notebook 01's baseline keeps CLIP frozen so that it keeps recognising classes it was never *segmentation*-trained on. Fine-tuning CLIP on the 12 seen classes would pull its embedding space towards them and away from the unseen ones. Prompt learning is the compromise of paper §3.2:
#
# > Prompt learning can slightly modify the embedding space of CLIP such that it can better adapt to the task at hand without breaking its visual-language alignment.
#
# Only a few new tensors are trained; every CLIP weight stays as it was. How few, for each variant of this notebook (void: a learned "no class" embedding, §5). "Learned" counts every learned tensor in the variant's file, and some of them stay frozen while that variant trains: `visual_add` and `visual_prepend` keep the offline text context fixed (`train_text=False` in `model_lib.variant_stage(name)`; §5's live run prints the stage it trains).

# %%
# NBVAL_CHECK_OUTPUT
n_clip = sum(p.numel() for p in clip.model.parameters())
print(f"toy CLIP: {n_clip:,} frozen parameters")
for name in ("text_offline", "text_e2e", "visual_add", "visual_prepend", "baseline_plus"):
    learned = model_lib.LearnedParts(clip, stages.variant_stage(name).model, net.config.num_queries)
    parts = {part: sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else module.numel()
             for part, module in ((k, getattr(learned, k)) for k in ("text_prompts", "visual_prompts", "void_embedding"))
             if module is not None}
    print(f"{name:15s} {sum(parts.values()):7,} learned ({100 * sum(parts.values()) / n_clip:.2f} % of CLIP): {parts}")

# %% [markdown]
# ## 2. Text prompts: a learned context
#
# A hand-written template such as "a photo of a {}." is a guess. CoOp (Zhou et al., 2022) replaces its words by M learned vectors shared by all classes, and reads the class embedding at the end-of-text token, as CLIP does:
#
# $$t_c = \mathrm{TextEncoder}\big([\mathrm{SOS}]\; v_1 \dots v_M\; w(\text{name}_c)\; w(.)\; [\mathrm{EOS}]\big) \qquad (C, D)$$
#
# Starting the context from the word embeddings of "a photo of a" makes the learned prompt begin *exactly* as the fixed template (the official code starts from random noise: `ctx_init=None`, `std=0.02`). Built by hand:

# %%
names = ["fish", "grass", "sky"]
tokens = clip.tokenizer([f"{n}." for n in names])  # (C, L): [SOS] name . [EOS] 0 0 ...
M = 4
context = clip.model.token_embedding(clip.tokenizer(["a photo of a"])[0, 1:1 + M])  # (M, W): v_1..v_M
words = clip.model.token_embedding(tokens)  # (C, L, W)
x = torch.cat([words[:, :1], context.expand(len(names), -1, -1), words[:, 1:-M]], dim=1)  # (C, L, W): SOS, v, name, ., EOS
eos = tokens.argmax(-1) + M  # (C,): the end-of-text token moved M places right
x = clip.model.transformer(x + clip.model.positional_embedding, attn_mask=clip.model.attn_mask)  # (C, L, W)
t = F.normalize(clip.model.ln_final(x)[torch.arange(len(names)), eos] @ clip.model.text_projection, dim=-1)  # (C, D)

package = prompts.TextPrompts(clip, n_ctx=M, ctx_init="a photo of a")(names)
fixed = clip.text_embeddings(names, ["a photo of a {}."])
assert torch.allclose(t, package, atol=1e-6) and torch.allclose(t, fixed, atol=1e-5)
print("hand-built = deop_lite.prompts.TextPrompts = the fixed template's embeddings:", tuple(t.shape))

# %% [markdown]
# ## 3. Offline initialisation on seen-class crops
#
# SimBaseline learns the context before any segmentation training (paper §3.1; SimBaseline's [mask_former/proposal_classification.py](https://github.com/MendelXu/zsseg.baseline/blob/master/mask_former/proposal_classification.py)): cut each ground-truth segment of a seen class out of its image (its bounding box, the pixels outside the mask painted CLIP's mean colour), resize it to CLIP's input size and classify it with CLIP's image embedding $f(x)$ against the 12 seen classes:
#
# $$\mathcal{L}_{\text{offline}} = -\log \frac{\exp(\tau \cos(f(x), t_y))}{\sum_{c \in \text{seen}} \exp(\tau \cos(f(x), t_c))}$$
#
# Here $\tau$ is CLIP's temperature (its logit scale). Since the image side is frozen, the crops' embeddings are computed once; each step only runs the text encoder.

# %%
item = toyworld.segmentation_world("train", 1)[0]
present = [c for c in item["label"].unique().tolist() if c != metrics.IGNORE_INDEX]
crops = clip_lib.masked_crops(item["image_raw"], torch.stack([item["label"] == c for c in present]), clip.image_size)
viz.show_scenes(torch.cat([item["image_raw"][None], F.interpolate(crops, size=128)]), ncols=len(present) + 1,
                captions=["training scene (unseen: 255)"] + [toyworld.CLASS_NAMES[c] for c in present])
plt.show()

# %%
offline = stages.load_or_train_deop("text_offline", net, clip)
history = stages.shipped_history("text_offline")
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 2.6))
viz.plot_history(history, ["loss"], ax=ax1, title="offline prompt loss (cross-entropy)")
viz.plot_history(history, ["crop_acc", "hIoU"], ax=ax2, title="crop accuracy; hIoU on 48 val scenes")
plt.show()

# %% [markdown]
# What did the context learn? CoOp reads a learned vector back as the vocabulary word whose embedding is closest (cosine). Ours started as "a photo of a":

# %%
# NBVAL_CHECK_OUTPUT
vocabulary = clip.model.token_embedding.weight[1:len(clip.tokenizer.vocabulary) + 1]  # (V, W): real words only
similarity = F.normalize(offline.learned.text_prompts.ctx, dim=-1) @ F.normalize(vocabulary, dim=-1).T  # (M, V)
for i, (value, index) in enumerate(zip(*similarity.max(-1))):
    print(f"v_{i + 1}: nearest word {clip.tokenizer.vocabulary[index]!r} (cosine {value:.2f})")

# %% [markdown]
# ## 4. Visual prompts: adding and prepending
#
# Supplementary Fig. 7 shows two ways to steer the frozen ViT; supplementary Table 7 (Appendix C.1) compares them.
#
# **Adding** (DeOP's released choice): a learned tensor $P^l$ with one row per token is added to the token sequence $z^l$ at the ViT's input (before `ln_pre`) and at the start of chosen blocks (before `ln_1`, so it stays in the residual stream):
#
# $$z^l \leftarrow z^l + P^l$$
#
# $P^l$ is sized for a reference grid (here 16 × 16, the 128-pixel scenes) and, like CLIP's positional embedding, resized bicubically to any other grid. The official code starts the prompts at random (`visual_init="random"`), which perturbs the frozen CLIP before any training; this notebook's variants start them at zero, so training starts from exactly the frozen CLIP. By hand, for prompts at the input and at block 2:

# %%
image = clip.normalize(torch.stack([val[i]["image_raw"] for i in range(4)]))  # (4, 3, 128, 128)
added = prompts.VisualPrompts(clip.visual, "add", layers=(0, 2), reference_grid=16, init="random")
v = clip.visual
x = v.conv1(image).flatten(2).transpose(1, 2)  # (B, 256, W): patch tokens
x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], dim=1)  # (B, 1 + 256, W)
x = v.ln_pre(x + clip_lib.resize_pos_embed(v.positional_embedding, (16, 16)) + added.prompts[0])  # z^0 + P^0
for k, block in enumerate(v.transformer.resblocks):
    x = block(x + added.prompts[1] if k == 2 else x)  # z^2 + P^2 before block 2
by_hand = clip_lib.project_patches(v, x, (16, 16))  # (B, D, 16, 16)

assert torch.allclose(by_hand, severed_dense_features(v, image, prompts=added), atol=1e-5)
zero = prompts.VisualPrompts(clip.visual, "add", layers=(0, 1, 2, 3), init="zeros")
assert torch.allclose(severed_dense_features(v, image, prompts=zero), clip.dense_features(image), atol=1e-5)
print("hand-built = deop_lite.prompts.VisualPrompts; zero prompts = the frozen CLIP")

# %% [markdown]
# **Prepending** (VPT-deep, Jia et al., ECCV 2022: visual prompt tokens prepended at every block's input): $P$ learned tokens are inserted after CLS at chosen blocks, $[x_{\text{cls}}, P^l, z^l]$; a block's prompts replace the previous block's, and all of them are dropped at the output, so the dense features keep their shape. Unlike added prompts, prepended tokens change the attention of every patch even when they are zero.

# %%
# NBVAL_CHECK_OUTPUT
prepended = prompts.VisualPrompts(clip.visual, "prepend", layers=(0, 1, 2, 3), num_tokens=5, init="random")
print("prompt tokens in the stream entering each block:", [prepended.num_prepended(k) for k in range(4)])
print("dense features:", tuple(severed_dense_features(v, image, prompts=prepended).shape))

# %% [markdown]
# ## 5. End-to-end training with DeOP's segmentation loss
#
# *Baseline+* trains the prompts for segmentation itself, with the proposal network and CLIP frozen. The paper says which losses, not how they are put together (§3.2):
#
# > As it is trained for segmentation, we adopt a combination of dice loss [23] and focal loss [25], which is a common practice for semantic segmentation.
#
# The rest is the official code's ([mask_former/modeling/criterion_decoder.py](https://github.com/CongHan0808/DeOP/blob/master/mask_former/modeling/criterion_decoder.py), `loss_labels_bce`). There is no matching: each proposal's class distribution (12 seen classes and a learned **void** class) votes for its pixels, the vote $S$ is squashed into a probability $P$ per class and pixel, and $P$ is scored against the one-hot ground truth $Y$:
#
# $$S_{c}(x) = \sum_n \operatorname{softmax}_c(\text{logits}_n)\,\sigma(M_n)(x), \qquad P = \sigma(3S - 3), \qquad \mathcal{L} = 2\,\mathrm{Focal}(P, Y) + 0.8\,\mathrm{Dice}(P, Y)$$
#
# $$\mathrm{Focal} = \frac{1}{|\Omega|}\sum_{x \in \Omega} \frac{1}{C+1}\sum_{c=1}^{C+1} -\alpha_t\,(1 - p_t)^{\gamma} \log p_t, \qquad p_t = \begin{cases} P_c(x) & Y_c(x) = 1 \\ 1 - P_c(x) & Y_c(x) = 0 \end{cases}, \quad \alpha_t = \begin{cases} 0.25 & Y_c(x) = 1 \\ 0.75 & Y_c(x) = 0 \end{cases}, \quad \gamma = 2$$
#
# $$\mathrm{Dice} = 1 - \frac{2 \sum_{x \in \Omega} \sum_{c \le C} P_c(x)\,Y_c(x) + 1}{\sum_{x \in \Omega} \sum_{c \le C} \big(P_c(x) + Y_c(x)\big) + 1} \qquad \text{(void left out; both per image, then averaged over the images)}$$
#
# None of these constants is in the paper: $\sigma(3S - 3)$ is `output_sig=3.0` in `loss_labels_bce`, $p_t$ is clamped to $[10^{-4}, 1 - 10^{-4}]$ in its `bce_loss_ignore`, and the weights are the training script's `DECODER_CE_WEIGHT 2.0` and `DECODER_DICE_WEIGHT 0.8` ([scripts/deop_train.sh](https://github.com/CongHan0808/DeOP/blob/master/scripts/deop_train.sh)). We use the same.
#
# **Unseen pixels.** The paper's protocol (§3, "Problem definition") only says what training sees:
#
# > In training stage, the model needs to project the images into different regions with seen classes. During inference, the model predicts the results for all seen and unseen classes.
#
# It does not say what the loss does with the pixels of unseen classes. The official code decides it: its data preparation labels them `255` ([datasets/prepare_coco_stuff_164k_sem_seg.py](https://github.com/CongHan0808/DeOP/blob/master/datasets/prepare_coco_stuff_164k_sem_seg.py)), and `bce_loss_ignore` and `dice_loss_ignore` turn `255` into the void channel: every unseen pixel is a target of the void channel, and so a negative of every seen class, in both terms (the dice term leaves the void channel itself out). This project's default is its own choice, not the paper's: the pixels $\Omega$ that the loss counts are the seen ones only, so an unseen object is taught as nothing at all (`ignore_as_void=False`); `ignore_as_void=True` counts every pixel, as the official code does. Every variant in this notebook uses the default; exercise 6 re-trains *baseline+* the official way.
#
# The loss by hand on four training scenes, from the equations above, both ways, against `deop_lite.losses.deop_segmentation_loss`:

# %%
batch = torch.utils.data.default_collate([toyworld.segmentation_world("train", 4)[i] for i in range(4)])
label = metrics.seen_label_map(toyworld.CLASS_NAMES, seen)[batch["label"]]  # (4, 128, 128) toy ids -> indices into the 12 seen classes, 255 kept
classifier = model_lib.MaskClassifier(clip, stages.variant_stage("baseline_plus").model)  # untrained: zero visual prompts
out = model_lib.DeOP(net, classifier)(batch["image_raw"], seen, toyworld.REFINEMENT)
print("class logits", tuple(out["logits"].shape), "(B, N, 12 seen + void); masks", tuple(out["mask_probs"].shape))

C = len(seen)  # the void channel is index C
sigma_M = F.interpolate(out["mask_probs"], size=label.shape[-2:], mode="bilinear", align_corners=False)  # (B, N, H, W): σ(M_n)
S = torch.einsum("bnc,bnhw->bchw", out["logits"].softmax(-1), sigma_M)  # (B, C + 1, H, W): the vote
P = torch.sigmoid(3 * S - 3).clamp(1e-4, 1 - 1e-4)  # (B, C + 1, H, W)
Y = F.one_hot(label.clamp(max=C), C + 1).permute(0, 3, 1, 2).float()  # (B, C + 1, H, W): 255 -> the void channel
p_t = torch.where(Y == 1, P, 1 - P)
focal_map = (torch.where(Y == 1, 0.25, 0.75) * (1 - p_t) ** 2 * -p_t.log()).mean(1)  # (B, H, W): mean over the C + 1 channels


def loss_by_hand(omega: torch.Tensor) -> torch.Tensor:  # omega (B, H, W) in {0, 1}: the pixels the loss counts
    focal = ((focal_map * omega).sum((1, 2)) / omega.sum((1, 2))).mean()
    p, y = P[:, :C] * omega[:, None], Y[:, :C] * omega[:, None]  # (B, C, H, W): void left out of the dice
    dice = 1 - (2 * (p * y).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)  # (B,)
    return 2 * focal + 0.8 * dice.mean()


for ignore_as_void, omega in ((False, label != metrics.IGNORE_INDEX), (True, torch.ones_like(label, dtype=torch.bool))):
    loss = losses.deop_segmentation_loss(out["logits"], out["mask_probs"], label, ignore_as_void=ignore_as_void)
    assert torch.allclose(loss_by_hand(omega.float()), loss["loss"], atol=1e-6)
    print(f"ignore_as_void={ignore_as_void}: {omega.float().mean():.1%} of the pixels counted; loss {loss['loss']:.3f} "
          f"(focal {loss['seg_focal']:.4f}, dice {loss['seg_dice']:.3f}) = by hand")

# %% [markdown]
# Training one variant is one call (or `python -m deop_lite.model train --variant baseline_plus`); it resumes when interrupted. A short live run, in a temporary folder, so the shipped files are untouched:

# %%
demo = stages.train_briefly("baseline_plus", DEMO_STEPS, val_scenes=DEMO_SCENES)  # stages.train_deop with fewer steps, into a temporary folder
print(f"the table above: the live run after {DEMO_STEPS} steps, on the first {DEMO_SCENES} validation scenes")

# %% [markdown]
# The shipped variants were trained for 500 steps of 8 scenes each (notebook 04 §6 says why 500). Their logs:

# %%
histories = {variant: stages.shipped_history(variant) for variant in ("text_e2e", "visual_add", "visual_prepend", "baseline_plus")}
print(f"shipped variants: {histories['baseline_plus'][-1]['step']} steps of "
      f"{stages.variant_stage('baseline_plus').batch_size} training scenes each")
viz.plot_run_panels(histories, {"seg_dice": "dice loss (training batches)", "pAcc": "pAcc on 48 validation scenes"})
plt.show()

# %% [markdown]
# ## 6. The toy-world Table 7 and *baseline+*
#
# Every row uses the same frozen proposal network and CLIP, evaluated on the same 200 validation scenes over all 16 classes (seen and unseen), with proposals refined as notebook 01 §4 describes. "Fixed template" is notebook 01's baseline; the paper's baseline uses the offline text prompt (row 2). Beside each number, its 95 % bootstrap interval over the scenes: two rows whose intervals overlap are not told apart by these scenes.

# %%
# NBVAL_CHECK_OUTPUT
rows = {"baseline, fixed template": "baseline", "text, offline": "text_offline", "text, end-to-end": "text_e2e",
        "visual adding (text offline)": "visual_add", "visual prepending (text offline)": "visual_prepend",
        "both = baseline+": "baseline_plus"}
results = {title: stages.evaluate_deop(stages.load_or_train_deop(variant, net, clip), N_VAL, progress=False,
                                       interval=True)
           for title, variant in rows.items()}
print(metrics.format_table(results))

# %% [markdown]
# The comparisons that the reading below makes, each with its intervals:

# %%
# NBVAL_CHECK_OUTPUT
def compare(a: str, b: str, key: str) -> None:
    """Row a against row b on one metric: told apart only if their 95 % intervals do not overlap."""
    (low_a, high_a), (low_b, high_b) = results[a]["interval"][key], results[b]["interval"][key]
    verdict = "apart" if high_a < low_b or high_b < low_a else "intervals overlap: not told apart"
    print(f"{key:6s} {a:>33s} {results[a][key]:5.1f}  vs  {b:<33s} {results[b][key]:5.1f}   {verdict}")


for a, b, key in [("text, offline", "both = baseline+", "pAcc"), ("text, offline", "both = baseline+", "unseen"),
                  ("text, offline", "both = baseline+", "seen"),
                  ("baseline, fixed template", "text, offline", "hIoU"), ("text, offline", "text, end-to-end", "hIoU"),
                  ("visual adding (text offline)", "visual prepending (text offline)", "pAcc"),
                  ("visual adding (text offline)", "visual prepending (text offline)", "hIoU"),
                  ("visual prepending (text offline)", "both = baseline+", "hIoU"),
                  ("text, end-to-end", "both = baseline+", "hIoU"), ("visual adding (text offline)", "both = baseline+", "hIoU")]:
    compare(a, b, key)

# %%
fig, ax = plt.subplots(figsize=(10, 2.8))
keys, width = ("pAcc", "hIoU", "seen", "unseen"), 0.13
for i, (title, r) in enumerate(results.items()):
    value = torch.tensor([r[k] for k in keys])
    low, high = torch.tensor([r["interval"][k] for k in keys]).T  # (4,) each
    ax.bar([k + (i - 2.5) * width for k in range(len(keys))], value, width, label=title,
           yerr=torch.stack([value - low, high - value]), error_kw={"elinewidth": 0.8, "capsize": 1.5})
ax.set_xticks(range(len(keys)), keys); ax.set_ylabel("%"); ax.grid(axis="y", alpha=0.3)
ax.set_title(f"toy-world Table 7 on {N_VAL} validation scenes (bars: 95 % intervals)", fontsize=9)
ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes, off the bars
fig.tight_layout()
plt.show()

# %%
batch = torch.utils.data.default_collate([val[i] for i in range(5)])
columns = {"ground truth": batch["label"]}
for title, variant in {"fixed template": "baseline", "text prompt, offline": "text_offline", "baseline+": "baseline_plus"}.items():
    model = stages.load_deop(variant, proposals=net, clip=clip)
    columns[title] = model.predict(batch["image_raw"], toyworld.CLASS_NAMES, toyworld.REFINEMENT)["label"]
viz.show_segmentations(batch["image_raw"], columns)
plt.show()

# %% [markdown]
# The paper's Table 7 (COCO-Stuff, ViT-B/16) for comparison:
#
# | Type | End-to-end | pAcc | hIoU | Seen | Unseen |
# |---|---|---|---|---|---|
# | Text | ✗ | 15.6 | 7.0 | 6.2 | 8.0 |
# | Text | ✓ | 25.7 | 7.2 | 7.6 | 6.9 |
# | Vision A. | ✓ | 22.6 | 6.4 | 6.3 | 6.5 |
# | Vision P. | ✓ | 16.7 | 6.7 | 6.4 | 7.4 |
# | Both | ✓ | 27.6 | 8.3 | 8.0 | 8.7 |
#
# The paper reads its Table 3 (§5, "Effectiveness of prompt learning, PS and CAL") as:
#
# > Prompt learning is benefiting the pAcc metric, which increases from 15.6 to 27.6 on COCO-Stuff dataset
#
# What holds in the toy world, and what does not (the comparisons printed above; every variant trained for 500 steps):
#
# - **Prompt learning lifts pAcc clearly**, as in the paper: 39.9 (offline text prompt) → 60.8 (*baseline+*), far apart.
# - **The offline text prompt alone does not help.** Its hIoU is 17.7 against the fixed template's 19.0, inside the intervals: these scenes do not tell the two apart. A likely reason: learned on crops of seen classes, it fits their crops rather than scenes. Trained end-to-end, the text prompt is clearly better (24.5); in the paper's table the same step (its first two rows) is small on hIoU.
# - **Unlike the paper, the unseen classes gain too.** The paper's unseen column barely moves from its first row to its last; ours rises from 17.2 to 26.7 with *baseline+* (apart), and the seen mIoU from 18.3 to 47.7. The prompts are trained on seen classes only, so what they change in the frozen CLIP carries over to classes they never saw; exercise 3 asks whether it is locality.
# - **Adding against prepending.** In the paper's table adding is ahead on pAcc and prepending on hIoU (rows "Vision A." and "Vision P."), and both prompts together are best on every column. Here prepending is ahead of adding on both pAcc and hIoU (73.3 against 49.9, 37.5 against 23.2, apart). *Baseline+* is above each of its two parts, as in the paper (hIoU 34.2 against 24.5 and 23.2, apart), but not above prepending alone: 37.5 against 34.2 is inside the intervals. Why adding learns less here is open: the added prompts are 131,584 numbers against 2,560 prepended ones, trained for the same 500 steps; our toy ViT has 4 blocks; and we start added prompts at zero. *Baseline+* keeps the paper's combination, so that Table 3 (notebook 04) is the paper's ladder.
#
# The paper's reading holds in the toy world, and its prompts do more (the unseen classes gain), but the one-pass *baseline+* stays below what notebook 03 gets by severing the toy CLIP's last blocks, with no training at all.

# %% [markdown]
# ## Summary
# - A learned text context is 4 vectors (512 numbers); added visual prompts are 4 × 257 × 128 numbers. With the text context and the void embedding, the *baseline+* variant learns 132,224 numbers, 8.03 % of the toy CLIP (a real ViT-B/16 with DeOP's prompts: under 2 %). CLIP's own weights never change.
# - Started from "a photo of a", the learned context reproduces the fixed template exactly; added prompts started at zero reproduce the frozen CLIP exactly.
# - DeOP's segmentation loss, written by hand above, is the package's: the paper names focal and dice loss; $\sigma(3S - 3)$ and $2\,\mathrm{Focal} + 0.8\,\mathrm{Dice}$ are the official code's. Unseen pixels are left out of it here (our choice); the official code teaches them as void.
# - Offline, on seen-class crops, the context is no better than the fixed template (hIoU 17.7 against 19.0, inside the intervals). Trained end-to-end with added visual prompts (*baseline+*, 500 steps), it reaches pAcc 60.8 and hIoU 34.2, with the unseen mIoU up from 17.2 to 26.7, where the paper's barely moves. Prepended prompts alone do as well (37.5, inside the intervals).
#
# ## Exercises
# Each is tagged with its cost on a laptop CPU; a re-train writes into a folder of your choice and leaves `data/` untouched.
#
# 1. *(seconds)* What did end-to-end training make of the context? Run §3's nearest-word cell on `stages.load_deop("text_e2e", proposals=net, clip=clip).learned.text_prompts.ctx`. *Hint:* replace `offline` by the loaded model. *Expect* other nearest words than the offline prompt's, with cosines as low: a learned vector need not sit near any word.
# 2. *(seconds)* How much of *baseline+*'s gap to a perfect score is classification, and how much is proposals? Evaluate it with ground-truth masks: `stages.evaluate_classifier(stages.load_or_train_deop("baseline_plus", net, clip).classifier, N_VAL, interval=True)`, and the fixed-template baseline the same way. *Hint:* `evaluate_classifier` gives the mask classifier one perfect mask per class, so the proposals play no part. *Expect* hIoU to rise by more than ten points for *baseline+* and by less for the baseline, and to stay far from a perfect score: most of the gap is classification.
# 3. *(seconds)* Do the prompts make the patch tokens more local? Measure notebook 03's attention share inside the own segment (its §1) with *baseline+*'s visual prompts: `model = stages.load_deop("baseline_plus", proposals=net, clip=clip)`, then `severance.patch_attention(clip.visual, image, prompts=model.learned.visual_prompts)`, then `severance.attention_in_segment`. For the prepended prompts, load `stages.load_deop("visual_prepend", proposals=net, clip=clip)` the same way. *Hint:* take `image` and `segments` as notebook 03 §1 does (the label at each patch's centre); `from deop_lite import severance`. *Expect* the opposite: the share falls below the stock CLIP's, more so with the prepended prompts. Whatever the prompts improve, it is not locality, the subject of notebook 03.
# 4. *(seconds)* Why $\sigma(3S - 3)$? On §5's batch, compute `losses.deop_segmentation_loss(out["logits"], out["mask_probs"], label, sharpness=k)` for k = 1, 3 and a large k, and plot $\sigma(kS - k)$ for $S$ from 0 to 2. *Hint:* $S = 1$ gives $P = 1/2$ whatever $k$; $S = 0$ gives $\sigma(-k)$. *Expect* that with $k = 1$ a class that no proposal votes for still gets $P = \sigma(-1) \approx 0.27$, so the focal term stays high even for a perfect vote; DeOP's $k = 3$ brings it to $\sigma(-3) \approx 0.05$, and a large $k$ makes $P$ a near step at $S = 1$.
# 5. *(a re-train of the offline prompt: minutes)* Start the text context from noise, the official choice: `stage = stages.variant_stage("text_offline"); stage.model.prompts.ctx_init = None`, then `stages.train_variant("text_offline", stage, run_dir="runs/noise", out="runs/noise/text_offline.safetensors")` and evaluate it as in §6. *Hint:* the crops' embeddings are computed first; then each step runs only the text encoder. *Expect* the same place: a crop accuracy like the shipped run's, and a scene hIoU inside the shipped offline prompt's interval. Compare the `crop_acc` column of your run's log (`runs/noise/text_offline_train.log`) with the shipped one's (`data/deop/text_offline_train.log`); it is a fraction, so §3's figure draws it near the bottom of the hIoU axis.
# 6. *(a re-train of* baseline+*, 500 steps: minutes)* Train it with the official loss: `stage = stages.variant_stage("baseline_plus"); stage.ignore_as_void = True`, then `stages.train_variant(...)` into a folder of your own as in exercise 5. What happens to the unseen mIoU, and why? *Hint:* void is dropped after the softmax at inference (`MaskClassifier.forward`), so a proposal that has learned "void" gives little weight to any class. *Expect* the unseen column to fall, since every unseen object in training is now taught as void; if it does not, look at which proposals cover the unseen objects, as notebook 04 does for DeOP's unseen errors.
#
# **Next:** [03_patch_severance.ipynb](03_patch_severance.ipynb): why patch features are poorly localised, and how cutting attention fixes it without training.
