"""The mask proposal network: a class-agnostic MaskFormer (paper §3.1 and supplementary A).

    image -> backbone (res1..res5) -> FPN pixel decoder -> mask features E (B, C_m, H/4, W/4)
                                   -> transformer decoder over res5, N learned queries -> Q (B, N, d)
    masks M = MLP(Q) · E  -> (B, N, H/4, W/4) logits

At inference the masks may be refined along the image's colour edges (:class:`Refinement`, a label-free
post-process): an argument of every function that yields proposals, ``None`` (the network's own masks) by default.
The toy world refines its proposals at evaluation (``toyworld.REFINEMENT``); the real world and DeOP's training
do not.

The paper removes MaskFormer's class head and keeps the mask components. Without any head, a query that
the Hungarian matching leaves unmatched would get no signal at all, and its (arbitrary) mask would pollute
the semantic map O = Σ_n F_C[n] σ(M_n). We therefore supervise unmatched queries towards an **empty
mask** (focal loss to 0, weight ``empty_weight``): still only a mask loss, and an idle query switches
itself off. The official code instead trains a class-aware MaskFormer over the seen classes plus a
"no object" class and uses only its masks (DeOP's scripts/train_learned_prompts_maskformer.sh):
``ProposalConfig(class_aware=True)``.

Pixels labelled ``IGNORE_INDEX`` (unseen classes in ZS3 training labels) are left out of every mask
loss and matching cost by default (``ignored_pixels="excluded"``): the network is never told that unseen
objects are background. The official code scores them as background of every matched mask
(``ignored_pixels="negative"``, MaskFormer's loss over all pixels); idle queries are pushed to empty on
valid pixels only in both modes, so they stay free to cover what was never labelled.
"""
from __future__ import annotations

import hashlib
import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import Conv2dNormActivation, FrozenBatchNorm2d

from .metrics import IGNORE_INDEX, format_table, semantic_targets
from .transformer import DecoderLayer, sine_position_encoding

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORED_PIXEL_MODES = ("excluded", "negative")  # how the mask losses treat IGNORE_INDEX pixels
RESNET_CHANNELS = {"resnet18": (64, 128, 256, 512), "resnet34": (64, 128, 256, 512),
                   "resnet50": (256, 512, 1024, 2048), "resnet101": (256, 512, 1024, 2048)}


@dataclass
class ProposalConfig:
    """Architecture and loss of the mask proposal network; the defaults are the toy world's (1.4 M parameters,
    16 queries, 128 x 128 scenes)."""
    backbone: str = "toy"  # "toy" (a small conv stack) or a torchvision ResNet: "resnet18", "resnet50", ...
    pretrained_backbone: bool = False  # torchvision's ImageNet weights (real world; must be in torch's cache)
    toy_widths: tuple[int, int, int, int] = (32, 64, 96, 128)  # res2..res5 channels of the toy backbone
    num_queries: int = 16  # N
    dim: int = 96  # the transformer decoder's width (MaskFormer's hidden_dim)
    mask_dim: int = 64
    layers: int = 3  # decoder layers (dec_layers)
    heads: int = 4  # attention heads (nheads)
    ffn_dim: int = 384  # the decoder's feed-forward width (dim_feedforward)
    dropout: float = 0.0
    class_aware: bool = False  # the official code's choice: a class head over the seen classes + no-object
    num_classes: int = 12  # seen classes, for class_aware
    weight_focal: float = 20.0  # MaskFormer's weights (configs/coco-stuff-164k-171/maskformer_R50_bs32_60k.yaml in DeOP)
    weight_dice: float = 1.0
    weight_class: float = 1.0
    empty_weight: float = 0.1  # unmatched queries -> empty masks (class-agnostic) / no-object CE weight
    loss_stride: int = 2  # losses on every 2nd label pixel (masks upsampled to match): 4x cheaper, same optimum
    deep_supervision: bool = True
    ignored_pixels: str = "excluded"  # "excluded" from the mask losses, or "negative" (official MaskFormer)

    def __post_init__(self):
        if self.ignored_pixels not in IGNORED_PIXEL_MODES:
            raise ValueError(f"ignored_pixels must be one of {IGNORED_PIXEL_MODES}, got {self.ignored_pixels!r}")

    @classmethod
    def real(cls) -> ProposalConfig:
        """The paper's scale: ResNet-101, 100 queries, hidden 256, 6 decoder layers (paper §5; SimBaseline's
        configs/coco-stuff-164k-171/maskformer_R50_bs32_60k.yaml)."""
        return cls(backbone="resnet101", pretrained_backbone=True, num_queries=100, dim=256, mask_dim=256,
                   layers=6, heads=8, ffn_dim=2048, dropout=0.1, num_classes=156)


