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
# # 05 · One pass against many
# *Why multi-pass zero-shot segmentation is slow, and a fair measurement of how much faster DeOP's single pass is.*
#
# - **You will build:** SimBaseline's multi-pass classifier (one CLIP pass per proposal crop) on the same proposals as DeOP, a FLOP count of both, the speed benchmark behind `deop-lite bench`, and the two methods' quality side by side on the toy world.
# - **You need:** notebooks 01–04 (the shipped toy models); the benchmark itself needs no trained weights.
# - **Runtime:** as the [README's notebook table](../README.md#notebooks) gives it, measured with the shipped checkpoints; CI mode (`DEOP_CI=1`) is shorter.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN

from deop_lite import bench, clip as clip_lib, metrics, model as model_lib, multipass, proposals, runtime, stages, toyworld, viz

runtime.set_seed(0)
viz.setup_notebook()
print(runtime.describe())
viz.pipeline_figure("05", title="DeOP pipeline: the classification stream, one pass or many")
plt.show()

# %% tags=["parameters"]
N_VAL = 200  # toy validation scenes behind the quality table (the same number in CI mode)
# The benchmark: ViT-B/16 at 512 px with N = 100 proposals (minutes on a CPU); CI mode times the toy CLIP instead (seconds)
BENCH = bench.BenchConfig.tiny() if runtime.CI else bench.BenchConfig(valid=(10, 30, 100), repeats=2, warmup=1)

# %% [markdown]
# ## 1. Counting the work
#
# A multi-pass method shows CLIP every valid proposal on its own: N′ crops at CLIP's input size (224 for ViT-B/16). DeOP shows CLIP the whole image once, at the segmentation resolution (512). Counting floating-point operations needs no weights and no time: PyTorch's `meta` device carries shapes only.
#
# $$\frac{\text{FLOPs}_{\text{multi}}}{\text{FLOPs}_{\text{one pass}}} \approx \frac{N' \cdot F_{224}}{F_{512}}$$

# %%
# NBVAL_CHECK_OUTPUT
N_PRIME = 100  # valid proposals: the largest N′ of the benchmark in §4
# ViT-L/14 runs at 448 px: 448 / 14 = 32, the same 32 x 32 grid (1024 tokens) as ViT-B/16 at 512 / 16
for name, side, patch in (("ViT-B-16", 512, 16), ("ViT-L-14-336", 448, 14)):
    f = bench.clip_flops(name, side)
    print(f"{name:13s} one pass at {side} ({(side // patch) ** 2} tokens): {f['one_pass'] / 1e9:4.0f} GFLOPs | "
          f"one {f['crop']}-px crop ({(f['crop'] // patch) ** 2} tokens): {f['one_crop'] / 1e9:4.0f} GFLOPs")
    print(f"{'':13s} one pass costs as much as {f['break_even_crops']:.1f} crops; "
          f"N′ = {N_PRIME} crops cost {N_PRIME / f['break_even_crops']:.0f}× one pass")

# %% [markdown]
# One ViT-B/16 pass at 512 costs as much as about 6 crops: it holds 1,024 tokens against a crop's 196, and attention grows with the square of the token count. ViT-L/14 runs at 448 because its patches are smaller: 448 pixels give it the same 32 × 32 grid of 1,024 tokens that ViT-B/16 gets at 512. That pass costs only about 2 crops: a 336-pixel crop already holds 576 tokens. With N′ = 100 valid proposals the multi-pass CLIP work is 16× (ViT-B) or 53× (ViT-L) DeOP's (each model's second line). The proposal network, shared by both, dilutes the end-to-end ratio; the benchmark in §4 measures it.
#
# ## 2. The multi-pass classifier
#
# SimBaseline's recipe ([mask_former/zero_shot_mask_former_model.py](https://github.com/MendelXu/zsseg.baseline/blob/master/mask_former/zero_shot_mask_former_model.py) and [mask_former/modeling/clip_adapter/adapter.py](https://github.com/MendelXu/zsseg.baseline/blob/master/mask_former/modeling/clip_adapter/adapter.py)): binarise each proposal at 0.5, crop its bounding box, paint the pixels outside the mask CLIP's mean colour, resize to CLIP's input size, and classify the CLIP image embedding of every crop, all crops in one batched call. The crops of one toy scene with the shipped proposals, each captioned with the class CLIP gives it:

