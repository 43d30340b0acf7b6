import re
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from deop_lite.losses import dice_loss, hungarian_match, mask_proposal_loss, pairwise_dice_cost, pairwise_focal_cost
from deop_lite.metrics import IGNORE_INDEX, semantic_targets
from deop_lite.proposals import (
    PROPOSAL_CACHE,
    MaskProposalNetwork,
    ProposalConfig,
    Refinement,
    best_proposals,
    bilateral_weights,
    proposal_masks,
    refine_masks,
    sine_position_encoding,
)
from deop_lite.stages import ProposalStage


def test_semantic_targets_skip_ignore():
    label = torch.tensor([[0, 0, 3], [IGNORE_INDEX, 3, 3]])
    classes, masks = semantic_targets(label)
    assert classes.tolist() == [0, 3]
    assert masks.tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]]]


def test_pairwise_costs_equal_the_per_pair_losses():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 40), (torch.rand(3, 40) > 0.5).float()
    focal = pairwise_focal_cost(logits, targets)
    dice = pairwise_dice_cost(logits, targets)
    for n in range(5):
        for t in range(3):
            assert torch.isclose(focal[n, t], sigmoid_focal_loss(logits[n], targets[t], reduction="mean"), atol=1e-6)
            assert torch.isclose(dice[n, t], dice_loss(logits[n:n + 1].sigmoid(), targets[t:t + 1])[0], atol=1e-6)


def test_hungarian_match_finds_the_permutation():
    targets = torch.eye(4).repeat_interleave(10, dim=1)  # 4 disjoint segments over 40 pixels
    logits = 8 * (2 * targets[[2, 0, 3, 1]] - 1)  # query q predicts segment perm[q]
    logits = torch.cat([logits, -8 * torch.ones(2, 40)])  # two idle queries
    rows, cols = hungarian_match(logits, targets, weight_focal=20, weight_dice=1)
    assert dict(zip(cols.tolist(), rows.tolist())) == {2: 0, 0: 1, 3: 2, 1: 3}


def test_network_shapes():
    model = MaskProposalNetwork(ProposalStage.tiny().model)
    out = model(torch.randn(2, 3, 64, 96))
    assert out["masks"].shape == (2, 8, 16, 24) and len(out["aux"]) == 1
    assert sine_position_encoding(2, 3, 8).shape == (6, 8)


def test_checkpoints_with_removed_settings_still_load(capsys):
    d = {"model": {**asdict(ProposalStage.tiny().model), "masked_attention": False, "input_scale": 1},
         "train": asdict(ProposalStage.tiny().train), "batch_size": 2, "image_size": 64}
    assert ProposalStage.from_dict(d).model == ProposalStage.tiny().model
    assert "ignored: input_scale, masked_attention" in capsys.readouterr().err


@pytest.mark.parametrize("class_aware", [False, True])
def test_ignored_pixels_send_no_gradient(class_aware):
    # The network is never told anything about ignored (unseen) pixels: the loss gradient w.r.t. mask
    # logits whose bilinear footprint lies inside the ignored region is exactly zero.
    stage = ProposalStage.tiny()
    stage.model.class_aware = class_aware
    stage.model.loss_stride = 1
    torch.manual_seed(0)
    masks = torch.randn(1, 8, 16, 16, requires_grad=True)  # stride 4 of a 64 x 64 image
    out = {"masks": masks, "aux": [], "logits": torch.randn(1, 8, 13)}
    label = torch.zeros(1, 64, 64, dtype=torch.long)
    label[:, 40:60, 40:60] = 5
    label[:, :32, :32] = IGNORE_INDEX
    mask_proposal_loss(out, label, stage.model, label_map=torch.arange(256))["loss"].backward()
    assert masks.grad[..., :6, :6].abs().max() == 0  # cells 0..5 only reach pixels < 26
    assert masks.grad[..., 8:, 8:].abs().max() > 0