# ----------------------------------------------------------------------------------------------------
# Backbone -> res1..res5 (strides 2, 4, 8, 16, 32)

class ToyBackbone(nn.Module):
    """A small conv stack: a stem (stride 2), then two conv-BN-ReLU per stage; strides 2, 4, 8, 16, 32."""

    def __init__(self, widths: tuple[int, int, int, int]):
        super().__init__()
        stem = widths[0] // 2
        self.stem = nn.Sequential(Conv2dNormActivation(3, stem, stride=2), Conv2dNormActivation(stem, stem))
        stages, c_in = [], stem
        for c_out in widths:
            stages.append(nn.Sequential(Conv2dNormActivation(c_in, c_out, stride=2), Conv2dNormActivation(c_out, c_out)))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.channels = (stem, *widths)  # res1 (the stem) .. res5

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(image)  # (B, c, H/2, W/2)
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)  # res2 (H/4) ... res5 (H/32)
        return features  # res1 .. res5


class ResNetBackbone(nn.Module):
    """A torchvision ResNet returning the stem's activation and layer1..layer4 (res1..res5), with frozen
    BatchNorm (detectron2's choice for detection-style batches of a few images per GPU: statistics and
    affine parameters stay those of ImageNet pre-training, so the result does not depend on the batch)."""

    def __init__(self, name: str, pretrained: bool):
        super().__init__()
        if name not in RESNET_CHANNELS:
            raise ValueError(f"unknown backbone {name!r}; use 'toy' or one of {tuple(RESNET_CHANNELS)}")
        weights = "DEFAULT" if pretrained else None
        try:
            resnet = getattr(torchvision.models, name)(weights=weights, norm_layer=FrozenBatchNorm2d)
        except (OSError, RuntimeError) as error:  # no internet and not in torch's cache, or a corrupt file
            raise RuntimeError(
                f"torchvision's ImageNet weights for {name} could not be loaded ({type(error).__name__}: "
                f"{str(error)[:120]}). Put them in torch's cache ({torch.hub.get_dir()}/checkpoints/, from "
                f"a machine with internet: `python -c 'import torchvision; torchvision.models.{name}(weights=\"DEFAULT\")'`"
                f"), or set ProposalConfig(pretrained_backbone=False) to train from scratch.") from error
        self.body = create_feature_extractor(
            resnet, {"relu": "res1", **{f"layer{i}": f"res{i + 1}" for i in range(1, 5)}})
        self.channels = (64, *RESNET_CHANNELS[name])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(image).values())


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PixelDecoder(nn.Module):
    """FPN (MaskFormer's BasePixelDecoder): top-down from res5, lateral 1x1 convs, 3x3 output convs,
    then mask features at the finest level it is given (res2: stride 4)."""

    def __init__(self, in_channels: tuple[int, ...], conv_dim: int, mask_dim: int):
        super().__init__()
        conv = lambda c_in, k: Conv2dNormActivation(c_in, conv_dim, k, norm_layer=_group_norm, bias=False)
        self.lateral = nn.ModuleList(conv(c, 1) for c in in_channels[:-1])  # res2..res4
        self.output = nn.ModuleList(conv(conv_dim, 3) for _ in in_channels[:-1])
        self.top = conv(in_channels[-1], 3)  # res5
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Backbone levels, finest first -> mask features (B, mask_dim, H/4, W/4) at the finest level it was built for."""
        features = features[-(len(self.lateral) + 1):]  # the coarsest levels, as many as in_channels
        y = self.top(features[-1])  # (B, conv_dim, H/32, W/32)
        for lateral, output, x in zip(self.lateral[::-1], self.output[::-1], features[-2::-1]):
            y = output(lateral(x) + F.interpolate(y, size=x.shape[-2:], mode="nearest"))  # (B, conv_dim, h, w)
        return self.mask_features(y)  # (B, mask_dim, H/4, W/4)


class MaskProposalNetwork(nn.Module):
    """Class-agnostic MaskFormer: (B, 3, H, W) ImageNet-normalised images -> N mask logits at stride 4.

    ``forward`` returns a dict: ``masks`` (B, N, H/4, W/4) logits of the last decoder layer, ``aux``
    (one dict per earlier layer, for deep supervision) and, when class-aware, ``logits`` (B, N, K+1).
    """

    def __init__(self, config: ProposalConfig):
        super().__init__()
        self.config = config
        self.backbone = ToyBackbone(config.toy_widths) if config.backbone == "toy" else \
            ResNetBackbone(config.backbone, config.pretrained_backbone)
        self.pixel_decoder = PixelDecoder(self.backbone.channels[1:], config.dim, config.mask_dim)  # res2..res5
        self.input_proj = nn.Conv2d(self.backbone.channels[-1], config.dim, 1)  # res5 -> the decoder's memory
        self.query_pos = nn.Embedding(config.num_queries, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config.dim, config.heads, config.ffn_dim,
                                                 config.dropout) for _ in range(config.layers))
        self.decoder_norm = nn.LayerNorm(config.dim)
        self.mask_embed = nn.Sequential(nn.Linear(config.dim, config.dim), nn.ReLU(),
                                        nn.Linear(config.dim, config.dim), nn.ReLU(),
                                        nn.Linear(config.dim, config.mask_dim))
        self.class_embed = nn.Linear(config.dim, config.num_classes + 1) if config.class_aware else None

    def normalize(self, image_raw: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> ImageNet-normalised, the torchvision backbones' convention."""
        mean = torch.tensor(IMAGENET_MEAN, device=image_raw.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image_raw.device).view(1, 3, 1, 1)
        return (image_raw - mean) / std

    @torch.no_grad()
    def pixel_features(self, image_raw: torch.Tensor) -> torch.Tensor:
        """The pixel decoder's mask features E (B, C_m, H/4, W/4) of images in [0, 1]: class-agnostic features that
        group pixels into segments, a proxy for ProxyCLIP's and CorrCLIP's attention (``severance``)."""
        return self.pixel_decoder(self.backbone(self.normalize(image_raw)))

    def _predict(self, queries: torch.Tensor, mask_features: torch.Tensor) -> dict:
        queries = self.decoder_norm(queries)  # (B, N, d)
        masks = torch.einsum("bnc,bchw->bnhw", self.mask_embed(queries), mask_features)  # (B, N, H/s, W/s)
        out = {"masks": masks}
        if self.class_embed is not None:
            out["logits"] = self.class_embed(queries)  # (B, N, K+1)
        return out

    def forward(self, image: torch.Tensor) -> dict:
        features = self.backbone(image)  # res1..res5
        mask_features = self.pixel_decoder(features)  # E (B, C_m, H/4, W/4)
        memory = self.input_proj(features[-1])  # (B, d, h, w), res5
        batch, dim, h, w = memory.shape
        memory = memory.flatten(2).transpose(1, 2)  # (B, hw, d)
        memory_pos = sine_position_encoding(h, w, dim, memory.device)[None]  # (1, hw, d)
        query_pos = self.query_pos.weight[None].expand(batch, -1, -1)  # (B, N, d)
        queries = torch.zeros_like(query_pos)  # content starts at zero (DETR)
        predictions = []
        for i, layer in enumerate(self.layers):
            queries = layer(queries, query_pos, memory, memory_pos)  # (B, N, d)
            if self.training or i == len(self.layers) - 1:  # every layer's masks for deep supervision
                predictions.append(self._predict(queries, mask_features))
        out = predictions[-1]
        out["aux"] = predictions[:-1] if self.training else []
        return out


