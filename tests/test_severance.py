import math

import pytest
import torch
import torch.nn.functional as F

from deop_lite.clip import embed_image
from deop_lite.severance import (
    GPS_LAST,
    NONE,
    Severance,
    finish_block,
    mps_attention,
    qkv,
    self_attention,
    severed_dense_features,
    token_memberships,
)


@pytest.fixture(params=["toy", "vit_b16"])
def clip(request, toy_clip, vit_b16):
    return toy_clip if request.param == "toy" else vit_b16


def _image(clip, h_patches=4, w_patches=6):
    torch.manual_seed(0)
    return torch.randn(1, 3, h_patches * clip.patch_size, w_patches * clip.patch_size)


def test_alpha_zero_is_the_unmodified_clip(clip):
    image = _image(clip)
    with torch.no_grad():
        every_layer = {i: 0.0 for i in range(len(clip.visual.transformer.resblocks))}
        assert torch.equal(severed_dense_features(clip.visual, image, Severance("gps", every_layer)), clip.dense_features(image))
        # ... and the hand-written attention path is the same computation as open_clip's block.
        tokens, _ = embed_image(clip.visual, image)
        block = clip.visual.transformer.resblocks[-1]
        q, k, v = qkv(block, tokens)
        assert torch.allclose(finish_block(block, tokens, self_attention(q, k) @ v), block(tokens), atol=1e-4)


def test_alpha_one_in_the_last_layer_is_maskclip(clip):
    image = _image(clip)
    visual = clip.visual
    with torch.no_grad():
        x, grid = embed_image(visual, image)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        width = x.shape[-1]
        v = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])  # V only
        x = x + last.attn.out_proj(v)  # every token attends to itself only
        x = x + last.mlp(last.ln_2(x))
        expected = F.normalize(visual.ln_post(x[:, 1:]) @ visual.proj, dim=-1).transpose(1, 2).reshape(1, -1, *grid)
        assert torch.allclose(severed_dense_features(visual, image, GPS_LAST), expected, atol=1e-5)


def test_intermediate_alpha_moves_between_the_extremes(toy_clip):
    image = _image(toy_clip)
    with torch.no_grad():
        f0, f1 = (severed_dense_features(toy_clip.visual, image, Severance("gps", {-1: a})) for a in (0.0, 1.0))
        distances = [(severed_dense_features(toy_clip.visual, image, Severance("gps", {-1: a})) - f0).norm().item()
                     for a in (0.25, 0.5, 0.75)]
    assert distances == sorted(distances) and 0 < distances[0] and distances[-1] < (f1 - f0).norm().item()


def test_mps_attention_stays_inside_segments():
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :, :2] = 1  # left half
    masks[0, 1, :, 2:] = 1  # right half
    attention = mps_attention(token_memberships(masks, (2, 2)))  # (1, 5, 5): CLS + 4 patches
    assert torch.allclose(attention.sum(-1), torch.ones(1, 5))
    left, right = [1, 3], [2, 4]  # token indices (row-major, after CLS)
    assert attention[0, left][:, right].abs().max() == 0 and attention[0, right][:, left].abs().max() == 0
    assert torch.allclose(mps_attention(token_memberships(masks, (2, 2)), "softmax").sum(-1), torch.ones(1, 5))


