import pytest
import torch
import torch.nn.functional as F

from deop_lite.model import DeOP, classify_segments, mask_pooling, one_pass_baseline, semantic_map
from deop_lite.proposals import MaskProposalNetwork, proposal_masks
from deop_lite.severance import GPS_LAST, Severance
from deop_lite.stages import ProposalStage


def test_mask_pooling_averages_the_covered_patches():
    torch.manual_seed(0)
    dense_feats = F.normalize(torch.randn(1, 4, 2, 2), dim=1)  # (B, D, h, w)
    mask = torch.zeros(1, 1, 8, 8)  # (B, N, H, W): 4x4 pixels per patch
    mask[..., :4, :] = 1  # the top row of patches
    mask[..., 4:6, :4] = 1  # half of the bottom-left patch
    expected = F.normalize(dense_feats[0, :, 0, 0] + dense_feats[0, :, 0, 1] + 0.5 * dense_feats[0, :, 1, 0], dim=0)
    assert torch.allclose(mask_pooling(dense_feats, mask)[0, 0], expected, atol=1e-6)
    # The official binary variant: the binary mask nearest-resized (pixel 4 of 8 samples row and column 1), so the
    # half-covered patch, whose sampled pixel (4, 0) is inside the mask, counts fully.
    binary = mask_pooling(dense_feats, mask, binary=True)[0, 0]
    top_row = dense_feats[0, :, 0, 0] + dense_feats[0, :, 0, 1]  # (D,)
    assert torch.allclose(binary, F.normalize(top_row + dense_feats[0, :, 1, 0], dim=0), atol=1e-6)


def test_classify_and_semantic_map():
    segment_emb = F.normalize(torch.tensor([[[1.0, 0], [0, 1.0]]]), dim=-1)  # (1, 2, 2)
    text_emb = torch.eye(2)
    logits = classify_segments(segment_emb, text_emb, 10.0, void_emb=torch.tensor([1.0, 1.0]))
    assert logits.shape == (1, 2, 3) and torch.allclose(logits[0, 0, :2], torch.tensor([10.0, 0.0]))
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]]])  # (B, N, C)
    masks = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])[None]  # (B, N, H, W)
    assert torch.allclose(semantic_map(probs, masks), torch.tensor([0.9, 0.1]).view(1, 2, 1, 1).expand(1, 2, 2, 2))


def test_the_baseline_classifier_is_mask_pooling_then_cosine_softmax_then_O(toy_clip):
    """Paper §3.1 by hand, on two masks (the left and right halves): F_I = pooled F_V, F_C = softmax(τ cos(F_I, F_T)),
    O = Σ_n F_C[n] σ(M_n)."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 64)
    masks = torch.zeros(1, 2, 64, 64)
    masks[:, 0, :, :32], masks[:, 1, :, 32:] = 1, 1  # (B, N, H, W)
    names = ["sky", "ladybird", "grass"]
    dense = toy_clip.dense_features(toy_clip.normalize(image))  # (1, D, 8, 8)
    left, right = F.normalize(dense[0, :, :, :4].sum((1, 2)), dim=0), F.normalize(dense[0, :, :, 4:].sum((1, 2)), dim=0)
    text = toy_clip.text_embeddings(names, ["a photo of a {}."])  # (C, D)
    expected = (toy_clip.model.logit_scale.exp() * torch.stack([left, right]) @ text.T).softmax(-1)  # (N, C)
    out = one_pass_baseline(toy_clip).classify_masks(image, masks, names)
    assert torch.allclose(out["class_probs"][0], expected, atol=1e-5)
    assert torch.allclose(out["scores"][0, :, 0, 0], expected[0], atol=1e-5)  # O at a pixel of the left mask
    assert torch.equal(out["label"][0, :, :32], expected[0].argmax().expand(64, 32))


def test_deop_is_its_proposals_classified(toy_clip):
    """DeOP = proposal network + mask classifier: its output is the classifier's on the network's masks."""
    proposals = MaskProposalNetwork(ProposalStage.tiny().model)
    classifier = one_pass_baseline(toy_clip, GPS_LAST)
    image, names = torch.rand(2, 3, 64, 96), ["sky", "ladybird", "grass"]
    masks = proposal_masks(proposals, image).sigmoid()  # (2, 8, 64, 96)
    out = DeOP(proposals, classifier).predict(image, names)
    assert torch.allclose(out["class_probs"], classifier.classify_masks(image, masks, names)["class_probs"], atol=1e-6)
    assert torch.allclose(out["class_probs"].sum(-1), torch.ones(2, 8))


def test_a_severed_classifier_changes_what_it_says(toy_clip):
    image, names = torch.rand(1, 3, 64, 64), ["sky", "ladybird"]
    masks = torch.rand(1, 4, 64, 64)
    plain = one_pass_baseline(toy_clip).classify_masks(image, masks, names)
    for mode in ("gps", "mps", "gps_mask"):
        severed = one_pass_baseline(toy_clip, Severance(mode, {-1: 1.0})).classify_masks(image, masks, names)
        assert not torch.allclose(severed["class_probs"], plain["class_probs"])
    with pytest.raises(ValueError, match="needs mask_probs"):
        one_pass_baseline(toy_clip, Severance("mps", {-1: 1.0})).dense_features(image, None)


def test_every_variant_is_one_config_that_survives_json():
    import json
    from dataclasses import asdict

    from deop_lite.stages import VARIANTS, DeOPStage, variant_stage
    for name in VARIANTS:
        stage = variant_stage(name)
        assert DeOPStage.from_dict(json.loads(json.dumps(asdict(stage)))) == stage
    with pytest.raises(ValueError, match="unknown variant 'dope'"):
        variant_stage("dope")


@pytest.mark.parametrize("variant", ["text_offline", "deop"])
def test_train_a_variant_then_load_it(tmp_path, variant):
    from deop_lite.stages import load_deop, main
    out = tmp_path / f"{variant}.safetensors"
    main(["train", "deop", "--variant", variant, "--tiny", "--run-dir", str(tmp_path / "run"), "--out", str(out)])
    model = load_deop(variant, path=out)
    assert model.metadata["variant"] == variant and (model.learned.anchor_decoder is not None) == (variant == "deop")
    assert (tmp_path / f"{variant}_train.log").exists()


def test_missing_variant_checkpoint_says_how_to_train_it(tmp_path):
    from deop_lite.stages import load_deop
    with pytest.raises(FileNotFoundError, match="python -m deop_lite.stages train deop --variant deop"):
        load_deop("deop", path=tmp_path / "nothing.safetensors")


def test_refinement_is_passed_in_by_whoever_evaluates(toy_clip):
    """DeOP uses the network's own masks unless the caller passes a post-process (the toy world's evaluation passes
    ``toyworld.REFINEMENT``); the network's config holds no inference setting."""
    from deop_lite.proposals import Refinement
    from deop_lite.toyworld import REFINEMENT
    model = DeOP(MaskProposalNetwork(ProposalStage.tiny().model), one_pass_baseline(toy_clip))
    image = torch.rand(1, 3, 64, 64)
    refined = proposal_masks(model.proposals, image, refinement=REFINEMENT).sigmoid()  # (1, N, H, W)
    raw = proposal_masks(model.proposals, image).sigmoid()
    assert not torch.allclose(refined, raw)
    assert torch.equal(model.train().proposal_mask_probs(image), raw)
    assert torch.equal(model.proposal_mask_probs(image, REFINEMENT), refined)
    assert torch.equal(model.predict(image, ["sky", "grass"])["mask_probs"], raw)
    other = Refinement(iterations=2)
    assert torch.equal(model.predict(image, ["sky", "grass"], other)["mask_probs"],
                       proposal_masks(model.proposals, image, refinement=other).sigmoid())
    assert REFINEMENT == Refinement() and not any("refine" in name for name in vars(model.proposals.config))


