"""Patch severance (paper §4.1; DeOP's third_party/CLIP/clip/model.py): limit how much CLIP's patch tokens mix
in chosen ViT layers.

In a severed layer the block keeps its structure (``ln_1`` -> attention -> residual -> ``ln_2`` + MLP ->
residual, with CLIP's own V and output projections); only the attention weights change:

- **GPS** (Eq. 2): ``F_out = (α·E + (1 − α)·Attn) × F_in``. α = 0 is the unmodified layer, α = 1 cuts
  every interaction (in the last layer this is MaskCLIP's trick, its mmseg/models/backbones/vit.py).
- **MPS** (Eq. 1): the attention of token i comes from the proposal masks, ``M_i = Σ_j M_{j,i} · M_j``:
  tokens attend to tokens that fall in the same proposals. Eq. 1 is not normalised; we divide each row by
  its sum (``mps_norm="sum"``, the paper's idea), the official code takes a softmax without scale
  (``mps_norm="softmax"``). CLS belongs to every mask, as in the official code.
- **GPS with mask** (``"gps_mask"``, the official code's default, DeOP's third_party/CLIP/clip/model.py): identity
  attention with a per-token gain ``Σ_n σ(M_n)`` at the token's patch (N for CLS).

The training-free methods that came after DeOP change the same block in other ways (each as its official
code does it; s = 1/√d, attention per head):

- **MaskCLIP** (``"maskclip"``): identity attention with the residual and the FFN kept (its
  mmseg/models/backbones/vit.py: ``v += x; v = ffn(norm2(v), identity=v)``): exactly GPS at α = 1 in the last
  block. Dropping both as well (``gps`` with ``residual=False, ffn=False``) is ClearCLIP's ablation of it.
- **SCLIP** (``"sclip"``): correlative self-attention ``softmax(q qᵀ s) + softmax(k kᵀ s)`` (rows sum to 2),
  residual and FFN kept.
- **ClearCLIP** (``"clearclip"``): ``softmax(q qᵀ s)``, residual and FFN dropped.
- **NACLIP** (``"naclip"``): ``softmax(k kᵀ s + ω)``, ω[i, j] = exp(−|p_i − p_j|² / 2σ²) over the patch grid
  (σ = 5 patches; 0 for CLS and prompt tokens), residual and FFN dropped.

The strongest training-free methods of 2024–2025 stop asking CLIP *where*: the last block's attention comes from
a second, class-agnostic model (its features F_proxy, cosine similarity S = cos(F_proxy_i, F_proxy_j) between
patches), or from CLIP's own earlier blocks. Residual and FFN dropped in all three:

- **ProxyCLIP** (``"proxyclip"``, its open_clip/transformer.py ``custom_attn``): ``softmax(γ·(S − β·mean(S)))`` with
  the pairs below zero masked out, β = 1.2, γ = 3, one attention for all heads. Its proxy is DINO; here it is any
  features passed as ``proxy`` (the proposal network's pixel decoder, or CLIP's own early tokens). The official code
  upsamples CLIP's values to the proxy's grid; we resize the proxy to CLIP's grid.
- **CorrCLIP** (``"corrclip"``, its CorrCLIPv1/open_clip/transformer.py): ``softmax(τ·S)``, τ = 4, with attention
  allowed only between patches of the same class-agnostic mask (each patch in the mask that covers it most, if any
  covers half of it; a patch in no mask may attend wherever S exceeds its image's mean): DeOP's MPS (Eq. 1) with
  feature similarity inside the scope. The official code adds a spatial branch, per-mask class tokens and DBSCAN
  merging of its masks, which are left out; its per-mask vote is ``model.mask_vote``.
- **ResCLIP** (``"resclip"``, its clip/model.py): NACLIP's attention mixed with the mean q–k attention of CLIP's
  intermediate blocks (ViT-B/16's 6th to 9th, :func:`resclip_blocks`), ``(1 − λ)·A_NACLIP + λ·A_c``, λ = 0.5 (the
  paper's; the code tunes λ per dataset and scales the sum by τ = 2, which ``ln_post`` nearly cancels).

Every mode takes ``residual`` and ``ffn`` switches for the severed blocks (default: the mode's own), so that
e.g. ClearCLIP's ablation can be taken apart.

Every function takes one :class:`Severance` value: which blocks, in which mode, with which α, keeping what.

>>> Severance("gps", {-1: 1.0})           # the paper's GPS: the last block fully severed
Severance(mode='gps', alphas={-1: 1.0}, residual=None, ffn=None, mps_norm='sum')
>>> Severance().severs                     # the stock CLIP: nothing severed
False
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .checks import InputError
from .clip import embed_image, project_patches

MODES = ("gps", "mps", "gps_mask", "maskclip", "sclip", "clearclip", "naclip", "proxyclip", "corrclip", "resclip")
MASK_MODES = ("mps", "gps_mask", "corrclip")  # the modes that read the proposal masks
PROXY_MODES = ("proxyclip", "corrclip")  # the modes that read a proxy's features
KEEPS = {"gps": (True, True), "mps": (True, True), "gps_mask": (True, True), "maskclip": (True, True),
         "sclip": (True, True), "clearclip": (False, False), "naclip": (False, False), "proxyclip": (False, False),
         "corrclip": (False, False), "resclip": (False, False)}
"""(residual, FFN) that each mode keeps in a severed block, by default."""
NACLIP_STD = 5.0
"""σ of NACLIP's Gaussian neighbourhood, in patches (its official default)."""
MPS_NORMS = ("sum", "softmax")
PROXYCLIP_BETA, PROXYCLIP_GAMMA = 1.2, 3.0
"""ProxyCLIP's β and γ (its configs/base_config.py and segmentor defaults)."""
CORRCLIP_TAU = 4.0
"""CorrCLIP's temperature τ of the attention inside a mask (its CorrCLIPv1/open_clip/transformer.py, ``TAU``)."""
RESCLIP_LAMBDA = 0.5
"""ResCLIP's weight λ of the intermediate blocks' attention (the paper's value)."""


