import torch

from deop_lite.multipass import MultiPass, ensemble_scores
from deop_lite.proposals import MaskProposalNetwork, ProposalStage
from deop_lite.toyworld import CLASS_NAMES, segmentation_world


def test_ensemble_is_geometric_and_reversed_for_unseen():
    proposal_probs = torch.tensor([[0.9, 0.1]])
    clip_probs = torch.tensor([[0.5, 0.5]])
    mixed = ensemble_scores(proposal_probs, clip_probs, torch.tensor([True, False]), weight=0.8)
    assert torch.allclose(mixed, torch.tensor([[0.9 ** 0.8 * 0.5 ** 0.2, 0.1 ** 0.2 * 0.5 ** 0.8]]))


def test_multipass_crops_only_valid_masks(toy_clip):
    model = MultiPass(MaskProposalNetwork(ProposalStage.tiny().model), toy_clip)
    item = segmentation_world("val", 1)[0]
    classes = item["label"].unique()
    masks = torch.cat([(item["label"][None] == classes[:, None, None]).float(), torch.zeros(2, 128, 128)])  # 2 empty
    out = model.classify_masks(item["image_raw"][None], masks[None], CLASS_NAMES)
    assert out["num_crops"].tolist() == [len(classes)] and out["label"].shape == (1, 128, 128)
    assert out["class_probs"][0, len(classes):].abs().sum() == 0  # empty masks get no vote
    # One CLIP pass per ground-truth segment labels most pixels right: the toy CLIP knows its classes.
    assert (out["label"][0] == item["label"]).float().mean() > 0.5
    assert model(item["image_raw"][None], CLASS_NAMES)["scores"].shape == (1, 16, 128, 128)
