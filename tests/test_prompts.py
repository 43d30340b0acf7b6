import pytest
import torch

from deop_lite.clip import dense_features, embed_image, masked_crops, project_patches
from deop_lite.model import DeOP, DeOPConfig, MaskClassifier
from deop_lite.prompts import PromptConfig, TextPrompts, VisualPrompts
from deop_lite.proposals import MaskProposalNetwork
from deop_lite.severance import GPS_LAST, Severance, finish_block, qkv, self_attention, severed_dense_features
from deop_lite.stages import ProposalStage


@pytest.mark.parametrize("clip_name", ["toy_clip", "vit_b16"])
def test_text_context_started_from_words_is_the_fixed_template(clip_name, request):
    clip = request.getfixturevalue(clip_name)
    prompts = TextPrompts(clip, n_ctx=4, ctx_init="a photo of a")
    names = ["ladybird", "grass", "sky"]
    assert torch.allclose(prompts(names), clip.text_embeddings(names, ["a photo of a {}."]), atol=1e-5)
    assert TextPrompts(clip, n_ctx=16)(names).shape == (3, clip.embed_dim)  # random init (official)


def test_text_prompt_errors(toy_clip):
    with pytest.raises(ValueError, match="has 3 tokens but n_ctx = 4"):
        TextPrompts(toy_clip, n_ctx=4, ctx_init="a photo of")
    with pytest.raises(ValueError, match="too long"):
        TextPrompts(toy_clip, n_ctx=30)(["ladybird"])
    with pytest.raises(ValueError, match="not in the toy CLIP's vocabulary"):
        TextPrompts(toy_clip, n_ctx=4)(["zebra"])


@pytest.mark.parametrize("clip_name,size", [("toy_clip", (128, 96)), ("vit_b16", (160, 224))])
def test_zero_visual_prompts_reproduce_frozen_clip(clip_name, size, request):
    clip = request.getfixturevalue(clip_name)
    image = clip.normalize(torch.rand(1, 3, *size))
    layers = tuple(range(len(clip.visual.transformer.resblocks)))[:4]
    prompts = VisualPrompts(clip.visual, "add", layers, reference_grid=16, init="zeros")
    frozen = dense_features(clip.visual, image)
    assert torch.allclose(severed_dense_features(clip.visual, image, prompts=prompts), frozen, atol=1e-5)
    # Random prompts (the official init) change the features; the output keeps its shape.
    prompts = VisualPrompts(clip.visual, "add", layers, reference_grid=16, init="random")
    steered = severed_dense_features(clip.visual, image, prompts=prompts)
    assert steered.shape == frozen.shape and not torch.allclose(steered, frozen, atol=1e-3)


def test_prepended_prompts_are_dropped_and_combine_with_severance(toy_clip):
    """VPT-deep by hand: P new tokens after CLS entering blocks 1 and 2 (replacing the previous ones), the last block
    under GPS α = 0.5, the prompt tokens dropped before the projection."""
    image = toy_clip.normalize(torch.rand(2, 3, 64, 64))
    prompts = VisualPrompts(toy_clip.visual, "prepend", (1, 2), num_tokens=3, init="random")
    assert [prompts.num_prepended(i) for i in range(4)] == [0, 3, 3, 3]
    blocks, p = toy_clip.visual.transformer.resblocks, prompts.prompts.expand(2, -1, -1, -1)  # (2, layers, P, W)
    x, grid = embed_image(toy_clip.visual, image)  # (2, 1 + 64, W)
    x = blocks[0](x)
    x = blocks[1](torch.cat([x[:, :1], p[:, 0], x[:, 1:]], dim=1))  # (2, 1 + 3 + 64, W)
    x = blocks[2](torch.cat([x[:, :1], p[:, 1], x[:, 4:]], dim=1))
    q, k, v = qkv(blocks[3], x)
    x = finish_block(blocks[3], x, 0.5 * v + 0.5 * self_attention(q, k) @ v)
    by_hand = project_patches(toy_clip.visual, torch.cat([x[:, :1], x[:, 4:]], dim=1), grid)  # (2, D, 8, 8)
    gps = severed_dense_features(toy_clip.visual, image, Severance("gps", {-1: 0.5}), prompts=prompts)
    assert torch.allclose(gps, by_hand, atol=1e-5)
    masks = torch.rand(2, 5, 64, 64)
    for mode in ("mps", "gps_mask"):  # the prompt tokens count as members of every mask, like CLS
        severed = severed_dense_features(toy_clip.visual, image, Severance(mode, {-1: 1.0}), masks, prompts)
        assert not torch.allclose(severed, gps, atol=1e-3)
    with pytest.raises(ValueError, match="layers must be in 0..3"):
        VisualPrompts(toy_clip.visual, "prepend", (4,))