def test_negative_ignored_pixels_push_only_the_matched_masks_down():
    # The official MaskFormer loss: ignored pixels are background of every matched mask; idle queries
    # are still pushed to empty on valid pixels only, so they get no gradient inside the ignored region.
    stage = ProposalStage.tiny()
    stage.model.ignored_pixels = "negative"
    stage.model.loss_stride = 1
    torch.manual_seed(0)
    masks = torch.randn(1, 8, 16, 16, requires_grad=True)
    label = torch.zeros(1, 64, 64, dtype=torch.long)
    label[:, 40:60, 40:60] = 5  # two targets (classes 0 and 5) -> two matched queries, six idle
    label[:, :32, :32] = IGNORE_INDEX
    mask_proposal_loss({"masks": masks, "aux": []}, label, stage.model)["loss"].backward()
    inside = masks.grad[0, :, :6, :6]  # (N, 6, 6) cells that only reach ignored pixels
    pushed = inside.flatten(1).abs().amax(1) > 0  # (N,)
    assert pushed.sum() == 2 and (inside[pushed] > 0).all()  # gradient descent lowers the logits there


def test_ignored_pixels_option_is_checked():
    with pytest.raises(ValueError, match="ignored_pixels"):
        ProposalConfig(ignored_pixels="void")


def test_best_proposals():
    label = torch.zeros(8, 8, dtype=torch.long)
    label[:, 4:] = 1
    label[0, 0] = IGNORE_INDEX
    logits = torch.full((2, 8, 8), -5.0)
    logits[0, :, :4] = 5  # exactly class 0 (the ignored pixel does not count)
    logits[1, :4, 4:] = 5  # half of class 1
    logits[1, 7, 0] = 5  # ... plus one pixel of class 0
    match = best_proposals(logits, label)
    assert match["classes"].tolist() == [0, 1] and match["index"].tolist() == [0, 1]
    assert match["iou"].tolist() == pytest.approx([1.0, 16 / 33])  # the ignored pixel does not count
    assert match["precision"].tolist() == pytest.approx([1.0, 16 / 17])
    assert match["coverage"].tolist() == pytest.approx([1.0, 0.5])