@dataclass(frozen=True)
class Severance:
    """How CLIP's ViT is severed: one value in place of loose arguments.

    Args:
        mode: one of :data:`MODES` (module docstring).
        alphas: {block index: α}; negative indices count from the end. α is read by "gps" only (the weight on the
            identity); the other modes replace the attention of those blocks entirely. Empty (the default): nothing
            is severed, the stock CLIP, whatever the mode.
        residual, ffn: keep the severed blocks' attention residual / FFN (None: what ``mode`` keeps, :data:`KEEPS`).
        mps_norm: "sum" (Eq. 1 row-normalised, the paper's idea) or "softmax" (the official code); "mps" only.
    """
    mode: str = "gps"
    alphas: dict[int, float] = field(default_factory=dict)
    residual: bool | None = None
    ffn: bool | None = None
    mps_norm: str = "sum"

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"severance mode must be one of {MODES}, got {self.mode!r}")
        if self.mps_norm not in MPS_NORMS:
            raise InputError(f"mps_norm must be one of {MPS_NORMS}, got {self.mps_norm!r}")
        if not isinstance(self.alphas, dict):
            raise InputError(f"alphas must be a dict {{block index: α}}, e.g. {{-1: 1.0}} for the last block, "
                             f"got {self.alphas!r}")
        for index, alpha in self.alphas.items():
            if not 0 <= alpha <= 1:
                raise InputError(f"α must lie in [0, 1] (the weight on the identity), got {alpha} for block {index}")

    @property
    def severs(self) -> bool:
        """Whether any block is severed (False: the stock CLIP)."""
        return bool(self.alphas)

    @property
    def reads_masks(self) -> bool:
        """Whether the severed blocks read the masks being classified ("mps", "gps_mask")."""
        return self.severs and self.mode in MASK_MODES

    @property
    def reads_proxy(self) -> bool:
        """Whether the severed blocks read a proxy's features ("proxyclip", "corrclip")."""
        return self.severs and self.mode in PROXY_MODES

    @property
    def keeps(self) -> tuple[bool, bool]:
        """(residual, FFN) that the severed blocks keep."""
        default = KEEPS[self.mode]
        return (default[0] if self.residual is None else self.residual, default[1] if self.ffn is None else self.ffn)

    def blocks(self, n_blocks: int) -> dict[int, float]:
        """{block index in 0..n_blocks-1: α} for a ViT of ``n_blocks`` blocks."""
        severed = {}
        for index, alpha in self.alphas.items():
            if not -n_blocks <= index < n_blocks:
                raise InputError(f"block index {index} is out of range for a ViT with {n_blocks} blocks")
            severed[index % n_blocks] = alpha
        return severed

    @classmethod
    def from_dict(cls, d: dict) -> Severance:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (int block indices restored)."""
        return cls(**{**d, "alphas": {int(k): float(v) for k, v in d["alphas"].items()}})


NONE = Severance()
"""Nothing severed: the stock CLIP."""
GPS_LAST = Severance("gps", {-1: 1.0})
"""GPS with α = 1 in the last block: MaskCLIP's trick, and the paper's patch severance in DeOP (Table 4's best)."""


def last_blocks_severed(k: int, blocks: int, mode: str = "gps") -> Severance:
    """α = 1 in the last ``k`` of ``blocks`` blocks (``NONE`` for k = 0)."""
    if not 0 <= k <= blocks:
        raise InputError(f"this CLIP has {blocks} blocks: sever between 0 and {blocks} of them, got {k}")
    return Severance(mode, {block: 1.0 for block in range(blocks - k, blocks)})


def qkv(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of a ``ResidualAttentionBlock`` for tokens x (B, L, W): each (B, heads, L, W/heads)."""
    attn = block.attn
    batch, length, width = x.shape
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # (B, L, W) each
    split = lambda t: t.reshape(batch, length, attn.num_heads, width // attn.num_heads).transpose(1, 2)
    return split(q), split(k), split(v)


def finish_block(block, x: torch.Tensor, mixed: torch.Tensor, residual: bool = True, ffn: bool = True) -> torch.Tensor:
    """Output projection, residual, then ``ln_2`` + MLP with residual: mixed (B, heads, L, d) -> (B, L, W).

    ``residual=False`` drops the skip connection around attention, ``ffn=False`` the MLP and its skip."""
    batch, heads, length, dim = mixed.shape
    out = block.ls_1(block.attn.out_proj(mixed.transpose(1, 2).reshape(batch, length, heads * dim)))  # (B, L, W)
    x = x + out if residual else out
    return x + block.ls_2(block.mlp(block.ln_2(x))) if ffn else x


def self_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attn = softmax(q kᵀ / √d): (B, heads, L, d) x 2 -> (B, heads, L, L)."""
    return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)


def self_correlation(t: torch.Tensor) -> torch.Tensor:
    """softmax(t tᵀ / √d): (B, heads, L, d) -> (B, heads, L, L), for t = q (ClearCLIP, SCLIP) or k (SCLIP, NACLIP)."""
    return self_attention(t, t)


def gaussian_neighbourhood(grid: tuple[int, int], std: float = NACLIP_STD, extra: int = 0) -> torch.Tensor:
    """NACLIP's ω: (L, L), L = 1 + extra + h*w; ω[i, j] = exp(−|p_i − p_j|² / 2σ²) for patches i, j at grid
    positions p (row, column), 0 in the rows and columns of CLS and the ``extra`` prompt tokens."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], -1).float()  # (h*w, 2)
    omega = torch.exp(-torch.cdist(positions, positions).square() / (2 * std ** 2))  # (h*w, h*w)
    return F.pad(omega, (1 + extra, 0, 1 + extra, 0))  # (L, L)


def gps_block(block, x: torch.Tensor, alpha: float, residual: bool = True, ffn: bool = True) -> torch.Tensor:
    """One block with GPS: (α·E + (1 − α)·Attn) × V. α = 0 (with residual and FFN) returns the stock block's
    output exactly."""
    if alpha == 0 and residual and ffn:
        return block(x)
    q, k, v = qkv(block, x)
    mixed = alpha * v if alpha == 1 else alpha * v + (1 - alpha) * self_attention(q, k) @ v  # (B, heads, L, d)
    return finish_block(block, x, mixed, residual, ffn)


def token_memberships(mask_probs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Each token's membership in each mask: (B, N, H', W') probabilities -> (B, 1 + h*w, N), CLS row all ones.

    Masks are area-resized to the patch grid; their aspect ratio must match the grid's.
    """
    height, width = mask_probs.shape[-2:]
    if mask_probs.ndim != 4 or abs(height / width - grid[0] / grid[1]) > 1e-6 or height < grid[0]:
        raise InputError(f"masks of shape {tuple(mask_probs.shape)} cannot be matched to the {grid[0]}x{grid[1]} patch "
                         f"grid: pass (B, N, H, W) masks at the image's resolution (or any multiple of the grid)")
    m = F.interpolate(mask_probs, size=grid, mode="area").flatten(2).transpose(1, 2)  # (B, h*w, N)
    return torch.cat([torch.ones_like(m[:, :1]), m], dim=1)  # (B, 1 + h*w, N)


def mps_attention(memberships: torch.Tensor, norm: str = "sum") -> torch.Tensor:
    """Eq. 1, A[i, k] = Σ_j M_{j,i} M_{j,k}, row-normalised ("sum") or softmaxed ("softmax", the code's choice).

    memberships: (B, L, N) -> (B, L, L).
    """
    if norm not in MPS_NORMS:
        raise InputError(f"mps_norm must be one of {MPS_NORMS}, got {norm!r}")
    affinity = memberships @ memberships.transpose(1, 2)  # (B, L, L)
    return affinity.softmax(-1) if norm == "softmax" else affinity / affinity.sum(-1, keepdim=True).clamp(min=1e-6)


def resclip_blocks(n_blocks: int) -> range:
    """The intermediate blocks whose attention ResCLIP averages: ViT-B/16's 6th to 9th of 12 (indices 5 to 8), the
    same share of any depth (the toy CLIP's third of 4)."""
    return range(round(5 * n_blocks / 12), round(9 * n_blocks / 12))


def proxy_similarity(proxy: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """S[i, j] = cos(F_i, F_j) between the patches of a proxy's features F (B, C, h', w') resized to the patch grid
    (area when shrinking, bilinear when growing): (B, h*w, h*w)."""
    shrink = proxy.shape[-2] >= grid[0] and proxy.shape[-1] >= grid[1]
    feats = F.interpolate(proxy, size=grid, mode="area") if shrink else \
        F.interpolate(proxy, size=grid, mode="bilinear", align_corners=False)  # (B, C, h, w)
    feats = F.normalize(feats.flatten(2), dim=1)  # (B, C, h*w), unit norm per patch
    return feats.transpose(1, 2) @ feats  # (B, h*w, h*w)


def proxyclip_attention(similarity: torch.Tensor) -> torch.Tensor:
    """ProxyCLIP: softmax_j(γ·(S − β·mean(S))), the pairs below zero masked out: (B, P, P) -> (B, P, P)."""
    logits = PROXYCLIP_GAMMA * (similarity - PROXYCLIP_BETA * similarity.mean((-2, -1), keepdim=True))  # (B, P, P)
    return logits.masked_fill(logits < 0, float("-inf")).softmax(-1)


def mask_regions(memberships: torch.Tensor) -> torch.Tensor:
    """Each patch's mask, from :func:`token_memberships` (B, 1 + h*w, N): (B, h*w) ids, n + 1 for the mask that covers
    most of the patch if it covers at least half of it, else 0 (in no mask)."""
    best, index = memberships[:, 1:].max(-1)  # (B, h*w) each, CLS dropped
    return torch.where(best >= 0.5, index + 1, torch.zeros_like(index))


def corrclip_attention(similarity: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """CorrCLIP: softmax_j(τ·S) over the patches j of i's own mask; a pair with a patch in no mask is allowed where
    S exceeds the image's mean. similarity (B, P, P), regions (B, P) from :func:`mask_regions` -> (B, P, P)."""
    same = (regions[:, :, None] == regions[:, None, :]) & (regions[:, :, None] > 0)  # (B, P, P)
    unmasked = (regions[:, :, None] == 0) | (regions[:, None, :] == 0)  # (B, P, P)
    allowed = same | (unmasked & (similarity > similarity.mean((-2, -1), keepdim=True)))
    return (CORRCLIP_TAU * similarity).masked_fill(~allowed, float("-inf")).softmax(-1)


def _with_prefix(patch_attention: torch.Tensor, first: int) -> torch.Tensor:
    """Patch-to-patch attention (B, P, P) as the attention of a block's L = first + P tokens (B, 1, L, L): CLS and the
    prompt tokens before the patches attend to themselves only, and no patch attends to them."""
    batch, patches, _ = patch_attention.shape
    full = torch.zeros(batch, first + patches, first + patches, dtype=patch_attention.dtype,
                       device=patch_attention.device)
    full[:, :first, :first] = torch.eye(first, dtype=patch_attention.dtype, device=patch_attention.device)
    full[:, first:, first:] = patch_attention
    return full[:, None]  # one attention for all heads


class _Severed:
    """Runs a ViT's blocks under a :class:`Severance` (shared by features, attention maps and rollouts)."""

    def __init__(self, visual, image: torch.Tensor, severance: Severance, mask_probs: torch.Tensor | None = None,
                 prompts=None, proxy: torch.Tensor | None = None):
        if severance.reads_masks and mask_probs is None:
            raise InputError(f"mode {severance.mode!r} needs mask_probs (B, N, H, W): proposal or ground-truth masks")
        if severance.reads_proxy and proxy is None:
            raise InputError(f"mode {severance.mode!r} needs proxy features (B, C, h, w), e.g. the proposal network's "
                             f"(proposals.MaskProposalNetwork.pixel_features) or CLIP's own (clip_block_features)")
        self.visual, self.severance, self.prompts = visual, severance, prompts
        self.residual, self.ffn = severance.keeps
        self.blocks = visual.transformer.resblocks
        self.severed = severance.blocks(len(self.blocks))
        self.tokens, self.grid = embed_image(visual, image, prompts)  # (B, 1 + h*w, W)
        self.memberships = (token_memberships(mask_probs.to(self.tokens.dtype), self.grid) if severance.reads_masks
                            else None)  # (B, 1 + h*w, N)
        self.similarity = proxy_similarity(proxy.to(self.tokens.dtype), self.grid) if severance.reads_proxy else None
        self.regions = mask_regions(self.memberships) if severance.mode == "corrclip" and severance.severs \
            else None  # (B, h*w)
        self.block_inputs: dict[int, torch.Tensor] = {}  # filled by run(): what each block received

    def _extra(self, index: int) -> int:
        """Prepended prompt tokens (after CLS) in the stream entering block ``index``."""
        return 0 if self.prompts is None else self.prompts.num_prepended(index)

    def _memberships(self, index: int) -> torch.Tensor:
        """(B, L, N) memberships of the tokens entering block ``index``: prompt tokens, like CLS, in every mask."""
        extra, m = self._extra(index), self.memberships
        return m if not extra else torch.cat([m[:, :1], m[:, :1].expand(-1, extra, -1), m[:, 1:]], dim=1)

    def run(self, stop: int | None = None) -> torch.Tensor:
        """Tokens (B, 1 + h*w, W) after the blocks before ``stop`` (default: all of them), prompts stripped."""
        tokens = self.tokens
        for index, block in enumerate(self.blocks[:stop]):
            if self.prompts is not None:
                tokens = self.prompts.at_block(index, tokens, self.grid)  # (B, L, W)
            self.block_inputs[index] = tokens
            if index not in self.severed:
                tokens = block(tokens)
            elif self.severance.mode == "gps":
                tokens = gps_block(block, tokens, self.severed[index], self.residual, self.ffn)
            else:
                q, k, v = qkv(block, tokens)  # (B, heads, L, d)
                if self.severance.mode == "maskclip":
                    mixed = v  # identity attention
                elif self.severance.mode == "gps_mask":  # identity attention, gain Σ_n σ(M_n) per token (N for CLS)
                    mixed = self._memberships(index).sum(-1)[:, None, :, None] * v
                else:
                    mixed = self._attention(index, q, k) @ v  # (B, heads, L, d)
                tokens = finish_block(block, tokens, mixed, self.residual, self.ffn)
        return tokens if self.prompts is None else self.prompts.strip(tokens)

    def _attention(self, index: int, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The attention a severed block ``index`` applies to V: (B, heads or 1, L, L)."""
        eye = torch.eye(q.shape[-2], dtype=q.dtype, device=q.device)
        if self.severance.mode == "gps":
            alpha = self.severed[index]
            return alpha * eye + (1 - alpha) * self_attention(q, k)
        if self.severance.mode == "mps":
            return mps_attention(self._memberships(index), self.severance.mps_norm)[:, None]  # one attention for all heads
        if self.severance.mode == "gps_mask":
            return eye * self._memberships(index).sum(-1)[:, None, :, None]
        if self.severance.mode == "maskclip":
            return eye.expand(*q.shape[:2], -1, -1)
        if self.severance.mode == "sclip":
            return self_correlation(q) + self_correlation(k)
        if self.severance.mode == "clearclip":
            return self_correlation(q)
        if self.severance.mode == "proxyclip":
            return _with_prefix(proxyclip_attention(self.similarity), 1 + self._extra(index))
        if self.severance.mode == "corrclip":
            return _with_prefix(corrclip_attention(self.similarity, self.regions), 1 + self._extra(index))
        omega = gaussian_neighbourhood(self.grid, NACLIP_STD, self._extra(index)).to(q)  # (L, L)
        naclip = (k @ k.transpose(-1, -2) * k.shape[-1] ** -0.5 + omega).softmax(-1)  # (B, heads, L, L)
        if self.severance.mode == "naclip":
            return naclip
        intermediate = [self_attention(*qkv(self.blocks[i], self.block_inputs[i])[:2])  # resclip: (B, heads, L, L)
                        for i in resclip_blocks(len(self.blocks))]
        return (1 - RESCLIP_LAMBDA) * naclip + RESCLIP_LAMBDA * torch.stack(intermediate).mean(0)

    def patch_attention(self, layer: int) -> torch.Tensor:
        """The effective patch-to-patch attention of ``layer``, averaged over heads: (B, h*w, h*w)."""
        index = Severance(alphas={layer: 0.0}).blocks(len(self.blocks)).popitem()[0]
        if index not in self.block_inputs:
            self.run(stop=index + 1)
        q, k, _ = qkv(self.blocks[index], self.block_inputs[index])
        attn = (self._attention(index, q, k) if index in self.severed else self_attention(q, k)).mean(1)  # (B, L, L)
        first = 1 + self._extra(index)
        return attn[:, first:, first:]  # (B, h*w, h*w)


def severed_features_and_rollout(visual, image: torch.Tensor, severance: Severance = NONE,
                                 mask_probs: torch.Tensor | None = None,
                                 proxy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`severed_dense_features` and where each patch's output comes from, over *all* blocks (attention
    rollout, Abnar & Zuidema 2020): with A_l the patch-to-patch attention of block l (heads averaged, CLS and
    prompt tokens dropped, rows renormalised to 1) and the residual counted as half,

        R = M_{L-1} ⋯ M_1 M_0,   M_l = ½(I + A_l)   (M_l = A_l where a severed block drops its residual).

    Row i of R is how much of patch i's output each patch's input feeds. With every block severed at α = 1 it
    is the identity: no patch sees another. Returns F_V (B, D, h, w) and R (B, h, w, h, w)."""
    run = _Severed(visual, image, severance, mask_probs, proxy=proxy)
    dense_feats = project_patches(visual, run.run(), run.grid)  # (B, D, h, w)
    rollout = None
    for index in range(len(run.blocks)):
        attn = run.patch_attention(index)  # (B, h*w, h*w)
        attn = attn / attn.sum(-1, keepdim=True).clamp(min=1e-12)  # rows to 1 (CLS's share dropped; SCLIP's 2)
        if index not in run.severed or run.residual:
            attn = 0.5 * (torch.eye(attn.shape[-1], dtype=attn.dtype) + attn)  # (B, h*w, h*w)
        rollout = attn if rollout is None else attn @ rollout  # (B, h*w, h*w)
    return dense_feats, rollout.reshape(rollout.shape[0], *run.grid, *run.grid)


def severed_dense_features(visual, image: torch.Tensor, severance: Severance = NONE,
                           mask_probs: torch.Tensor | None = None, prompts=None,
                           proxy: torch.Tensor | None = None) -> torch.Tensor:
    """Dense CLIP features F_V (B, D, h, w) under ``severance``.

    Args:
        visual: an open_clip ``VisionTransformer`` (toy or real, any grid).
        image: (B, 3, H, W) normalised pixels.
        severance: a :class:`Severance` (default ``NONE``: the stock CLIP).
        mask_probs: (B, N, H', W') proposal probabilities σ(M) (or ground-truth masks); read by "mps" and
            "gps_mask".
        prompts: optional ``deop_lite.prompts.VisualPrompts`` (added or prepended); prompt tokens count as
            members of every mask, like CLS.
        proxy: (B, C, h', w') features of a second model, read by "proxyclip" and "corrclip".
    """
    run = _Severed(visual, image, severance, mask_probs, prompts, proxy)
    return project_patches(visual, run.run(), run.grid)


@torch.no_grad()
def clip_block_features(visual, image: torch.Tensor, blocks: int) -> torch.Tensor:
    """CLIP's own patch tokens after its first ``blocks`` blocks, unmodified: (B, W, h, w), a proxy for ProxyCLIP or
    CorrCLIP that needs no second model."""
    run = _Severed(visual, image, NONE)
    tokens = run.run(stop=blocks)[:, 1:]  # (B, h*w, W)
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *run.grid)


def severed_image_embedding(visual, image: torch.Tensor, severance: Severance) -> torch.Tensor:
    """The image embedding (B, D), not normalised, of a CLIP under ``severance`` (a mode that reads no masks):
    pooled as the model pools (``visual.pool_type``: the mean of the patch tokens, or CLS), then ``ln_post`` and
    ``proj`` in open_clip's order. With nothing severed it equals ``visual(image)``. Differentiable."""
    tokens = visual.ln_post(_Severed(visual, image, severance).run())  # (B, 1 + h*w, W)
    pooled = tokens[:, 1:].mean(1) if visual.pool_type == "avg" else tokens[:, 0]  # (B, W)
    return pooled @ visual.proj  # (B, D)


@torch.no_grad()
def severed_features_and_attention(visual, image: torch.Tensor, severance: Severance = NONE,
                                   mask_probs: torch.Tensor | None = None, layer: int = -1, prompts=None,
                                   proxy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both :func:`severed_dense_features` and :func:`patch_attention` of ``layer`` from one pass of the ViT."""
    run = _Severed(visual, image, severance, mask_probs, prompts, proxy)
    dense_feats = project_patches(visual, run.run(), run.grid)  # (B, D, h, w)
    attn = run.patch_attention(layer)  # (B, h*w, h*w): block inputs are cached, no second pass
    return dense_feats, attn.reshape(attn.shape[0], *run.grid, *run.grid)


@torch.no_grad()
def patch_attention(visual, image: torch.Tensor, layer: int = -1, severance: Severance = NONE,
                    mask_probs: torch.Tensor | None = None, prompts=None, proxy: torch.Tensor | None = None) -> torch.Tensor:
    """How much each patch attends to every other patch in ``layer`` (paper Fig. 5), under ``severance``
    (default ``NONE``: the stock CLIP).

    Returns (B, h, w, h, w): [b, i, j] is the attention map of the patch at row i, column j over the patch grid,
    averaged over heads (the share that goes to CLS dropped; SCLIP's rows sum to 2 before that, as its two
    softmaxes are added).
    """
    run = _Severed(visual, image, severance, mask_probs, prompts, proxy)
    attn = run.patch_attention(layer)  # (B, h*w, h*w)
    return attn.reshape(attn.shape[0], *run.grid, *run.grid)


def attention_in_segment(attention: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """The share of each patch's attention (to patches) that stays inside its own segment.

    Args:
        attention: (B, h, w, h, w) from :func:`patch_attention`.
        segments: (B, h, w) int segment (or class) id of each patch.
    Returns:
        (B, h, w) fractions in [0, 1].
    """
    batch, h, w = segments.shape
    attn = attention.reshape(batch, h * w, h * w)
    same = segments.reshape(batch, -1, 1) == segments.reshape(batch, 1, -1)  # (B, hw, hw)
    return ((attn * same).sum(-1) / attn.sum(-1).clamp(min=1e-12)).reshape(batch, h, w)