def test_gps_with_one_full_mask_is_pure_gps_and_mps_is_equation_1(toy_clip):
    image = _image(toy_clip)
    full = torch.ones(1, 1, *image.shape[-2:])
    with torch.no_grad():
        assert torch.allclose(severed_dense_features(toy_clip.visual, image, Severance("gps_mask", {-1: 1.0}), full),
                              severed_dense_features(toy_clip.visual, image, GPS_LAST), atol=1e-6)
        masks = torch.rand(1, 5, *image.shape[-2:], generator=torch.Generator().manual_seed(0))
        mps = severed_dense_features(toy_clip.visual, image, Severance("mps", {-1: 1.0}), masks)
        # Eq. 1 by hand: each token's share of each mask (CLS in all), A = M Mᵀ with rows summed to 1, one A for all heads.
        x, grid = embed_image(toy_clip.visual, image)
        for block in toy_clip.visual.transformer.resblocks[:-1]:
            x = block(x)
        shares = F.avg_pool2d(masks, toy_clip.patch_size).flatten(2).transpose(1, 2)  # (1, 24, 5)
        m = torch.cat([torch.ones(1, 1, 5), shares], dim=1)  # (1, 25, 5)
        attention = m @ m.transpose(1, 2)
        attention = attention / attention.sum(-1, keepdim=True)  # (1, 25, 25)
        last = toy_clip.visual.transformer.resblocks[-1]
        q, k, v = qkv(last, x)
        x = finish_block(last, x, attention[:, None] @ v)
        by_hand = F.normalize(toy_clip.visual.ln_post(x[:, 1:]) @ toy_clip.visual.proj, dim=-1).transpose(1, 2)
    assert torch.allclose(mps, by_hand.reshape(1, -1, *grid), atol=1e-5)


def test_bad_input(toy_clip):
    image = _image(toy_clip)
    with pytest.raises(ValueError, match=r"α must lie in \[0, 1\]"):
        Severance("gps", {-1: 1.5})
    with pytest.raises(ValueError, match="out of range for a ViT with 4 blocks"):
        severed_dense_features(toy_clip.visual, image, Severance("gps", {7: 1.0}))
    with pytest.raises(ValueError, match="needs mask_probs"):
        severed_dense_features(toy_clip.visual, image, Severance("mps", {-1: 1.0}))
    with pytest.raises(ValueError, match="cannot be matched to the 4x6 patch grid"):
        severed_dense_features(toy_clip.visual, image, Severance("mps", {-1: 1.0}), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="mode must be one of"):
        Severance("dino", {-1: 1.0})
    assert not NONE.severs and Severance("mps").reads_masks is False  # nothing severed: the stock CLIP, any mode


def test_patch_attention_follows_severance(toy_clip):
    from deop_lite.severance import attention_in_segment, patch_attention
    image = _image(toy_clip)
    stock = patch_attention(toy_clip.visual, image)  # (1, 4, 6, 4, 6)
    assert stock.shape == (1, 4, 6, 4, 6)
    full = patch_attention(toy_clip.visual, image, severance=GPS_LAST)
    assert torch.allclose(full[0, 1, 2], torch.nn.functional.one_hot(torch.tensor(8), 24).float().view(4, 6))
    segments = torch.zeros(1, 4, 6, dtype=torch.long)
    segments[..., 3:] = 1
    inside_stock = attention_in_segment(stock, segments).mean()
    half = patch_attention(toy_clip.visual, image, severance=Severance("gps", {-1: 0.5}))
    inside_half = attention_in_segment(half, segments).mean()
    assert inside_stock < inside_half < attention_in_segment(full, segments).mean() == 1
    masks = torch.zeros(1, 2, *image.shape[-2:])
    masks[0, 0, :, :24], masks[0, 1, :, 24:] = 1, 1  # left and right halves, 3 patch columns each
    mps = patch_attention(toy_clip.visual, image, severance=Severance("mps", {-1: 1.0}), mask_probs=masks)
    assert attention_in_segment(mps, segments).min() == 1


def test_features_and_attention_in_one_pass_equal_the_separate_calls(toy_clip):
    from deop_lite.severance import patch_attention, severed_features_and_attention
    image = _image(toy_clip)
    for severance in (NONE, Severance("gps", {-1: 0.5}), Severance("gps", {-2: 0.5, -1: 1.0})):
        dense_feats, attention = severed_features_and_attention(toy_clip.visual, image, severance)
        with torch.no_grad():
            assert torch.equal(dense_feats, severed_dense_features(toy_clip.visual, image, severance))
        assert torch.equal(attention, patch_attention(toy_clip.visual, image, severance=severance))


# ----------------------------------------------------------------------------------------------------
# The training-free successors, each against an independent computation of its official code's last block

