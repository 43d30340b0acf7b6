import pytest
import torch
import torch.nn.functional as F

from deop_lite.anchors import AnchorConfig, ConvHeatmapDecoder, QueryHeatmapDecoder, masks_on_grid
from deop_lite.model import DeOP, DeOPConfig, MaskClassifier
from deop_lite.proposals import MaskProposalNetwork
from deop_lite.severance import GPS_LAST
from deop_lite.stages import ProposalStage
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


def test_conv_heatmaps_follow_equation_4():
    """H = softmax over positions of conv(CBR_K(… CBR_1(F_V * M))), F_I = Σ_x H(x) F_V(x), by hand per mask."""
    dense_feats, masks = _inputs()
    decoder = ConvHeatmapDecoder(32, AnchorConfig("conv", layers=2, conv_channels=8)).eval()
    segment_emb, heatmaps = decoder(dense_feats, masks)
    for b in range(2):
        for n in range(3):
            weighted = dense_feats[b:b + 1] * masks_on_grid(masks, (4, 4))[b:b + 1, n:n + 1]  # (1, D, 4, 4)
            h = decoder.to_heatmap(decoder.cbr(weighted)).flatten().softmax(0).view(4, 4)  # (4, 4)
            assert torch.allclose(heatmaps[b, n], h, atol=1e-6)
            assert torch.allclose(segment_emb[b, n], F.normalize((h * dense_feats[b]).sum((1, 2)), dim=0), atol=1e-5)


def test_anchor_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        AnchorConfig("heatmap")
    dense_feats, masks = _inputs()
    with pytest.raises(ValueError, match="3 masks but 5 anchor queries"):
        QueryHeatmapDecoder(32, 5, AnchorConfig("query"))(dense_feats, masks)


@pytest.mark.parametrize("kind", ["query", "conv"])
def test_deop_with_anchors(toy_clip, kind):
    proposals = MaskProposalNetwork(ProposalStage.tiny().model)
    classifier = MaskClassifier(toy_clip, DeOPConfig(anchors=AnchorConfig(kind), severance=GPS_LAST, void=True), 8)
    out = DeOP(proposals, classifier).predict(torch.rand(2, 3, 64, 64), ["sky", "ladybird", "grass"])
    assert out["label"].shape == (2, 64, 64) and out["logits"].shape == (2, 8, 4)
    assert out["heatmaps"].shape == (2, 8, 8, 8)
