import json

import torch

from deop_lite.bench import BenchConfig, count_flops, plot, run_bench, synthetic_masks


def test_flops_count_attention_too(vit_b16):
    """ViT-B/16 at 224: 17.6 G multiply-adds, i.e. 35.1 GFLOPs, fused attention included."""
    with torch.no_grad():
        flops = count_flops(lambda: vit_b16.encode_image(torch.rand(1, 3, 224, 224)))
    assert abs(flops / 1e9 - 35.13) < 0.05


def test_synthetic_masks_have_exactly_n_valid():
    masks = synthetic_masks(16, 5, 64)
    assert masks.shape == (1, 16, 64, 64) and int((masks > 0.5).flatten(2).any(-1).sum()) == 5


def test_tiny_bench_runs_and_reports(tmp_path):
    config = BenchConfig.tiny()
    config.valid, config.warmup, config.repeats = (2, 16), 0, 1
    result = run_bench(config, progress=False)
    json.dumps(result)  # JSON-ready
    low, high = result["rows"]
    assert high["flop_ratio"] > low["flop_ratio"]  # multi-pass work grows with N', DeOP's does not
    assert high["multipass"]["flops"] > low["multipass"]["flops"] and high["deop"]["flops"] == low["deop"]["flops"]
    assert set(high["deop"]["seconds"]) == {"clip_pass", "anchors", "classify", "pooling_and_rest", "proposals", "total"}
    plot(result).savefig(tmp_path / "bench.png")