# %%
clip = clip_lib.load_clip("toy")
net, _ = stages.load_proposals()
multi = multipass.MultiPass(clip)  # a mask classifier: one CLIP pass per mask
val = toyworld.segmentation_world("val", N_VAL)
item = val[3]
masks = proposals.proposal_masks(net, item["image_raw"][None], refinement=toyworld.REFINEMENT).sigmoid()[0]  # (N, 128, 128)
crops, valid = multi.crops(item["image_raw"], masks)  # (N', 3, 64, 64)
out = multi.classify_masks(item["image_raw"][None], masks[None], toyworld.CLASS_NAMES)
captions = [toyworld.CLASS_NAMES[int(out["class_probs"][0, n].argmax())] for n in valid]
viz.show_scenes(torch.cat([item["image_raw"][None], F.interpolate(crops, size=128)]),
                captions=["scene"] + captions, ncols=8, size=1.4)
plt.show()
print(f"{len(valid)} valid proposals of {len(masks)}: {len(valid)} CLIP passes for this image")

# %% [markdown]
# ### One masked crop, by hand
#
# With $b_n = [\sigma(M_n) > 0.5]$ the binarised proposal, $I$ the image and $\mu$ CLIP's mean colour, crop $n$ is the bounding box of $b_n$ cut from
#
# $$x_n = b_n \odot I + (1 - b_n)\,\mu,$$
#
# resized bicubically to CLIP's square input size $S$ (the box's aspect ratio is not kept). This follows SimBaseline's `MaskFormerClipAdapter._preprocess_image` ([adapter.py](https://github.com/MendelXu/zsseg.baseline/blob/master/mask_former/modeling/clip_adapter/adapter.py): `mask_thr=0.5`, `mask_fill="mean"`, boxes from detectron2's `BitMasks`) and its `crop_with_mask` ([utils.py](https://github.com/MendelXu/zsseg.baseline/blob/master/mask_former/modeling/clip_adapter/utils.py)). SimBaseline resizes after normalising, we before; bicubic interpolation is linear, so the order changes nothing but our clamp to $[0, 1]$. The smallest valid proposal of the scene above:

# %%
binary = masks > 0.5  # (N, 128, 128) bool: b_n
k = int(binary[valid].flatten(1).sum(1).argmin())  # the smallest valid proposal is crop k
n = int(valid[k])
rows, cols = binary[n].any(1).nonzero()[:, 0], binary[n].any(0).nonzero()[:, 0]
top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1  # its bounding box
mu = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)  # CLIP's mean colour, in [0, 1]
x_n = torch.where(binary[n, top:bottom, left:right], item["image_raw"][:, top:bottom, left:right], mu)  # (3, h, w)
crop = F.interpolate(x_n[None], size=(clip.image_size, clip.image_size), mode="bicubic")[0].clamp(0, 1)  # (3, S, S)
print(f"proposal {n}: σ(M_n) > 0.5, box rows {top}:{bottom} and columns {left}:{right}, "
      f"x_n {tuple(x_n.shape)} -> crop {tuple(crop.shape)}")
assert torch.allclose(crop, crops[k])  # deop_lite.clip.masked_crops, which MultiPass.crops calls

# %% [markdown]
# ## 3. Quality side by side (toy world)
#
# Same proposals (refined along colour edges, `toyworld.REFINEMENT` of notebook 01 §4), same frozen toy CLIP, same 200 validation scenes. Multi-pass here is CLIP-only (our class-agnostic proposal network gives no class scores to ensemble with, so SimBaseline's λ-ensemble has nothing to mix). Both are `model.DeOP(proposals, classifier)`: the same proposal network, and DeOP's `MaskClassifier` or the multi-pass classifier, `multipass.MultiPass`. The last row gives the crops one ground-truth mask per class instead of proposals: an upper bound for the classifier, with nothing left to find. Each metric carries its 95 % bootstrap interval over the scenes.

# %%
# NBVAL_CHECK_OUTPUT
R = toyworld.REFINEMENT
rows = {"multi-pass (fixed template)": (model_lib.DeOP(net, multi), R),
        "multi-pass, the network's own masks": (model_lib.DeOP(net, multi), None),
        "one-pass baseline (fixed template)": (stages.load_deop("baseline", proposals=net, clip=clip), R),
        "one-pass + GPS, last 2 blocks (training-free)": (model_lib.DeOP(net, model_lib.one_pass_baseline(clip, stages.GPS_TOY)), R),
        "DeOP (trained)": (stages.load_deop("deop", proposals=net, clip=clip), R)}
quality = {title: stages.evaluate_deop(m, N_VAL, progress=False, refinement=refinement, interval=True)
           for title, (m, refinement) in rows.items()}
quality["multi-pass, ground-truth masks (upper bound)"] = stages.evaluate_classifier(multi, N_VAL, progress=False,
                                                                                    interval=True)
print(metrics.format_table(quality))