SUCCESSORS = {"maskclip": (True, True), "sclip": (True, True), "clearclip": (False, False), "naclip": (False, False)}
"""(residual, FFN) that each method's official code keeps in the last block, written out again here."""


def _successor_by_hand(visual, image, mode, prompts=None, residual=None, ffn=None, std=5.0, attention_only=False):
    """Dense features with the last block replaced as the method's official code does it, from open_clip's
    weights: in_proj -> q, k, v per head; the method's attention over V; out_proj; optional residual and FFN.
    ``attention_only``: the attention itself, (B, heads, L, L)."""
    x, grid = embed_image(visual, image, prompts)  # (B, L, W)
    blocks = visual.transformer.resblocks
    for index, block in enumerate(blocks[:-1]):
        x = block(x if prompts is None else prompts.at_block(index, x, grid))
    x = x if prompts is None else prompts.at_block(len(blocks) - 1, x, grid)
    last, (batch, length, width) = blocks[-1], x.shape
    heads = last.attn.num_heads
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2)  # (B, heads, L, d) each
               for t in F.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1))
    scale = (width // heads) ** -0.5
    if mode == "maskclip":
        attn = torch.eye(length)
    elif mode == "sclip":
        attn = (q @ q.transpose(-1, -2) * scale).softmax(-1) + (k @ k.transpose(-1, -2) * scale).softmax(-1)
    elif mode == "clearclip":
        attn = (q @ q.transpose(-1, -2) * scale).softmax(-1)
    else:  # naclip: ω over the patch grid, nothing for CLS and prompt tokens
        first = length - grid[0] * grid[1]
        omega = torch.zeros(length, length)
        for i in range(grid[0] * grid[1]):
            for j in range(grid[0] * grid[1]):
                (ri, ci), (rj, cj) = divmod(i, grid[1]), divmod(j, grid[1])
                omega[first + i, first + j] = math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * std ** 2))
        attn = (k @ k.transpose(-1, -2) * scale + omega).softmax(-1)
    if attention_only:
        return attn.expand(batch, heads, length, length)
    out = last.attn.out_proj((attn @ v).transpose(1, 2).reshape(batch, length, width))  # (B, L, W)
    keep_residual, keep_ffn = SUCCESSORS[mode] if residual is None else (residual, ffn)
    x = x + out if keep_residual else out
    x = x + last.mlp(last.ln_2(x)) if keep_ffn else x
    x = x if prompts is None else prompts.strip(x)
    return F.normalize(visual.ln_post(x[:, 1:]) @ visual.proj, dim=-1).transpose(1, 2).reshape(batch, -1, *grid)


@pytest.mark.parametrize("visual_prompts", [None, "add", "prepend"])
@pytest.mark.parametrize("mode", sorted(SUCCESSORS))
def test_successors_match_their_official_last_block(clip, mode, visual_prompts):
    from deop_lite.prompts import VisualPrompts
    image = _image(clip, 4, 6)  # a non-square grid, not CLIP's own
    torch.manual_seed(1)
    prompts = None if visual_prompts is None else VisualPrompts(clip.visual, visual_prompts, layers=(0, 1), init="random")
    with torch.no_grad():
        package = severed_dense_features(clip.visual, image, Severance(mode, {-1: 1.0}), prompts=prompts)
        assert torch.allclose(package, _successor_by_hand(clip.visual, image, mode, prompts), atol=1e-5)


@pytest.mark.parametrize("residual,ffn", [(True, True), (True, False), (False, True), (False, False)])
def test_residual_and_ffn_are_separate_switches(toy_clip, residual, ffn):
    """ClearCLIP's ablation taken apart: its attention with or without each part of the block."""
    image = _image(toy_clip)
    with torch.no_grad():
        package = severed_dense_features(toy_clip.visual, image, Severance("clearclip", {-1: 1.0}, residual, ffn))
        assert torch.allclose(package, _successor_by_hand(toy_clip.visual, image, "clearclip", None, residual, ffn),
                              atol=1e-5)


