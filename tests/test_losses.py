import torch

from deop_lite.losses import deop_segmentation_loss
from deop_lite.metrics import IGNORE_INDEX


def _confident(label: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One proposal per class, each covering exactly that class's pixels and confidently classified."""
    masks = torch.stack([(label == c).float() for c in range(n_classes)], dim=1)  # (B, C, H, W)
    logits = 20 * torch.eye(n_classes, n_classes + 1).expand(len(label), -1, -1)  # (B, N=C, C + 1)
    return logits, masks


def test_deop_loss_prefers_the_right_classes():
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[:, 4:] = 1
    logits, masks = _confident(label, 3)
    right = deop_segmentation_loss(logits, masks, label)["loss"]
    wrong = deop_segmentation_loss(logits[:, [1, 0, 2]], masks, label)["loss"]
    assert right < wrong


def test_ignored_pixels_are_left_out_or_void():
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[:, 4:] = 1
    logits, masks = _confident(label, 2)
    hidden = label.clone()
    hidden[:, 6:] = IGNORE_INDEX  # an unseen object
    # Default: ignored pixels do not count, whatever the model says there.
    assert torch.allclose(deop_segmentation_loss(logits, masks, hidden)["loss"],
                          deop_segmentation_loss(logits[:, :, :], masks[..., :6, :], hidden[..., :6, :])["loss"])
    # The official choice: they are targets of the void channel, so a class predicted there costs more.
    official = deop_segmentation_loss(logits, masks, hidden, ignore_as_void=True)["loss"]
    assert official > deop_segmentation_loss(logits, masks, hidden)["loss"]
    assert torch.isfinite(deop_segmentation_loss(logits, masks, torch.full_like(label, IGNORE_INDEX))["loss"])