# ----------------------------------------------------------------------------------------------------
# Inference: masks at the image's resolution, refined along its colour edges

def window_offsets(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) of the (2r + 1)² pixels of a window, row by row: the order of the K weights below."""
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def bilateral_weights(image_raw: torch.Tensor, sigma_colour: float, sigma_space: float, radius: int) -> torch.Tensor:
    """w(x, y) ∝ exp(-|I(x) - I(y)|² / 2σ_c² - |x - y|² / 2σ_s²) over the K = (2r + 1)² neighbours y of each x.

    image_raw (B, 3, H, W) in [0, 1] -> (B, K, H, W), summing to 1 over K (the image edge is replicated)."""
    height, width = image_raw.shape[-2:]
    padded = F.pad(image_raw, [radius] * 4, mode="replicate")  # (B, 3, H + 2r, W + 2r)
    logits = []
    for dy, dx in window_offsets(radius):
        neighbour = padded[:, :, radius + dy:radius + dy + height, radius + dx:radius + dx + width]  # (B, 3, H, W)
        colour = (neighbour - image_raw).square().sum(1) / (2 * sigma_colour ** 2)  # (B, H, W)
        logits.append(-colour - (dy * dy + dx * dx) / (2 * sigma_space ** 2))
    return torch.stack(logits, 1).softmax(1)  # (B, K, H, W)


def refine_masks(image_raw: torch.Tensor, mask_probs: torch.Tensor, iterations: int, sigma_colour: float = 0.1,
                 sigma_space: float = 3.0, radius: int = 3) -> torch.Tensor:
    """Joint bilateral refinement: each mask's probability diffuses among pixels of similar colour.

        p_n(x) <- Σ_y w(x, y) p_n(y),   repeated ``iterations`` times (w: :func:`bilateral_weights`)

    Across a colour edge the weights are near zero, so a blurry mask that mostly covers an object snaps
    to the object's outline: its spill-over onto a differently coloured neighbour averages with that
    neighbour's (low) probabilities and falls below 0.5. No labels, no classes: DeepLab's CRF
    post-processing in its simplest form (no pairwise label compatibility, each mask on its own).

    Args: image_raw (B, 3, H, W) in [0, 1]; mask_probs (B, N, H, W). Returns (B, N, H, W) in [0, 1].
    """
    if len(image_raw) > 1:  # one image at a time: its arrays stay in the CPU's cache (2x faster, bitwise the same)
        return torch.cat([refine_masks(image_raw[i:i + 1], mask_probs[i:i + 1], iterations, sigma_colour, sigma_space,
                                       radius) for i in range(len(image_raw))])  # (B, N, H, W)
    weights = bilateral_weights(image_raw, sigma_colour, sigma_space, radius).unbind(1)  # K x (1, H, W)
    height, width = mask_probs.shape[-2:]
    for _ in range(iterations):
        padded = F.pad(mask_probs, [radius] * 4, mode="replicate")  # (1, N, H + 2r, W + 2r)
        refined = torch.zeros_like(mask_probs)
        for weight, (dy, dx) in zip(weights, window_offsets(radius)):  # in place: half the time of refined += w * p_shifted
            refined.addcmul_(weight[:, None], padded[:, :, radius + dy:radius + dy + height, radius + dx:radius + dx + width])
        mask_probs = refined  # (1, N, H, W)
    return mask_probs


@dataclass(frozen=True)
class Refinement:
    """Joint bilateral refinement of proposals at inference (:func:`refine_masks`): how the consumer of the masks
    post-processes them, passed to :func:`proposal_masks` and everything that calls it."""
    iterations: int = 20  # rounds of diffusion
    sigma_colour: float = 0.1  # colour distance (RGB in [0, 1]) at which a neighbour's weight falls to e^-1/2
    sigma_space: float = 3.0  # the same for the distance in pixels
    radius: int = 3  # neighbours within this many pixels (a (2r+1)^2 window)

    def __post_init__(self):
        if self.iterations < 1 or self.radius < 1 or min(self.sigma_colour, self.sigma_space) <= 0:
            raise ValueError(f"a Refinement needs iterations >= 1, radius >= 1 and sigmas > 0, got {self}; "
                             f"for the network's own masks pass refinement=None")


class ProposalCache:
    """The refined proposals of each image, computed once per process (a bounded LRU memo).

    The proposal network is frozen wherever its masks are consumed, and refinement costs several times its
    forward pass, so evaluating six models on the same 200 scenes would otherwise refine every scene six
    times. An entry is the refined mask logits (N, H, W) of one image at the image's resolution, keyed by

    - a digest of the network's weights and buffers (recomputed whenever a tensor's version counter moves,
      i.e. after an optimiser step or ``load_state_dict``: a changed network never hits an old entry, and the
      entries of its previous weights are dropped at once),
    - a digest of the image's bytes, shape and dtype,
    - the :class:`Refinement` of the call, and the device.

    Least recently used entries go first once ``max_bytes`` is exceeded; ``clear()`` empties it. Only refined
    masks are cached: the network's own masks are cheap, and training asks for them on fresh scenes.
    """

    def __init__(self, max_bytes: int = 768 * 2 ** 20):
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self.entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._weight_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def weights_digest(self, model: nn.Module) -> str:
        """blake2b of every parameter and buffer, recomputed only when one of them has changed."""
        tensors = [*model.parameters(), *model.buffers()]
        versions = tuple((t._version, t.data_ptr()) for t in tensors)
        known = self._weight_digests.get(model)
        if known is None or known[0] != versions:
            digest = hashlib.blake2b(digest_size=16)
            for tensor in tensors:
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            if known is not None and known[1] != digest.hexdigest():  # this network changed: its old entries are stale
                for key in [key for key in self.entries if key[0] == known[1]]:
                    self.bytes -= self.entries[key].numel() * self.entries[key].element_size()
                    del self.entries[key]
            known = self._weight_digests[model] = (versions, digest.hexdigest())
        return known[1]

    @staticmethod
    def image_digest(image_raw: torch.Tensor) -> str:
        """blake2b of one image (3, H, W): its bytes, shape and dtype."""
        array = image_raw.detach().cpu().contiguous().numpy()
        return hashlib.blake2b(array.tobytes() + repr((array.shape, array.dtype)).encode(), digest_size=16).hexdigest()

    def get(self, key: tuple) -> torch.Tensor | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return entry

    def put(self, key: tuple, masks: torch.Tensor) -> None:
        size = masks.numel() * masks.element_size()
        if size > self.max_bytes // 4:  # an image this large (real world) would only push the others out
            return
        self.entries[key] = masks
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        self.entries.clear()
        self.bytes, self.hits, self.misses = 0, 0, 0


PROPOSAL_CACHE = ProposalCache()
"""This process's refined proposals (see :class:`ProposalCache`)."""