# %% [markdown]
# In the toy world **trained one pass is level with many passes on quality**: on the same proposals DeOP's hIoU is 67.8 and the multi-pass classifier's 64.7, each inside the other's 95 % interval, and so are their unseen mIoUs (58.7 and 54.9). Untrained, one pass is far behind (hIoU 41.1 with the toy DeOP's two severed blocks): what brings it level is DeOP's training. Given ground-truth masks, crops are nearly perfect (thing mIoU 94.6, the last row); on proposals their thing mIoU falls to 59.3. A crop shows CLIP only what its binarised mask covers, and nothing around it: a mask that holds only a car's wheels shows CLIP wheels on a grey ground. The paper posits the same loss of context:
#
# > Apart from that, we posit that those multi-pass methods get rid of the context (*i.e.* information around the segment) completely for each proposal segment (due to the mask operation in the pre-processing) which may hinder the performance; whereas DeOP utilizes context information naturally in the one-pass architecture. — DeOP §5.1
#
# Refining the proposals along colour edges makes no difference to the crops that the intervals can resolve (hIoU 65.3 with the network's own masks, the table's second row).
#
# ### Reading a speed claim
#
# The paper's Table 1, its SimBaseline and DeOP rows (ViT-B/16; FPS on one V100 GPU, batch 1):
#
# | method | passes | COCO-Stuff hIoU | FPS | VOC hIoU | FPS |
# |---|---|---|---|---|---|
# | SimBaseline | N′ | 37.8 | 1.11 | 77.5 | 2.66 |
# | DeOP | 1 | 38.2 | 4.37 | 80.8 | 6.55 |
#
# The paper's Table 6 (ViT-L/14-336, COCO-Stuff):
#
# | method | pAcc | hIoU | seen | unseen | FPS |
# |---|---|---|---|---|---|
# | SimBaseline | 62.1 | 38.6 | 40.7 | 37.0 | 0.27 |
# | DeOP | 62.6 | 40.0 | 40.4 | 39.6 | 1.85 |
#
# The paper sums these up three times:
#
# > Extensive experiments demonstrate that the proposed method achieves outstanding performance, surpassing state-of-the-art methods while being 4 to 7 times faster at inference. — DeOP, abstract
#
# > Impressively, our method attains around 3 to 4 × increase in the inference speed (FPS). — DeOP §5.1
#
# > Moreover, DeOP achieves a more impressive (almost $7\times$) speed-up at inference. — DeOP §5, on Table 6
#
# Each summary is a ratio of two FPS columns. Divide them:

# %%
# NBVAL_CHECK_OUTPUT
# The paper's FPS on one GPU (Table 1: ViT-B/16; Table 6: ViT-L/14-336): (SimBaseline, DeOP)
PAPER_FPS = {"COCO-Stuff, ViT-B/16 (Table 1)": (1.11, 4.37), "VOC, ViT-B/16 (Table 1)": (2.66, 6.55),
             "COCO-Stuff, ViT-L/14-336 (Table 6)": (0.27, 1.85)}
for setting, (simbaseline, deop) in PAPER_FPS.items():
    print(f"{setting:35s} DeOP {deop:.2f} FPS / SimBaseline {simbaseline:.2f} FPS = {deop / simbaseline:.1f}×")

# %% [markdown]
# The abstract's "4 to 7 times" spans COCO-Stuff with ViT-B/16 (3.9×, rounded up) and with ViT-L/14-336 (6.9×); §5.1's "around 3 to 4×" fits COCO-Stuff's 3.9× but not VOC's 2.5×, which is below both sentences. A speed-up is not a constant of the method: both methods run faster on VOC, and the ratio shrinks. The ratio depends on N′, the number of crops that pass SimBaseline's score threshold (Table 1's caption: it depends on the input image), and on the CLIP, whose crop size sets what one crop costs (§1: one ViT-L/14 pass is worth only 1.9 crops, so one pass gains more). A fair reading names the dataset, the CLIP and N′.
#
# What one pass buys is speed, measured next.
#
# ## 4. The benchmark
#
# `deop-lite bench` (or `deop_lite.bench.run_bench`) builds DeOP in its released configuration (text and visual prompts, GPS in the last layer, a K = 1 query-based CAL decoder) and the multi-pass classifier on **one** proposal network (a ResNet-101 MaskFormer with N = 100 queries at the paper's scale; random weights, which do not change the speed), feeds both the same image and the same masks, exactly N′ of them valid, and times: batch 1, warm-up runs, the median of repeated runs, `torch.cuda.synchronize()` around each call on a GPU, text embeddings cached. It also counts every stage's FLOPs, so that a slow implementation on either side would show up as a speed ratio far from the FLOP ratio. DeOP's **floor** is the time of the proposals plus one CLIP pass, the least a one-pass method can take; the column "DeOP vs floor" says how far DeOP's total time lies above it.

