import json

import torch

from deop_lite.bench import (
    BenchConfig,
    count_flops,
    explorer_latency,
    main,
    plot,
    run_bench,
    synthetic_masks,
    toyworld_throughput,
)


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


def test_reader_benchmarks_report_their_figures(capsys):
    """The toy world's drawing speed and the explorer's redraw time are measured here, not asserted."""
    world = toyworld_throughput(scenes=20, rounds=2)
    assert world["scenes_per_s"] >= world["median_scenes_per_s"] > 0
    explorer = explorer_latency(redraws=3)
    assert explorer["redraws"] == 3 and explorer["max_s"] >= explorer["median_s"] > 0
    main(["toyworld"])
    assert "scenes/s at 64 px on one thread" in capsys.readouterr().out