def test_the_shipped_severance_sweep_pairs_ps_and_deop_and_names_its_commands():
    from deop_lite.stages import GPS_TOY, severance_sweep, variant_stage
    runs = severance_sweep()
    settings = {(r["clip"], r["blocks"], r["steps"]) for r in runs}
    for variant in ("ps", "deop"):
        assert {(r["clip"], r["blocks"], r["steps"]) for r in runs if r["variant"] == variant} == settings
    for r in runs:
        assert ("--clip" in r["command"]) == (r["clip"] != "shipped")
        assert f"deop --variant {r['variant']} --severed-blocks {r['blocks']} --steps {r['steps']}" in r["command"]
        assert {"pAcc", "seen", "unseen", "hIoU"} <= set(r["final"]) and r["curve"][-1]["step"] == r["steps"]
        if r["variant"] == "deop":  # CAL's gain over the PS run of the same setting, inside its paired interval
            partner = next(p for p in runs if p["variant"] == "ps" and (p["clip"], p["blocks"], p["steps"]) ==
                           (r["clip"], r["blocks"], r["steps"]))
            gain, low, high = r["cal_gain"]["hIoU"]
            assert gain == pytest.approx(r["final"]["hIoU"] - partner["final"]["hIoU"], abs=1e-6) and low <= gain <= high
    main_line = variant_stage("deop")  # the shipped DeOP is one of the sweep's settings
    assert ("shipped", len(GPS_TOY.alphas), main_line.train.steps) in settings
    assert main_line.model.severance == GPS_TOY == Severance("gps", {2: 1.0, 3: 1.0})


@pytest.mark.parametrize("variant, expected", [("deop", {"pAcc": 86.27, "seen": 75.94, "unseen": 59.68, "hIoU": 66.83}),
                                               ("ps", {"pAcc": 85.37, "seen": 73.05, "unseen": 66.60, "hIoU": 69.67})])
def test_a_shipped_variant_scores_its_pinned_numbers_on_eight_scenes(variant, expected):
    """A broken or swapped checkpoint shows here, in the unit tests, before any notebook runs (a few seconds). The
    tolerance leaves room for float32 differences between CPUs' kernels, far below what a wrong file moves."""
    from deop_lite.stages import evaluate_deop, load_deop
    result = evaluate_deop(load_deop(variant), scenes=8, progress=False)
    assert {key: result[key] for key in expected} == pytest.approx(expected, abs=0.5)
