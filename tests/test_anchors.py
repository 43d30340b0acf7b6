import pytest
import torch
import torch.nn.functional as F

from deop_lite.anchors import AnchorConfig, ConvHeatmapDecoder, QueryHeatmapDecoder, masks_on_grid
from deop_lite.model import DeOP, DeOPConfig
from deop_lite.proposals import MaskProposalNetwork, ProposalStage
from deop_lite.transformer import sine_position_encoding


def _inputs(batch=2, dim=32, n=3, grid=4):
    torch.manual_seed(0)
    dense_feats = F.normalize(torch.randn(batch, dim, grid, grid), dim=1)  # (B, D, h, w)
    masks = torch.zeros(batch, n, 4 * grid, 4 * grid)  # (B, N, H, W)
    masks[:, 0, :8] = 1  # the top half
    masks[:, 1, 8:, :8] = 1  # the bottom-left quarter
    masks[:, 2] = 0.5  # a soft mask everywhere
    return dense_feats, masks


def test_query_heatmaps_follow_equation_3():
    dense_feats, masks = _inputs()
    decoder = QueryHeatmapDecoder(32, 3, AnchorConfig("query", layers=0, heads=4)).eval()
    segment_emb, heatmaps = decoder(dense_feats, masks)
    assert segment_emb.shape == (2, 3, 32) and heatmaps.shape == (2, 3, 4, 4)
    assert torch.allclose(segment_emb.norm(dim=-1), torch.ones(2, 3))
    # Eq. 3 by hand (K = 0: the output layer alone), head by head.
    memory = dense_feats.flatten(2).transpose(1, 2)  # (B, hw, D)
    pos = sine_position_encoding(4, 4, 32)[None]
    query_pos = decoder.query_pos.weight[None].expand(2, -1, -1)
    queries = decoder.out_norm(decoder.out_self_attn(query_pos, query_pos, torch.zeros_like(query_pos))[0])
    q = decoder.q_proj(queries + query_pos).view(2, 3, 4, 8).transpose(1, 2)  # (B, heads, N, d)
    k = decoder.k_proj(memory + pos).view(2, 16, 4, 8).transpose(1, 2)  # (B, heads, hw, d)
    H = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1) * masks_on_grid(masks, (4, 4)).flatten(2)[:, None]
    pooled = (H @ memory.view(2, 16, 4, 8).transpose(1, 2)).transpose(1, 2).reshape(2, 3, 32)
    assert torch.allclose(segment_emb, F.normalize(pooled, dim=-1), atol=1e-5)
    assert torch.allclose(heatmaps, H.mean(1).view(2, 3, 4, 4), atol=1e-6)
    assert heatmaps[:, 0, 2:].abs().max() == 0 and heatmaps[:, 1, :2].abs().max() == 0  # zero outside the mask


def test_conv_heatmaps_are_distributions():
    dense_feats, masks = _inputs()
    decoder = ConvHeatmapDecoder(32, AnchorConfig("conv", layers=2, conv_channels=8)).eval()
    segment_emb, heatmaps = decoder(dense_feats, masks)
    assert segment_emb.shape == (2, 3, 32) and torch.allclose(heatmaps.flatten(2).sum(-1), torch.ones(2, 3))


def test_anchor_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        AnchorConfig("heatmap")
    dense_feats, masks = _inputs()
    with pytest.raises(ValueError, match="3 masks but 5 anchor queries"):
        QueryHeatmapDecoder(32, 5, AnchorConfig("query"))(dense_feats, masks)


@pytest.mark.parametrize("kind", ["query", "conv"])
def test_deop_with_anchors(toy_clip, kind):
    proposals = MaskProposalNetwork(ProposalStage.tiny().model)
    model = DeOP(proposals, toy_clip, DeOPConfig(anchors=AnchorConfig(kind), severance={-1: 1.0}, void=True))
    out = model.predict(torch.rand(2, 3, 64, 64), ["sky", "ladybird", "grass"])
    assert out["label"].shape == (2, 64, 64) and out["logits"].shape == (2, 8, 4)
    assert out["heatmaps"].shape == (2, 8, 8, 8)
