"""Classification anchor learning (CAL; paper §4.2, DeOP's mask_former/zero_shot_clipfeat_upsample_vit16_query2D_maskvit.py):
learn *where* to pool CLIP's patch features for each proposal, instead of averaging everything under the mask.

Query-based heatmap decoder (Eq. 3; the released one): N anchor queries, tied one-to-one to the N
proposals, attend to the dense CLIP features F_V through K standard decoder layers; then the heatmap
output layer

    H = softmax(q × F_Vᵀ / √d) ⊙ M                    (B, heads, N, hw)

with learned projections of q and F_V (per head), the mask applied *after* the softmax and nothing
re-normalised, as the official code does. Heatmap-based pooling reads the raw CLIP features (no value or
output projection), head by head: F_I = H ⊙ F_V, then L2-normalised.

Conv-based decoder (Eq. 4): each mask applied to F_V, K conv-BN-ReLU layers (3 x 3), a final conv to one
channel, a softmax over positions. Its official source was never published (DeOP ships only the bytecode
mask_former/__pycache__/zero_shot_clipfeat_upsample_vit16_query2D_maskvit_convdecoder.cpython-37.pyc): this is
built from the paper's text.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from .checks import InputError
from .transformer import DecoderLayer, sine_position_encoding

KINDS = ("none", "query", "conv")


@dataclass
class AnchorConfig:
    """CAL's decoder: ``kind`` "none" (mask-based pooling), "query" (Eq. 3) or "conv" (Eq. 4); K ``layers``."""
    kind: str = "none"
    layers: int = 1  # K: the official scripts use 1 (DeOP's scripts/deop_train.sh; paper Table 5)
    heads: int = 4  # 8 for real CLIP
    ffn_dim: int = 256  # 1024 for real CLIP
    dropout: float = 0.0  # 0.1 in the official code
    conv_channels: int = 64  # 512 in the paper

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"anchor decoder kind must be one of {KINDS}, got {self.kind!r}")


def masks_on_grid(mask_probs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """σ(M) (B, N, H, W) -> the share of each patch that each mask covers, (B, N, h, w)."""
    return F.interpolate(mask_probs, size=tuple(grid), mode="area")


class QueryHeatmapDecoder(nn.Module):
    """Eq. 3: K decoder layers over F_V, then the heatmap output layer; returns (F_I, H).

    Args:
        dim: D, the CLIP embedding width (d_model of the decoder).
        num_queries: N, as many as the proposal network has (query i belongs to proposal i).
    """

    def __init__(self, dim: int, num_queries: int, config: AnchorConfig):
        super().__init__()
        if dim % config.heads:
            raise ValueError(f"the CLIP width {dim} must be divisible by the number of heads {config.heads}")
        self.heads = config.heads
        self.query_pos = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, config.heads, config.ffn_dim, config.dropout)
                                    for _ in range(config.layers))
        self.out_self_attn = nn.MultiheadAttention(dim, config.heads, dropout=config.dropout, batch_first=True)
        self.out_norm = nn.LayerNorm(dim)
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_dropout = nn.Dropout(config.dropout)
        for proj in (self.q_proj, self.k_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, dense_feats: torch.Tensor, mask_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dense_feats F_V (B, D, h, w) unit norm; mask_probs σ(M) (B, N, H, W) ->
        segment embeddings F_I (B, N, D) unit norm, heatmaps H (B, N, h, w) averaged over heads."""
        batch, dim, h, w = dense_feats.shape
        if mask_probs.shape[1] != self.query_pos.num_embeddings:
            raise InputError(f"{mask_probs.shape[1]} masks but {self.query_pos.num_embeddings} anchor queries: "
                             f"the decoder must be built for the proposal network's number of queries")
        memory = dense_feats.flatten(2).transpose(1, 2)  # (B, hw, D)
        memory_pos = sine_position_encoding(h, w, dim, dense_feats.device)[None]  # (1, hw, D)
        query_pos = self.query_pos.weight[None].expand(batch, -1, -1)  # (B, N, D)
        queries = torch.zeros_like(query_pos)  # content starts at zero (DETR)
        for layer in self.layers:
            queries = layer(queries, query_pos, memory, memory_pos)  # (B, N, D)
        # Heatmap output layer: self-attention among the anchors, then Eq. 3.
        q = queries + query_pos
        queries = self.out_norm(queries + self.out_self_attn(q, q, queries, need_weights=False)[0])  # (B, N, D)
        split = lambda t: t.reshape(batch, t.shape[1], self.heads, dim // self.heads).transpose(1, 2)  # (B, heads, L, D/heads)
        q = split(self.q_proj(queries + query_pos))  # (B, heads, N, d)
        k = split(self.k_proj(memory + memory_pos))  # (B, heads, hw, d)
        attn = self.attn_dropout((q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1))  # (B, heads, N, hw)
        heatmaps = attn * masks_on_grid(mask_probs, (h, w)).flatten(2)[:, None]  # H: (B, heads, N, hw)
        pooled = heatmaps @ split(memory)  # (B, heads, N, d): raw CLIP features as values
        segment_emb = pooled.transpose(1, 2).reshape(batch, -1, dim)  # (B, N, D)
        return F.normalize(segment_emb, dim=-1, eps=1e-6), heatmaps.mean(1).reshape(batch, -1, h, w)


class ConvHeatmapDecoder(nn.Module):
    """Eq. 4: H = softmax(conv(CBR_K(… CBR_1(F_V * M)))) over positions; returns (F_I, H)."""

    def __init__(self, dim: int, config: AnchorConfig):
        super().__init__()
        channels = [dim] + [config.conv_channels] * config.layers
        self.cbr = nn.Sequential(*(Conv2dNormActivation(c_in, c_out, 3) for c_in, c_out in zip(channels, channels[1:])))
        self.to_heatmap = nn.Conv2d(channels[-1], 1, 3, padding=1)

    def forward(self, dense_feats: torch.Tensor, mask_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, dim, h, w = dense_feats.shape
        masks = masks_on_grid(mask_probs, (h, w))  # (B, N, h, w)
        weighted = torch.einsum("bnhw,bdhw->bndhw", masks, dense_feats).flatten(0, 1)  # F_V * M: (B*N, D, h, w)
        logits = self.to_heatmap(self.cbr(weighted)).reshape(batch, -1, h * w)  # (B, N, hw)
        heatmaps = logits.softmax(-1).reshape(batch, -1, h, w)  # H: (B, N, h, w), each sums to 1
        segment_emb = torch.einsum("bnhw,bdhw->bnd", heatmaps, dense_feats)  # F_I = H ⊙ F_V pooled: (B, N, D)
        return F.normalize(segment_emb, dim=-1, eps=1e-6), heatmaps


def build_anchor_decoder(config: AnchorConfig, dim: int, num_queries: int | None) -> nn.Module | None:
    """The decoder that ``config`` asks for, or None for plain mask-based pooling (``num_queries``: N, needed by the
    query-based decoder, which has one anchor query per mask)."""
    if config.kind == "query" and num_queries is None:
        raise InputError("the query-based anchor decoder (CAL) has one query per mask: pass num_queries, the proposal "
                         "network's N")
    if config.kind == "query":
        return QueryHeatmapDecoder(dim, num_queries, config)
    return ConvHeatmapDecoder(dim, config) if config.kind == "conv" else None
