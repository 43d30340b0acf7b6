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
from deop_lite.model import DeOPConfig
from deop_lite.prompts import PromptConfig
from deop_lite.realworld import PRESETS, RealConfig, StageConfig, build_deop, evaluate, prepare_fixture, preset, train
from deop_lite.severance import GPS_LAST
from deop_lite.train import TrainConfig, read_log


def small_config() -> RealConfig:
    """Deterministic (no dropout), quick (fixed text prompts, so no text-encoder backward) and in float64, so
    that the equivalence tests below compare the code and not float32 rounding (see ``_assert_same_run``)."""
    steps = dict(steps=4, lr=1e-3, warmup_steps=0, schedule="poly", log_every=1, checkpoint_every=2)
    model = DeOPConfig(PromptConfig(templates=("a photo of a {}.",), visual="add", visual_layers=(0, 1)),
                       severance=GPS_LAST, anchors=AnchorConfig("query", 1, 8, 256, 0.0), void=True)
    return replace(RealConfig.tiny(), name="test", clip="ViT-B-32", crop=64, eval_short_side=64, eval_max_side=96,
                   model=model, float64=True, stages={"proposals": StageConfig(TrainConfig(**steps), 4),
                                        "deop": StageConfig(TrainConfig(**steps), 4)})


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return prepare_fixture(tmp_path_factory.mktemp("voc"))


def _weights(run_dir):
    return {name: load_file(run_dir / f"{name}.safetensors") for name in ("proposals", "deop")}


WEIGHT_RTOL, WEIGHT_ATOL = 1e-9, 1e-10


def _assert_same_run(a, b):
    """Same losses at every step and the same final weights.

    Why these tolerances: the two runs add the same per-image terms in another order (W processes average
    their shares and DDP averages the W results; A micro-batches add A partial gradients). In float64 that
    reordering changes a sum by ~1e-16 relative, and after four AdamW steps (lr 1e-3) the final weights of
    the runs below differ by at most 8e-14 (measured, AVX2 and AVX512 kernels alike). The tolerance, atol
    1e-10 and rtol 1e-9, leaves three orders of magnitude above that and six below the smallest step a real
    bug would leave (a wrong share of the batch, a missing gradient average, an optimiser state not
    restored: ~lr = 1e-3). In float32 the same reordering is ~1e-7, which AdamW amplified to a relative 2e-4
    in the losses of step 4, with a sign that depended on the CPU's SIMD kernels: that test checked the CPU.
    The logged losses are printed with 4 decimals, so they may differ by one unit of the last digit."""
    for stage in ("proposals", "deop"):
        losses_a = [r["loss"] for r in read_log(a / stage / "train.log")]
        losses_b = [r["loss"] for r in read_log(b / stage / "train.log")]
        assert len(losses_a) == len(losses_b) == 4
        assert losses_a == pytest.approx(losses_b, rel=0, abs=1.01e-4)
    for stage, tensors in _weights(a).items():
        other = _weights(b)[stage]
        for key, tensor in tensors.items():
            assert tensor.dtype == torch.float64 or not tensor.is_floating_point(), f"{stage}: {key} is {tensor.dtype}"
            torch.testing.assert_close(tensor, other[key], rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL,
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
    assert torch.get_default_dtype() == torch.float32  # train() computed in float64 and restored the default
    _assert_same_run(one_process, tmp_path)


def test_two_processes_equal_one_and_resume_on_another_number(voc, one_process, tmp_path):
    """torchrun, gloo, 2 CPU processes with half the batch each, against 1 process with all of it, in float64
    (tolerances: ``_assert_same_run``)."""
    _torchrun(small_config(), voc, tmp_path / "two", 2)
    _assert_same_run(one_process, tmp_path / "two")
    # 2 processes stop after 2 steps of the first stage; 1 process resumes and finishes both stages
    _torchrun(small_config(), voc, tmp_path / "switch", 2, "--stop-at", "2")
    assert not (tmp_path / "switch" / "proposals.safetensors").exists()
    train(small_config(), voc, tmp_path / "switch", stages=("proposals", "deop"))
    _assert_same_run(one_process, tmp_path / "switch")


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
