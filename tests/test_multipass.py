import torch

from deop_lite.model import DeOP
from deop_lite.multipass import MultiPass
from deop_lite.proposals import MaskProposalNetwork
from deop_lite.stages import ProposalStage
from deop_lite.toyworld import CLASS_NAMES, segmentation_world


def test_multipass_crops_only_valid_masks(toy_clip):
    model = MultiPass(toy_clip)
    item = segmentation_world("val", 1)[0]
    classes = item["label"].unique()
    masks = torch.cat([(item["label"][None] == classes[:, None, None]).float(), torch.zeros(2, 128, 128)])  # 2 empty
    out = model.classify_masks(item["image_raw"][None], masks[None], CLASS_NAMES)
    assert out["num_crops"].tolist() == [len(classes)] and out["label"].shape == (1, 128, 128)
    assert out["class_probs"][0, len(classes):].abs().sum() == 0  # empty masks get no vote
    # One CLIP pass per ground-truth segment, by hand: crop, embed, cosine softmax against the template's text.
    crops, valid = model.crops(item["image_raw"], masks)
    text = toy_clip.text_embeddings(CLASS_NAMES, ["a photo of a {}."])
    expected = (toy_clip.model.logit_scale.exp() * toy_clip.encode_image(toy_clip.normalize(crops)) @ text.T).softmax(-1)
    assert valid.tolist() == list(range(len(classes)))
    assert torch.allclose(out["class_probs"][0, :len(classes)], expected, atol=1e-5)
    # ... and the toy CLIP knows its classes: most pixels are labelled right.
    assert (out["label"][0] == item["label"]).float().mean() > 0.5


def test_multipass_is_a_mask_classifier_for_deop(toy_clip):
    proposals = MaskProposalNetwork(ProposalStage.tiny().model)
    image = segmentation_world("val", 1)[0]["image_raw"][None]
    assert DeOP(proposals, MultiPass(toy_clip)).predict(image, CLASS_NAMES)["scores"].shape == (1, 16, 128, 128)