def test_only_prompts_train_clip_stays_frozen(toy_clip):
    torch.manual_seed(0)
    config = DeOPConfig(PromptConfig(text="learned", visual="add", visual_layers=(0, 2)), void=True)
    model = DeOP(MaskProposalNetwork(ProposalStage.tiny().model), MaskClassifier(toy_clip, config))
    clip_before = {k: v.clone() for k, v in toy_clip.model.state_dict().items()}
    proposals_before = {k: v.clone() for k, v in model.proposals.state_dict().items()}
    learned_before = {k: v.clone() for k, v in model.learned.state_dict().items()}
    optimizer = torch.optim.AdamW(model.learned.parameters(), lr=1e-2)
    out = model.train()(torch.rand(2, 3, 64, 64), ["sky", "ladybird", "grass"])
    (out["logits"].logsumexp(-1).mean() + out["scores"].mean()).backward()
    optimizer.step()
    assert all(p.grad is None for p in toy_clip.model.parameters())
    assert all(torch.equal(v, clip_before[k]) for k, v in toy_clip.model.state_dict().items())
    assert all(torch.equal(v, proposals_before[k]) for k, v in model.proposals.state_dict().items())
    assert not model.proposals.training  # BN statistics of the frozen proposal network never update
    assert all(not torch.equal(v, learned_before[k]) for k, v in model.learned.state_dict().items())
    assert set(model.learned.state_dict()) == {"text_prompts.ctx", "visual_prompts.prompts", "void_embedding"}


def test_masked_crops():
    image = torch.zeros(3, 10, 10)
    image[:, 2:5, 3:8] = 1.0
    mask = torch.zeros(1, 10, 10, dtype=torch.bool)
    mask[0, 2:5, 3:7] = True
    crop = masked_crops(image, mask, size=8, fill=(0.5, 0.5, 0.5))
    assert crop.shape == (1, 3, 8, 8) and crop.min() >= 0 and crop.max() <= 1
    assert torch.allclose(crop[0, :, :, :5], torch.ones(3, 8, 5), atol=0.05)  # the box is all mask: white
    with pytest.raises(ValueError, match="empty mask"):
        masked_crops(image, torch.zeros(1, 10, 10, dtype=torch.bool), size=8)


@pytest.mark.parametrize("clip_name", ["toy_clip", "vit_b16"])
@pytest.mark.parametrize("mode", ["add", "prepend"])
def test_gps_with_visual_prompts(clip_name, mode, request):
    """GPS α = 0 is still the unmodified (prompted) CLIP exactly; α = 1 changes it (issue 5: with visual prompts)."""
    clip = request.getfixturevalue(clip_name)
    image = clip.normalize(torch.rand(1, 3, 64, 96))
    prompts = VisualPrompts(clip.visual, mode, (0, 1), reference_grid=8, init="random")
    prompted = severed_dense_features(clip.visual, image, prompts=prompts)
    assert torch.equal(severed_dense_features(clip.visual, image, Severance("gps", {-1: 0.0}), prompts=prompts), prompted)
    assert not torch.allclose(severed_dense_features(clip.visual, image, GPS_LAST, prompts=prompts), prompted, atol=1e-3)