def test_real_preset_builds_a_resnet101_with_100_queries():
    config = ProposalConfig.real()
    config.pretrained_backbone = False  # no download in tests
    model = MaskProposalNetwork(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert out["masks"].shape == (1, 100, 32, 32)


def test_tiny_stage_trains_saves_and_loads(tmp_path, capsys):
    from deop_lite.stages import load_proposals, main
    out = tmp_path / "p.safetensors"
    main(["train", "proposals", "--tiny", "--class-aware", "--seed", "3", "--run-dir", str(tmp_path / "run"),
          "--out", str(out)])
    model, meta = load_proposals(out)
    assert model.config.class_aware  # options travel with the metadata
    assert meta["stage"]["train"]["seed"] == 3
    assert set(meta["summary"]["recall"]) == {"all", "seen", "unseen", "segments", "per_class"}
    assert meta["summary"]["command"] == "python -m deop_lite.stages train proposals"
    assert (tmp_path / "p_train.log").exists()
    main(["eval", "proposals", "--checkpoint", str(out), "--scenes", "4", "--first-scene", "2", "--refine-iterations", "2"])
    assert re.search(r"R@30 +R@50\n.*\nseen .*\nunseen +\d\.\d{3} +\d\.\d{3}", capsys.readouterr().out)
    out.write_bytes(out.read_bytes()[:100])  # truncated
    with pytest.raises(RuntimeError, match="unreadable.*python -m deop_lite.stages train proposals"):
        load_proposals(out)


def test_an_all_ignore_image_contributes_nothing():
    stage = ProposalStage.tiny()
    torch.manual_seed(0)
    masks = torch.randn(2, 8, 16, 16, requires_grad=True)
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[1] = IGNORE_INDEX  # every pixel of image 1 is unseen
    losses = mask_proposal_loss({"masks": masks, "aux": []}, label, stage.model)
    assert torch.isfinite(losses["loss"]) and all(torch.isfinite(torch.tensor(v)) for k, v in losses.items() if k != "loss")
    losses["loss"].backward()
    assert masks.grad[1].abs().max() == 0


def test_refinement_snaps_a_spilling_mask_to_the_colour_edge():
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1.0  # black left half, white right half
    weights = bilateral_weights(image, sigma_colour=0.1, sigma_space=3.0, radius=2)  # (1, 25, 32, 32)
    assert weights.shape == (1, 25, 32, 32) and torch.allclose(weights.sum(1), torch.ones(1, 32, 32))
    assert weights[0, 2 * 5 + 3, 8, 15] < 1e-20  # the neighbour one step right, across the edge: no weight
    probs = torch.zeros(1, 1, 32, 32)
    probs[..., :19] = 0.7  # the left half, spilling 3 columns over the edge
    refined = refine_masks(image, probs, iterations=20, sigma_colour=0.1, sigma_space=3.0, radius=2)
    assert (refined[..., :16] > 0.5).all() and (refined[..., 16:] < 0.5).all()


def test_proposal_masks_are_refined_as_the_argument_says():
    torch.manual_seed(0)
    image_raw = torch.rand(1, 3, 64, 64)
    net = MaskProposalNetwork(ProposalStage.tiny().model)
    raw = proposal_masks(net, image_raw, refinement=None)  # (1, 8, 64, 64): the network's own masks
    refinement = Refinement(iterations=3, sigma_colour=0.2, sigma_space=2.0, radius=2)
    expected = refine_masks(image_raw, raw.sigmoid(), 3, sigma_colour=0.2, sigma_space=2.0, radius=2)
    assert torch.allclose(proposal_masks(net, image_raw, refinement=refinement).sigmoid(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="refinement=None"):
        Refinement(iterations=0)


def test_refined_proposals_are_computed_once_per_image_and_weights():
    """The cache returns exactly what a fresh computation gives, per image whatever the batch, and misses
    whenever the weights, the image or the refinement settings change."""
    torch.manual_seed(0)
    net = MaskProposalNetwork(ProposalStage.tiny().model)
    two = Refinement(iterations=2)
    images = torch.rand(3, 3, 64, 64)
    PROPOSAL_CACHE.clear()
    first = proposal_masks(net, images, refinement=two)  # (3, 8, 64, 64): three misses
    assert (PROPOSAL_CACHE.hits, PROPOSAL_CACHE.misses, len(PROPOSAL_CACHE.entries)) == (0, 3, 3)
    again = proposal_masks(net, images[[2, 0]], size=(32, 32), refinement=two)  # other batch, other size: two hits
    assert PROPOSAL_CACHE.hits == 2 and torch.equal(again, F.interpolate(first[[2, 0]], size=(32, 32), mode="bilinear"))
    again[:] = 0  # callers get copies: the cache cannot be changed from outside
    assert torch.equal(proposal_masks(net, images, refinement=two), first)

    assert not torch.equal(proposal_masks(net, images[:1], refinement=Refinement(iterations=3)), first[:1])  # recomputed
    with torch.no_grad():
        net.mask_embed[0].weight.add_(0.1)  # new weights (as after an optimiser step): recomputed, and different
    misses = PROPOSAL_CACHE.misses
    assert not torch.equal(proposal_masks(net, images[:1], refinement=two), first[:1]) and PROPOSAL_CACHE.misses == misses + 1
    assert len(PROPOSAL_CACHE.entries) == 1  # the old weights' entries were dropped with them
    PROPOSAL_CACHE.clear()
    fresh = proposal_masks(net, images[:1], refinement=two)
    assert PROPOSAL_CACHE.misses == 1 and torch.equal(proposal_masks(net, images[:1], refinement=two), fresh)