@torch.no_grad()
def proposal_masks(model: MaskProposalNetwork, image_raw: torch.Tensor, size: tuple[int, int] | None = None,
                   refinement: Refinement | None = None) -> torch.Tensor:
    """Mask logits (B, N, H, W) at the image's resolution (bilinear), refined along colour edges by ``refinement``
    (None: the network's own masks), then resized to ``size``.

    Refined masks are computed once per image and process (:data:`PROPOSAL_CACHE`)."""
    model.eval()
    if refinement is not None:
        weights = PROPOSAL_CACHE.weights_digest(model)
        keys = [(weights, PROPOSAL_CACHE.image_digest(image), refinement, str(image.device)) for image in image_raw]
        found = [PROPOSAL_CACHE.get(key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            computed = _refined_masks(model, image_raw[missing], refinement)  # (B', N, H, W)
            for i, image_masks in zip(missing, computed):
                found[i] = image_masks.clone()  # (N, H, W), its own storage, not a view of the batch
                PROPOSAL_CACHE.put(keys[i], found[i])
        masks = torch.stack(found)  # (B, N, H, W)
    else:
        masks = model(model.normalize(image_raw))["masks"]  # (B, N, uH/s, uW/s)
    return F.interpolate(masks, size=size or image_raw.shape[-2:], mode="bilinear", align_corners=False)


def _refined_masks(model: MaskProposalNetwork, image_raw: torch.Tensor, refinement: Refinement) -> torch.Tensor:
    """The network's masks at the image's resolution, refined along its colour edges: (B, N, H, W) logits."""
    masks = model(model.normalize(image_raw))["masks"]  # (B, N, uH/s, uW/s)
    masks = F.interpolate(masks, size=image_raw.shape[-2:], mode="bilinear", align_corners=False)  # (B, N, H, W)
    probs = refine_masks(image_raw, masks.sigmoid(), refinement.iterations, refinement.sigma_colour,
                         refinement.sigma_space, refinement.radius)  # (B, N, H, W)
    return torch.logit(probs, eps=1e-6)


# ----------------------------------------------------------------------------------------------------
# Proposal quality: recall of ground-truth segments (paper Table 8)

def best_proposals(masks: torch.Tensor, label: torch.Tensor) -> dict:
    """For each ground-truth segment of one image, the proposal (sigmoid > 0.5) with the highest IoU.

    Args:
        masks: (N, H, W) logits; label: (H, W) full labels (all classes). Ignored pixels are not counted.
    Returns:
        dict of (T,) tensors: ``classes``, ``iou`` (best IoU), ``index`` (that proposal), ``precision``
        (|S ∩ P| / |P|: how much of the proposal lies in the segment) and ``coverage`` (|S ∩ P| / |S|).
    """
    valid = label != IGNORE_INDEX
    classes, targets = semantic_targets(label)
    proposals = (masks.sigmoid() > 0.5)[:, valid].float()  # (N, P)
    targets = targets[:, valid]  # (T, P)
    intersection = targets @ proposals.T  # (T, N)
    areas = proposals.sum(1)  # (N,)
    union = targets.sum(1, keepdim=True) + areas[None] - intersection  # (T, N)
    iou, index = (intersection / union.clamp(min=1)).max(1)  # (T,), (T,)
    best = intersection.gather(1, index[:, None])[:, 0]  # (T,) |S ∩ P| of the best proposal
    return {"classes": classes, "iou": iou, "index": index, "precision": best / areas[index].clamp(min=1),
            "coverage": best / targets.sum(1).clamp(min=1)}


@torch.no_grad()
def proposal_recall(model: MaskProposalNetwork, dataset, class_names, seen_classes, thresholds=(0.3, 0.5),
                    batch_size: int = 16, refinement: Refinement | None = None) -> dict:
    """Recall@IoU of ground-truth segments (paper Table 8) over a dataset with full labels (ids into
    ``class_names``; ``seen_classes`` splits them).

    A segment (all pixels of one class in one image) is recalled at threshold t when some proposal
    reaches IoU >= t with it. ``refinement``: the proposals' post-process (None: the network's own masks).
    Returns {"all"|"seen"|"unseen": {"R@30": ..., "R@50": ...}, "segments": counts,
    "per_class": {class name: {"R@30": ..., "R@50": ..., "segments": n}}}.
    """
    seen_ids = {list(class_names).index(c) for c in seen_classes}
    best, is_seen, segment_classes = [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        image_raw = torch.stack([it["image_raw"] for it in items])
        masks = proposal_masks(model, image_raw.to(next(model.parameters()).device), refinement=refinement).cpu()  # (B, N, H, W)
        for image_masks, item in zip(masks, items):
            match = best_proposals(image_masks, item["label"])
            best.append(match["iou"])
            segment_classes.append(match["classes"])
            is_seen.append(torch.tensor([int(c) in seen_ids for c in match["classes"]], dtype=torch.bool))
    best, is_seen, segment_classes = torch.cat(best), torch.cat(is_seen), torch.cat(segment_classes)
    result = {}
    for name, keep in (("all", torch.ones_like(is_seen)), ("seen", is_seen), ("unseen", ~is_seen)):
        result[name] = {f"R@{round(100 * t)}": (best[keep] >= t).float().mean().item() for t in thresholds}
    result["segments"] = {"seen": int(is_seen.sum()), "unseen": int((~is_seen).sum())}
    result["per_class"] = {class_names[c]: {**{f"R@{round(100 * t)}": (best[segment_classes == c] >= t).float().mean().item()
                                                for t in thresholds}, "segments": int((segment_classes == c).sum())}
                           for c in segment_classes.unique().tolist()}
    return result


def format_recall(recall: dict) -> str:
    """:func:`proposal_recall`'s result as a table: all / seen / unseen segments by Recall@30 and Recall@50."""
    return format_table({split: recall[split] for split in ("all", "seen", "unseen")}, ("R@30", "R@50"), decimals=3)
