"""Transformer pieces shared by the mask proposal network's decoder (``deop_lite.proposals``) and CAL's anchor
decoder (``deop_lite.anchors``): DETR's sine position encoding and its post-norm decoder layer."""
from __future__ import annotations

import math

import torch
from torch import nn


def sine_position_encoding(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding, (height * width, dim): half the channels for y, half for x."""
    quarter = dim // 4
    freqs = 10000 ** (-torch.arange(quarter, device=device) / quarter)  # (dim/4,)
    ys = (torch.arange(height, device=device) + 0.5) / height * 2 * math.pi  # (h,)
    xs = (torch.arange(width, device=device) + 0.5) / width * 2 * math.pi  # (w,)
    ey = torch.cat([(ys[:, None] * freqs).sin(), (ys[:, None] * freqs).cos()], 1)  # (h, dim/2)
    ex = torch.cat([(xs[:, None] * freqs).sin(), (xs[:, None] * freqs).cos()], 1)  # (w, dim/2)
    return torch.cat([ey[:, None].expand(-1, width, -1), ex[None].expand(height, -1, -1)], -1).flatten(0, 1)


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: self-attention among queries, cross-attention to the image, FFN;
    query and image positions are added to queries and keys in every layer."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, queries, query_pos, memory, memory_pos, blocked=None):
        """queries, query_pos (B, N, d); memory, memory_pos (B, HW, d); optional ``blocked`` (B * heads, N, HW),
        True where a query may not look (Mask2Former's masked attention) -> (B, N, d)."""
        q = queries + query_pos
        queries = self.norms[0](queries + self.self_attn(q, q, queries, need_weights=False)[0])
        attended = self.cross_attn(queries + query_pos, memory + memory_pos, memory, attn_mask=blocked,
                                   need_weights=False)[0]
        queries = self.norms[1](queries + attended)
        return self.norms[2](queries + self.ffn(queries))
