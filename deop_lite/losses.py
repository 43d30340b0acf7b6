"""Losses: MaskFormer's Hungarian-matched mask losses for the proposal network (SimBaseline's mask_former/modeling/criterion.py).

By default every mask loss and matching cost is computed over *valid* pixels only: pixels labelled
IGNORE_INDEX (unseen classes in ZS3 training labels) never count, so no query is ever taught that an
unseen object is background. ``ProposalConfig(ignored_pixels="negative")`` is the official code's
choice instead (MaskFormer builds each target mask as ``label == class`` and scores every pixel): the
matched masks are taught that ignored pixels are not part of their segment.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import sigmoid_focal_loss

from .metrics import IGNORE_INDEX, semantic_targets
from .model import semantic_map


def pairwise_focal_cost(logits: torch.Tensor, targets: torch.Tensor, positive_weight: float = 0.25,
                        gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss of every prediction against every target, averaged over pixels.

    Args:
        logits: (N, P) mask logits over P (valid) pixels; targets: (T, P) in {0, 1}.
        positive_weight: the focal loss's α (weight of the positive term; 1 - α weighs the negative one), named
            apart from the severance α of the glossary.
    Returns:
        (N, T) costs.
    """
    prob = logits.sigmoid()
    bce_positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")  # (N, P)
    bce_negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")  # (N, P)
    pos = positive_weight * (1 - prob) ** gamma * bce_positive
    neg = (1 - positive_weight) * prob ** gamma * bce_negative
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - Dice of every prediction (N, P) against every target (T, P): (N, T)."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T  # (N, T)
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]  # (N, T)
    return 1 - (numerator + 1) / (denominator + 1)


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - Dice (smoothed by 1) of each row: probabilities, targets (M, P) -> (M,)."""
    return 1 - (2 * (probs * targets).sum(-1) + 1) / (probs.sum(-1) + targets.sum(-1) + 1)


def half_resolution(label: torch.Tensor) -> torch.Tensor:
    """The labels DeOP's segmentation loss is computed on: every second pixel, (B, H, W) -> (B, H/2, W/2)."""
    return label[:, 1::2, 1::2]


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, targets: torch.Tensor, weight_focal: float, weight_dice: float,
                    class_cost: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal one-to-one assignment of N predictions to T <= N targets (scipy's linear_sum_assignment).

    Args:
        logits: (N, P) mask logits; targets: (T, P) masks; class_cost: optional (N, T) extra cost.
    Returns:
        (query indices (T,), target indices (T,)).
    """
    cost = weight_focal * pairwise_focal_cost(logits, targets) + weight_dice * pairwise_dice_cost(logits, targets)
    if class_cost is not None:
        cost = cost + class_cost
    rows, cols = linear_sum_assignment(cost.double().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def mask_proposal_loss(outputs: dict, label: torch.Tensor, config, label_map: torch.Tensor | None = None) -> dict:
    """MaskFormer's set loss, summed over the last and (with deep supervision) every earlier decoder layer.

    Args:
        outputs: the network's dict: ``masks`` (B, N, h, w) logits, ``aux`` list, optional ``logits``.
        label: (B, H, W) int64 training labels (unseen already IGNORE_INDEX).
        config: a ``ProposalConfig`` (loss weights, ``empty_weight``, ``class_aware``, ``loss_stride``: the
            losses are computed on every ``loss_stride``-th label pixel, the masks upsampled to that size).
        label_map: (256,) int64 mapping label ids to class-head indices; needed when class-aware.
    Returns:
        dict with ``loss`` (scalar to minimise) and detached parts ``focal``, ``dice``, ``empty``/``class``.
    """
    stride = config.loss_stride
    label = label[..., stride // 2::stride, stride // 2::stride]  # (B, H/s, W/s), nearest subsampling
    layers = [outputs] + (list(outputs["aux"]) if config.deep_supervision else [])
    parts = [_layer_loss(layer, label, config, label_map) for layer in layers]
    total = {k: sum(p[k] for p in parts) for k in parts[0]}
    return {"loss": total.pop("loss"), **{k: v.item() / len(parts) for k, v in total.items()}}


def _layer_loss(out: dict, label: torch.Tensor, config, label_map) -> dict:
    masks = F.interpolate(out["masks"], size=label.shape[-2:], mode="bilinear", align_corners=False)  # (B, N, H, W)
    zero = masks.sum() * 0
    focal, dice, empty, cls = zero, zero, zero, zero
    n_images = len(label)
    for b in range(n_images):
        valid = label[b] != IGNORE_INDEX  # (H, W)
        if not valid.any():  # every pixel unseen: nothing to learn (DeOP's data code drops such images)
            continue
        scored = valid if config.ignored_pixels == "excluded" else torch.ones_like(valid)  # (H, W)
        classes, targets = semantic_targets(label[b])
        logits = masks[b][:, scored]  # (N, P): the P pixels the matched masks are scored on
        targets = targets[:, scored].to(logits.dtype)  # (T, P)
        class_cost, log_probs = None, None
        if config.class_aware:
            log_probs = out["logits"][b].log_softmax(-1)  # (N, K+1)
            class_cost = -config.weight_class * log_probs.exp()[:, label_map[classes]]  # (N, T)
        rows, cols = hungarian_match(logits, targets, config.weight_focal, config.weight_dice, class_cost)
        if len(rows):
            focal = focal + sigmoid_focal_loss(logits[rows], targets[cols], reduction="none").mean(-1).mean()
            dice = dice + dice_loss(logits[rows].sigmoid(), targets[cols]).mean()
        unmatched = torch.ones(len(logits), dtype=torch.bool, device=logits.device)
        unmatched[rows] = False
        if config.class_aware:
            target_classes = torch.full((len(logits),), log_probs.shape[-1] - 1, device=logits.device)
            target_classes[rows] = label_map[classes[cols]].to(logits.device)
            weights = torch.ones(log_probs.shape[-1], device=logits.device)
            weights[-1] = config.empty_weight
            cls = cls + F.nll_loss(log_probs, target_classes, weight=weights)
        elif unmatched.any():
            idle = masks[b][unmatched][:, valid]  # (N - T, P_valid): pushed towards empty masks on valid pixels
            empty = empty + sigmoid_focal_loss(idle, torch.zeros_like(idle), reduction="none").mean()
    focal, dice, empty, cls = (x / n_images for x in (focal, dice, empty, cls))
    loss = config.weight_focal * focal + config.weight_dice * dice
    loss = loss + (config.weight_class * cls if config.class_aware else config.weight_focal * config.empty_weight * empty)
    return {"loss": loss, "focal": focal.detach(), "dice": dice.detach(),
            ("class" if config.class_aware else "empty"): (cls if config.class_aware else empty).detach()}


# ----------------------------------------------------------------------------------------------------
# DeOP's segmentation loss (its mask_former/modeling/criterion_decoder.py): no matching, the classified masks are
# assembled into a class map

def deop_segmentation_loss(logits: torch.Tensor, mask_probs: torch.Tensor, label: torch.Tensor,
                           sharpness: float = 3.0, weight_focal: float = 2.0, weight_dice: float = 0.8,
                           ignore_as_void: bool = False) -> dict:
    """Focal BCE + dice on the per-pixel class map that the classified proposals vote for.

        S[c, x] = Σ_n softmax(logits_n)[c] · σ(M_n)[x]      (C + 1 channels, void last)
        P = σ(sharpness · S − sharpness)                      (S = 1 -> P = 0.5)

    Args:
        logits: (B, N, C + 1) logits over the C training classes and void (last).
        mask_probs: (B, N, h, w) σ(M), resized here to the labels' size.
        label: (B, H, W) int64 indices into the C training classes, or IGNORE_INDEX (unseen pixels).
        ignore_as_void: False (default, our choice: the paper does not say how unseen pixels enter the loss):
            ignored pixels are left out of it, so an unseen object is never taught to be anything. True: the
            official code's choice,
            ignored pixels are targets of the void channel (DeOP's mask_former/modeling/criterion_decoder.py).
    Returns:
        dict with ``loss`` and the detached parts ``seg_focal``, ``seg_dice``.
    """
    n_classes = logits.shape[-1] - 1
    mask_probs = F.interpolate(mask_probs, size=label.shape[-2:], mode="bilinear", align_corners=False)
    scores = semantic_map(logits.softmax(-1), mask_probs)  # (B, C + 1, H, W)
    probs = torch.sigmoid(sharpness * scores - sharpness).clamp(1e-4, 1 - 1e-4)  # (B, C + 1, H, W)
    ignored = label == IGNORE_INDEX  # (B, H, W)
    target_ids = torch.where(ignored, torch.full_like(label, n_classes), label)  # ignored -> void channel
    targets = F.one_hot(target_ids, n_classes + 1).permute(0, 3, 1, 2).to(probs.dtype)  # (B, C + 1, H, W)
    counted = torch.ones_like(ignored) if ignore_as_void else ~ignored  # (B, H, W)
    # Focal BCE (α 0.25, γ 2), averaged over all channels and the counted pixels of each image, then over
    # the images: every image weighs the same, so the loss of a batch is the mean of its halves' losses
    # (one GPU with B images = two with B/2 each). With ignore_as_void this is the official mean over all.
    bce = F.binary_cross_entropy(probs, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    weight_t = 0.25 * targets + 0.75 * (1 - targets)  # the focal loss's α_t
    focal = (weight_t * (1 - p_t) ** 2 * bce).mean(1)  # (B, H, W)
    focal = ((focal * counted).flatten(1).sum(1) / counted.flatten(1).sum(1).clamp(min=1)).mean()
    # Dice over the real channels of each image, void excluded, counted pixels only.
    p, t = (x[:, :n_classes] * counted[:, None] for x in (probs, targets))  # (B, C, H, W)
    dice = dice_loss(p.flatten(1), t.flatten(1))  # (B,)
    loss = weight_focal * focal + weight_dice * dice.mean()
    return {"loss": loss, "seg_focal": focal.detach().item(), "seg_dice": dice.mean().detach().item()}