def test_maskclip_is_gps_at_alpha_one_and_clearclips_ablation_drops_residual_and_ffn(clip):
    """MaskCLIP's vit.py keeps the residual and the FFN around its identity attention: GPS at α = 1, exactly.
    Dropping both (ClearCLIP's ablation) is another model."""
    image = _image(clip)
    with torch.no_grad():
        maskclip = severed_dense_features(clip.visual, image, Severance("maskclip", {-1: 1.0}))
        assert torch.equal(maskclip, severed_dense_features(clip.visual, image, GPS_LAST))
        ablation = severed_dense_features(clip.visual, image, Severance("gps", {-1: 1.0}, False, False))
        assert not torch.allclose(maskclip, ablation, atol=1e-3)


def test_successor_attention_maps(toy_clip):
    from deop_lite.severance import gaussian_neighbourhood, patch_attention
    image = _image(toy_clip)
    omega = gaussian_neighbourhood((4, 6), std=5.0, extra=2)  # (1 + 2 + 24, 27)
    assert omega.shape == (27, 27) and omega[:3].abs().sum() == 0 and omega[:, :3].abs().sum() == 0
    assert omega[3, 3] == 1 and torch.isclose(omega[3, 4], torch.tensor(math.exp(-1 / 50)))
    for mode in ("maskclip", "clearclip", "naclip", "sclip"):
        attention = patch_attention(toy_clip.visual, image, severance=Severance(mode, {-1: 1.0}))  # (1, 4, 6, 4, 6)
        with torch.no_grad():
            by_hand = _successor_by_hand(toy_clip.visual, image, mode, attention_only=True).mean(1)[0, 1:, 1:]  # CLS dropped
        assert torch.allclose(attention.reshape(24, 24), by_hand, atol=1e-6), mode
    maskclip = patch_attention(toy_clip.visual, image, severance=Severance("maskclip", {-1: 1.0})).reshape(24, 24)
    assert torch.equal(maskclip, torch.eye(24))


def test_training_free_table_evaluates_each_mode_three_ways(toy_clip):
    from deop_lite.stages import evaluate_training_free, load_proposals
    proposals = load_proposals()[0]
    rows = {name: evaluate_training_free(toy_clip, proposals, severance, scenes=4)
            for name, severance in (("stock", NONE), ("clearclip", Severance("clearclip", {-1: 1.0})))}
    for row in rows.values():
        assert set(row) == {"per_patch", "mask_pooling", "mask_vote"}
        assert all({"seen", "unseen", "hIoU", "things"} <= set(result) for result in row.values())
    assert rows["stock"]["per_patch"]["IoU"] != rows["clearclip"]["per_patch"]["IoU"]
    proxy = evaluate_training_free(toy_clip, proposals, Severance("proxyclip", {-1: 1.0}), scenes=4,
                                   proxy=proposals.pixel_features)
    assert proxy["per_patch"]["IoU"] != rows["stock"]["per_patch"]["IoU"]


def test_rollout_is_the_product_of_each_blocks_attention_with_half_residual(toy_clip):
    """``severed_features_and_rollout`` by hand: R = Π ½(I + A_l) with rows of A_l renormalised, over the 4 blocks."""
    from deop_lite.severance import patch_attention, severed_features_and_rollout
    image = toy_clip.normalize(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))  # 4 x 4 patches
    severance = Severance("gps", {3: 0.5})
    rollout = torch.eye(16)
    for layer in range(4):
        attn = patch_attention(toy_clip.visual, image, layer, severance).reshape(16, 16)
        rollout = 0.5 * (torch.eye(16) + attn / attn.sum(-1, keepdim=True)) @ rollout
    _, got = severed_features_and_rollout(toy_clip.visual, image, severance)
    assert torch.allclose(got.reshape(16, 16), rollout, atol=1e-6)
    assert torch.allclose(got.sum((-2, -1)), torch.ones(1, 4, 4))  # each patch's output: a whole of its inputs
    _, cut = severed_features_and_rollout(toy_clip.visual, image, Severance("gps", {layer: 1.0 for layer in range(4)}))
    assert torch.equal(cut.reshape(16, 16), torch.eye(16))  # every block severed at α = 1: no patch sees another