# %%
print(BENCH)
result = bench.run_bench(BENCH)
print(bench.format_result(result))
bench.plot(result)
plt.show()

# %% [markdown]
# Read the table above as ratios: they hold from machine to machine, the seconds do not. The line below gives the two checks of a fair benchmark:

# %%
over_floor = [100 * row["deop_over_floor"] for row in result["rows"]]
ratio_of_ratios = [row["speed_ratio"] / row["flop_ratio"] for row in result["rows"]]
print(f"DeOP's time over its floor: {min(over_floor):+.1f} % to {max(over_floor):+.1f} % | "
      f"speed ratio / FLOP ratio: {min(ratio_of_ratios):.2f} to {max(ratio_of_ratios):.2f}")

# %% [markdown]
# DeOP's time stays close to its floor (proposals + one CLIP pass) at every N′, and the speed ratio follows the FLOP ratio, so neither side is handicapped by its implementation. DeOP is 4× faster from the N′ on the table's last line. With ViT-L/14-336 at 448 (`--clip ViT-L-14-336 --short-side 448`) one pass is worth only 1.9 crops, so DeOP's advantage starts sooner.
#
# ## Summary
# - One ViT-B/16 pass at 512 costs as much as 6.1 crops at 224 (215 against 35 GFLOPs); for ViT-L/14 at 448 against 336-pixel crops, 1.9. The multi-pass cost grows with the number of valid proposals N′; DeOP's stays near its floor.
# - On a CPU the multi-pass classifier is slower than DeOP by about the FLOP ratio at every N′ (§4's table); DeOP is 4× faster from N′ ≈ 35. A published speed-up is one point on such a curve: the paper's GPU numbers give 3.9× on COCO-Stuff, 2.5× on VOC and 6.9× with ViT-L/14-336.
# - One masked crop is the proposal's bounding box, painted CLIP's mean colour outside the binarised mask and resized: a few lines, equal to the package's.
# - In the toy world trained one pass is as good a classifier as many passes on the same proposals (hIoU 67.8 against 64.7, inside each other's 95 % intervals), as the paper's Table 1 finds them on COCO-Stuff; untrained, one pass is far behind (41.1).
#
# ## Exercises
# 1. *(seconds)* At which image side does DeOP's single ViT-B/16 pass cost as much as 30 crops? Hint: call `bench.clip_flops("ViT-B-16", side)` for a few sides and bisect on `break_even_crops`. Expect a side below the one the pixel count alone predicts, $512\sqrt{30/6.1} \approx 1135$ px, because attention grows with the square of the token count.
# 2. *(seconds)* Run the benchmark at toy scale: `print(bench.format_result(bench.run_bench(bench.BenchConfig.tiny())))`, what CI mode runs in §4. Hint: the toy CLIP's crops are half its scenes' side. Expect the FLOP ratio below 1 at the smallest N′: with a couple of valid proposals, cropping is the cheaper way.
# 3. *(a minute)* Paint the outside of each crop black instead of CLIP's mean colour, and evaluate the multi-pass classifier as in §3. Hint: subclass `multipass.MultiPass` and override `crops` to call `clip_lib.masked_crops(..., fill=(0, 0, 0))`. Expect hIoU to fall far outside the first row's interval: after normalisation the mean colour is zero, black is not.
# 4. *(minutes, a GPU)* Run `deop-lite bench --device cuda --bf16`. Does the speed ratio move closer to the FLOP ratio, or further? Hint: compare with the paper's GPU ratios printed in the speed-claim cell of §3. What to look for: a speed ratio below the FLOP ratio suggests that DeOP's single pass keeps the GPU less busy than the batch of crops does (small kernels, launch overheads); above it, the reverse.
# 5. *(minutes)* Add ZegFormer's cropping (`torchvision.ops.roi_align` to 224 on the CLIP-normalised image) as a third method. Is it faster than masked crops? Hint: `bench.median_seconds` times any callables, interleaved; `roi_align` crops every box in one call, while `masked_crops` loops over the masks. Expect little change at large N′: the stage line under §4's table shows where multi-pass spends its time, in the CLIP passes rather than the crops.
#
# **Next:** [06_after_deop.ipynb](06_after_deop.ipynb): what came after DeOP, the training-free methods that followed it, and where they meet it. Then [07_full_deop_gpu.ipynb](07_full_deop_gpu.ipynb): the same pipeline at the paper's scale, with real CLIP on COCO-Stuff and VOC (a GPU for training).
