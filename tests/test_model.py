import pytest
import torch
import torch.nn.functional as F

from deop_lite.model import OnePassBaseline, classify_segments, mask_pooling, semantic_map
from deop_lite.proposals import MaskProposalNetwork, ProposalStage


def test_mask_pooling_averages_the_covered_patches():
    torch.manual_seed(0)
    dense_feats = F.normalize(torch.randn(1, 4, 2, 2), dim=1)  # (B, D, h, w)
    mask = torch.zeros(1, 1, 8, 8)  # (B, N, H, W): 4x4 pixels per patch
    mask[..., :4, :] = 1  # the top row of patches
    mask[..., 4:6, :4] = 1  # half of the bottom-left patch
    expected = F.normalize(dense_feats[0, :, 0, 0] + dense_feats[0, :, 0, 1] + 0.5 * dense_feats[0, :, 1, 0], dim=0)
    assert torch.allclose(mask_pooling(dense_feats, mask)[0, 0], expected, atol=1e-6)
    # The official binary variant: nearest-resized binary mask, the half-covered patch counts fully or not at all.
    binary = mask_pooling(dense_feats, mask, binary=True)[0, 0]
    top_row = dense_feats[0, :, 0, 0] + dense_feats[0, :, 0, 1]  # (D,)
    assert torch.allclose(binary, F.normalize(top_row + dense_feats[0, :, 1, 0], dim=0), atol=1e-6) or \
        torch.allclose(binary, F.normalize(top_row, dim=0))


def test_classify_and_semantic_map():
    segment_emb = F.normalize(torch.tensor([[[1.0, 0], [0, 1.0]]]), dim=-1)  # (1, 2, 2)
    text_emb = torch.eye(2)
    logits = classify_segments(segment_emb, text_emb, 10.0, void_emb=torch.tensor([1.0, 1.0]))
    assert logits.shape == (1, 2, 3) and torch.allclose(logits[0, 0, :2], torch.tensor([10.0, 0.0]))
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]]])  # (B, N, C)
    masks = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])[None]  # (B, N, H, W)
    assert torch.allclose(semantic_map(probs, masks), torch.tensor([0.9, 0.1]).view(1, 2, 1, 1).expand(1, 2, 2, 2))


def test_one_pass_baseline_shapes(toy_clip):
    proposals = MaskProposalNetwork(ProposalStage.tiny().model)
    model = OnePassBaseline(proposals, toy_clip)
    out = model(torch.rand(2, 3, 64, 96), ["sky", "ladybird", "grass"])
    assert out["label"].shape == (2, 64, 96) and out["label"].max() < 3
    assert out["class_probs"].shape == (2, 8, 3) and out["mask_probs"].shape == (2, 8, 64, 96)
    assert torch.allclose(out["class_probs"].sum(-1), torch.ones(2, 8))


def test_one_pass_baseline_with_severance(toy_clip):
    proposals = MaskProposalNetwork(ProposalStage.tiny().model)
    image = torch.rand(1, 3, 64, 64)
    plain = OnePassBaseline(proposals, toy_clip)(image, ["sky", "ladybird"])
    for mode in ("gps", "mps", "gps_mask"):
        severed = OnePassBaseline(proposals, toy_clip, severance={-1: 1.0}, severance_mode=mode)(image, ["sky", "ladybird"])
        assert severed["scores"].shape == plain["scores"].shape
        assert not torch.allclose(severed["class_probs"], plain["class_probs"])


def test_every_variant_is_one_config_that_survives_json():
    import json
    from dataclasses import asdict

    from deop_lite.model import VARIANTS, DeOPStage, variant_stage
    for name in VARIANTS:
        stage = variant_stage(name)
        assert DeOPStage.from_dict(json.loads(json.dumps(asdict(stage)))) == stage
    with pytest.raises(ValueError, match="unknown variant 'dope'"):
        variant_stage("dope")


@pytest.mark.parametrize("variant", ["text_offline", "deop"])
def test_train_a_variant_then_load_it(tmp_path, variant):
    from deop_lite.model import load_deop, main
    out = tmp_path / f"{variant}.safetensors"
    main(["train", "--variant", variant, "--tiny", "--run-dir", str(tmp_path / "run"), "--out", str(out)])
    model = load_deop(variant, path=out)
    assert model.metadata["variant"] == variant and (model.learned.anchor_decoder is not None) == (variant == "deop")
    assert (tmp_path / f"{variant}_train.log").exists()