# ----------------------------------------------------------------------------------------------------
# 2024-2025: the last block's attention from a second model (ProxyCLIP, CorrCLIP) or from earlier blocks (ResCLIP),
# each against the equations of its official code, written out again here

def _last_block_input(visual, image):
    """Tokens entering the last block (B, L, W), the grid, and the last block's q, k, v per head (B, heads, L, d)."""
    x, grid = embed_image(visual, image)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    last = visual.transformer.resblocks[-1]
    batch, length, width = x.shape
    heads = last.attn.num_heads
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2)
               for t in F.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1))
    return x, grid, (q, k, v)


def _patch_output(visual, attn, v, grid):
    """out_proj(A·V) over the patch tokens, no residual and no FFN, then ln_post, proj, L2 norm: (B, D, h, w)."""
    last = visual.transformer.resblocks[-1]
    batch, heads, patches, dim = attn.shape[0], v.shape[1], attn.shape[-1], v.shape[-1]
    out = last.attn.out_proj((attn @ v).transpose(1, 2).reshape(batch, patches, heads * dim))  # (B, P, W)
    return F.normalize(visual.ln_post(out) @ visual.proj, dim=-1).transpose(1, 2).reshape(batch, -1, *grid)


def test_proxyclip_matches_its_official_custom_attn(clip):
    """ProxyCLIP's open_clip/transformer.py ``custom_attn``: q_k = normalize(F, dim=1); S = q_kᵀ q_k;
    S = (S − mean(S)·β)·γ; S[S < 0] = −inf; softmax; the same for every head, over the patch tokens' V (CLS dropped);
    out_proj; no residual, no FFN."""
    image = _image(clip)
    proxy = torch.randn(1, 24, 4, 6, generator=torch.Generator().manual_seed(2))  # on the patch grid: no resizing
    with torch.no_grad():
        _, grid, (q, k, v) = _last_block_input(clip.visual, image)
        q_k = F.normalize(proxy.flatten(2), dim=1)  # (B, C, P)
        similarity = torch.einsum("bcm,bcn->bmn", q_k, q_k)
        similarity = (similarity - similarity.mean() * 1.2) * 3.0
        similarity[similarity < 0.0] = float("-inf")
        attn = similarity.softmax(-1)[:, None]  # (B, 1, P, P): every head alike
        by_hand = _patch_output(clip.visual, attn, v[:, :, 1:], grid)
        package = severed_dense_features(clip.visual, image, Severance("proxyclip", {-1: 1.0}), proxy=proxy)
    assert torch.allclose(package, by_hand, atol=1e-5)


