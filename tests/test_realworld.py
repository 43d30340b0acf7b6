"""The real-world path: presets, gradient accumulation, torchrun with two CPU processes (gloo) against one,
resuming on another number of processes, and evaluation to JSON.

Models here are small but real: a random-initialised open_clip ViT-B/32 (the ViT-B/16 text tower, a
cheaper image tower), a ResNet-18 MaskFormer, 64 px crops of the VOC fixture."""
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch
from safetensors.torch import load_file

from deop_lite import runtime
from deop_lite.anchors import AnchorConfig
from deop_lite.model import GPS, DeOPConfig
from deop_lite.prompts import PromptConfig
from deop_lite.realworld import PRESETS, RealConfig, StageConfig, build_deop, evaluate, prepare_fixture, preset, train
from deop_lite.train import TrainConfig, read_log


def small_config() -> RealConfig:
    """Deterministic (no dropout) and quick: fixed text prompts, so no text-encoder backward."""
    steps = dict(steps=4, lr=1e-3, warmup_steps=0, schedule="poly", log_every=1, checkpoint_every=2)
    model = DeOPConfig(PromptConfig(templates=("a photo of a {}.",), visual="add", visual_layers=(0, 1)),
                       severance=dict(GPS), anchors=AnchorConfig("query", 1, 8, 256, 0.0), void=True)
    return replace(RealConfig.tiny(), name="test", clip="ViT-B-32", crop=64, eval_short_side=64, eval_max_side=96,
                   model=model, stages={"proposals": StageConfig(TrainConfig(**steps), 4),
                                        "deop": StageConfig(TrainConfig(**steps), 4)})


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return prepare_fixture(tmp_path_factory.mktemp("voc"))


def _weights(run_dir):
    return {name: load_file(run_dir / f"{name}.safetensors") for name in ("proposals", "deop")}


def _assert_same_run(a, b, tolerance):
    """Same losses at every step and the same final weights, up to ``tolerance`` (relative) and 1e-4 (absolute)."""
    for stage in ("proposals", "deop"):
        losses_a = [r["loss"] for r in read_log(a / stage / "train.log")]
        losses_b = [r["loss"] for r in read_log(b / stage / "train.log")]
        assert len(losses_a) == len(losses_b) == 4
        assert losses_a == pytest.approx(losses_b, rel=tolerance, abs=1e-4)  # the log prints 4 decimals
    for stage, tensors in _weights(a).items():
        other = _weights(b)[stage]
        # atol 1e-4 = 10 % of one step (lr 1e-3): AdamW divides each gradient by its running RMS, so on a weight
        # whose gradient is ~0 a rounding difference of 1e-7 can move the update by a visible part of lr.
        for key, tensor in tensors.items():
            torch.testing.assert_close(tensor, other[key], rtol=tolerance, atol=1e-4,
                                       msg=lambda m, s=stage, k=key: f"{s}: {k}: {m}")


@pytest.fixture(scope="module")
def one_process(voc, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one")
    train(small_config(), voc, run_dir, stages=("proposals", "deop"))
    return run_dir


def _torchrun(config: RealConfig, voc, run_dir, processes: int, *extra: str) -> None:
    (run_dir / "config.json").parent.mkdir(parents=True, exist_ok=True)
    config_file = run_dir.parent / f"{run_dir.name}_config.json"
    config_file.write_text(json.dumps(asdict(config)))
    env = {**os.environ, "PYTHONPATH": str(runtime.PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "deop_lite.realworld", "train", "--config", str(config_file), "--data", str(voc),
               "--run-dir", str(run_dir), "--stages", "proposals", "deop", *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_presets_survive_json_and_shrink_for_one_gpu():
    for name in PRESETS:
        config = preset(name)
        assert RealConfig.from_dict(json.loads(json.dumps(asdict(config)))) == config
        consumer = preset(name, consumer_gpu=True)
        assert consumer.bf16 and consumer.name == f"{name}_consumer"
        for stage, settings in consumer.stages.items():  # same global batch and schedule, in micro-batches
            assert settings.batch_size == config.stages[stage].batch_size and settings.train == config.stages[stage].train
    voc = preset("voc", consumer_gpu=True)
    assert voc.stages["deop"].batch_size // voc.stages["deop"].accumulate == 4
    assert preset("coco").proposals.num_queries == 100 and preset("coco").crop == 512
    with pytest.raises(ValueError, match="unknown preset"):
        preset("cityscapes")


def test_gradient_accumulation_equals_the_full_batch(voc, one_process, tmp_path):
    config = small_config()
    config = replace(config, stages={k: replace(v, accumulate=2) for k, v in config.stages.items()})
    train(config, voc, tmp_path, stages=("proposals", "deop"))
    _assert_same_run(one_process, tmp_path, tolerance=1e-4)


def test_two_processes_equal_one_and_resume_on_another_number(voc, one_process, tmp_path):
    """torchrun, gloo, 2 CPU processes with half the batch each, against 1 process with all of it.

    Tolerance 1e-4 (relative): the two runs add the same numbers in another order (each process averages
    its half, then DDP averages the two halves), so they differ by float32 rounding, ~1e-7 per step; a
    relative 1e-4 leaves room for AdamW's normalisation to enlarge that on near-zero gradients.
    """
    _torchrun(small_config(), voc, tmp_path / "two", 2)
    _assert_same_run(one_process, tmp_path / "two", tolerance=1e-4)
    # 2 processes stop after 2 steps of the first stage; 1 process resumes and finishes both stages
    _torchrun(small_config(), voc, tmp_path / "switch", 2, "--stop-at", "2")
    assert not (tmp_path / "switch" / "proposals.safetensors").exists()
    train(small_config(), voc, tmp_path / "switch", stages=("proposals", "deop"))
    _assert_same_run(one_process, tmp_path / "switch", tolerance=1e-4)


def test_evaluation_writes_every_metric(voc, one_process, tmp_path):
    from deop_lite.datasets import SegmentationDataset
    from deop_lite.realworld import main
    config, dataset = small_config(), SegmentationDataset(voc, "val")
    result = evaluate(build_deop(config, one_process, torch.device("cpu")), dataset, 64, 96, progress=False)
    assert {"pAcc", "mIoU", "seen", "unseen", "hIoU", "IoU", "images_per_s"} <= set(result) and result["images"] == 6
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(asdict(config)))
    main(["eval", "--config", str(config_file), "--data", str(voc), "--run-dir", str(one_process),
          "--json", str(tmp_path / "eval.json"), "--limit", "2"])
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["images"] == 2 and report["paper"] == {"hIoU": 80.8, "seen": 88.2, "unseen": 74.6}
    assert set(report["IoU"]) == set(dataset.class_names)