def test_missing_variant_checkpoint_says_how_to_train_it(tmp_path):
    from deop_lite.model import load_deop
    with pytest.raises(FileNotFoundError, match="python -m deop_lite.model train --variant deop"):
        load_deop("deop", path=tmp_path / "nothing.safetensors")


def test_refinement_is_an_argument_of_inference(toy_clip):
    """DeOP refines its proposals as the toy world does unless told otherwise (``refinement=None``: the network's
    own masks, as DeOP's training and the real world use them); the network's config holds no inference setting."""
    from deop_lite.model import DeOP
    from deop_lite.proposals import TOY_REFINEMENT, Refinement, proposal_masks
    model = DeOP(MaskProposalNetwork(ProposalStage.tiny().model), toy_clip)
    image = torch.rand(1, 3, 64, 64)
    refined = proposal_masks(model.proposals, image).sigmoid()  # (1, N, H, W), TOY_REFINEMENT
    raw = proposal_masks(model.proposals, image, refinement=None).sigmoid()
    assert not torch.allclose(refined, raw)
    assert torch.equal(model.train().proposal_mask_probs(image), refined)
    assert torch.equal(model.proposal_mask_probs(image, refinement=None), raw)
    assert torch.equal(model.predict(image, ["sky", "grass"], refinement=None)["mask_probs"], raw)
    other = Refinement(iterations=2)
    assert torch.equal(model.predict(image, ["sky", "grass"], refinement=other)["mask_probs"],
                       proposal_masks(model.proposals, image, refinement=other).sigmoid())
    assert TOY_REFINEMENT == Refinement() and not any("refine" in name for name in vars(model.proposals.config))


def test_the_shipped_severance_sweep_pairs_ps_and_deop_and_names_its_commands():
    from deop_lite.model import GPS_TOY, last_blocks_severed, severance_sweep, variant_stage
    runs = severance_sweep()
    settings = {(r["clip"], r["blocks"], r["steps"]) for r in runs}
    for variant in ("ps", "deop"):
        assert {(r["clip"], r["blocks"], r["steps"]) for r in runs if r["variant"] == variant} == settings
    for r in runs:
        assert ("--clip" in r["command"]) == (r["clip"] != "shipped")
        assert f"--variant {r['variant']} --severed-blocks {r['blocks']} --steps {r['steps']}" in r["command"]
        assert {"pAcc", "seen", "unseen", "hIoU"} <= set(r["final"]) and r["curve"][-1]["step"] == r["steps"]
        if r["variant"] == "deop":  # CAL's gain over the PS run of the same setting, inside its paired interval
            partner = next(p for p in runs if p["variant"] == "ps" and (p["clip"], p["blocks"], p["steps"]) ==
                           (r["clip"], r["blocks"], r["steps"]))
            gain, low, high = r["cal_gain"]["hIoU"]
            assert gain == pytest.approx(r["final"]["hIoU"] - partner["final"]["hIoU"], abs=1e-6) and low <= gain <= high
    main_line = variant_stage("deop")  # the shipped DeOP is one of the sweep's settings
    assert ("shipped", len(GPS_TOY), main_line.train.steps) in settings and last_blocks_severed(len(GPS_TOY)) == GPS_TOY


@pytest.mark.parametrize("variant, expected", [("deop", {"pAcc": 86.27, "seen": 75.94, "unseen": 59.68, "hIoU": 66.83}),
                                               ("ps", {"pAcc": 85.37, "seen": 73.05, "unseen": 66.60, "hIoU": 69.67})])
def test_a_shipped_variant_scores_its_pinned_numbers_on_eight_scenes(variant, expected):
    """A broken or swapped checkpoint shows here, in the unit tests, before any notebook runs (a few seconds). The
    tolerance leaves room for float32 differences between CPUs' kernels, far below what a wrong file moves."""
    from deop_lite.model import evaluate_deop, load_deop
    result = evaluate_deop(load_deop(variant), scenes=8, progress=False)
    assert {key: result[key] for key in expected} == pytest.approx(expected, abs=0.5)