def test_corrclip_matches_its_official_scope_reconstruction(toy_clip):
    """CorrCLIP's CorrCLIPv1/open_clip/transformer.py: attention allowed between tokens of the same region, and
    where a token of the unsegmented region 0 meets S > mean(S); −inf elsewhere; softmax(τ·S), τ = 4."""
    image = _image(toy_clip)
    proxy = torch.randn(1, 24, 4, 6, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(1, 2, *image.shape[-2:])
    masks[0, 0, :16, :24], masks[0, 1, 16:, 24:] = 1, 1  # two masks of 2 x 3 patches; the rest is in no mask
    region_of_patch = torch.zeros(4, 6, dtype=torch.long)
    region_of_patch[:2, :3], region_of_patch[2:, 3:] = 1, 2
    with torch.no_grad():
        _, grid, (q, k, v) = _last_block_input(toy_clip.visual, image)
        feats = F.normalize(proxy.flatten(2).transpose(1, 2), dim=-1)  # (B, P, C)
        similarity = torch.einsum("bmc,bnc->bmn", feats, feats)[0]  # (P, P)
        regions = region_of_patch.flatten()
        region_masks = [(idx == regions) for idx in torch.unique(regions)]
        equal_idx = torch.zeros_like(similarity).bool()
        for mask in region_masks[1:]:
            equal_idx += torch.outer(mask, mask)
        mask = region_masks[0]
        equal_idx += (mask.unsqueeze(0) + mask.unsqueeze(1)) * (similarity > similarity.mean())
        similarity[~equal_idx] = float("-inf")
        attn = (similarity * 4).softmax(dim=-1)[None, None]  # (1, 1, P, P)
        by_hand = _patch_output(toy_clip.visual, attn, v[:, :, 1:], grid)
        package = severed_dense_features(toy_clip.visual, image, Severance("corrclip", {-1: 1.0}), masks, proxy=proxy)
    assert torch.allclose(package, by_hand, atol=1e-5)


def test_resclip_matches_its_official_residual_attention(clip):
    """ResCLIP's clip/model.py: the intermediate blocks' softmax(q kᵀ s) per head (CLS included), averaged
    (``attention_rcs``), mixed after NACLIP's softmax(k kᵀ s + ω): (1 − λ)·A + λ·A_c, λ = 0.5; out_proj; no residual,
    no FFN."""
    from deop_lite.severance import resclip_blocks
    assert list(resclip_blocks(12)) == [5, 6, 7, 8] and list(resclip_blocks(4)) == [2]  # ViT-B/16's 6th to 9th
    image = _image(clip)
    blocks = clip.visual.transformer.resblocks
    with torch.no_grad():
        x, grid = embed_image(clip.visual, image)
        attn_map = []
        for block in blocks[:-1]:
            q_i, k_i, _ = qkv(block, x)
            attn_map.append((q_i @ k_i.transpose(-1, -2) * q_i.shape[-1] ** -0.5).softmax(-1))
            x = block(x)
        selected = range(5, 9) if len(blocks) == 12 else range(2, 3)
        attention_rcs = torch.stack([attn_map[i] for i in selected]).mean(0)
        q, k, v = qkv(blocks[-1], x)
        omega = torch.zeros(25, 25)
        omega[1:, 1:] = torch.tensor([[math.exp(-((i // 6 - j // 6) ** 2 + (i % 6 - j % 6) ** 2) / 50) for j in range(24)]
                                      for i in range(24)])
        naclip = (k @ k.transpose(-1, -2) * k.shape[-1] ** -0.5 + omega).softmax(-1)
        attn = 0.5 * naclip + 0.5 * attention_rcs  # (B, heads, L, L)
        out = blocks[-1].attn.out_proj((attn @ v).transpose(1, 2).reshape(1, 25, -1))  # (B, L, W)
        by_hand = F.normalize(clip.visual.ln_post(out[:, 1:]) @ clip.visual.proj, dim=-1).transpose(1, 2)
        package = severed_dense_features(clip.visual, image, Severance("resclip", {-1: 1.0}))
    assert torch.allclose(package, by_hand.reshape(1, -1, *grid), atol=1e-5)


def test_mask_vote_is_corrclips_map_correction():
    """CorrCLIP's corrclip_segmentor.py ``postprocess_result``: ``seg_pred[mask] = torch.mode(seg_pred[mask])[0]`` for
    every mask but the unsegmented region."""
    from deop_lite.model import mask_vote
    generator = torch.Generator().manual_seed(4)
    label = torch.randint(5, (2, 8, 8), generator=generator)
    masks = torch.zeros(2, 3, 8, 8)
    masks[:, 0, :4], masks[:, 1, 4:, :4], masks[:, 2, 4:, 4:6] = 0.9, 0.8, 0.6  # the last 2 columns in no mask
    expected = label.clone()
    for b in range(2):
        for n in range(3):
            mask = masks[b, n] >= 0.5
            expected[b][mask] = torch.mode(label[b][mask])[0]
    assert torch.equal(mask_vote(label, masks, 5), expected)


def test_proxy_modes_ask_for_their_proxy(toy_clip):
    image = _image(toy_clip)
    with pytest.raises(ValueError, match="needs proxy features"):
        severed_dense_features(toy_clip.visual, image, Severance("proxyclip", {-1: 1.0}))
    with pytest.raises(ValueError, match="needs mask_probs"):
        severed_dense_features(toy_clip.visual, image, Severance("corrclip", {-1: 1.0}), proxy=torch.rand(1, 8, 4, 6))
