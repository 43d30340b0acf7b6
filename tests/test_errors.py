"""Bad input gets one clear line, never a traceback; the Python API raises InputError before computing; an
interrupted command leaves no half-written file.

Every command line is called in-process (its ``main(argv)``) with a user's mistake: it must exit with status 2
and print exactly one line, ``<prog>: error: <message>``, whose key words say what was wrong."""
import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from deop_lite import bench, checks, cli, datasets, realworld, stages
from deop_lite.checks import InputError
from deop_lite.runtime import DATA_DIR, PROJECT_ROOT


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files a user might pass by mistake: a good scene, a 1x1 image, a corrupt one, a plain file, folders."""
    root = tmp_path_factory.mktemp("user")
    Image.new("RGB", (96, 80), "skyblue").save(root / "scene.png")
    Image.new("RGB", (1, 1), "red").save(root / "dot.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG not really")
    (root / "corrupt.safetensors").write_bytes(b"not a checkpoint")
    (root / "a_file").write_text("I am a file")
    (root / "empty_dir").mkdir()
    (root / "broken_data").mkdir()
    (root / "broken_data" / "val.json").write_text("{ not json")
    (root / "broken_config.json").write_text(json.dumps({"name": "x"}))
    (root / "run").mkdir()
    return root


def _cases(f):
    scene, data = str(f / "scene.png"), str(f / "empty_dir")
    tiny_run = ["--preset", "tiny", "--run-dir", str(f / "run")]
    return {
        # deop-lite segment: class lists
        "segment: no classes": (cli.main, ["segment", scene, "--classes", ""], "no class names given"),
        "segment: only separators": (cli.main, ["segment", scene, "--classes", " , ,"], "no class names given"),
        "segment: blank entry": (cli.main, ["segment", scene, "--classes", "sky,,ladybird"], "is blank"),
        "segment: duplicate": (cli.main, ["segment", scene, "--classes", "sky, ladybird, Sky "], "named more than once"),
        "segment: unknown class": (cli.main, ["segment", scene, "--classes", "sky, zebra"], "unknown class name(s) ['zebra']"),
        "segment: real CLIP duplicate": (cli.main, ["segment", scene, "--classes", "cat, cat", "--clip", "ViT-B-16"],
                                         "named more than once"),
        # deop-lite segment: images, paths, weights
        "segment: 1x1 image": (cli.main, ["segment", str(f / "dot.png"), "--classes", "sky"], "needs at least 32x32"),
        "segment: missing image": (cli.main, ["segment", str(f / "none.png"), "--classes", "sky"], "no image at"),
        "segment: corrupt image": (cli.main, ["segment", str(f / "corrupt.png"), "--classes", "sky"], "cannot read"),
        "segment: a folder as image": (cli.main, ["segment", data, "--classes", "sky"], "is a folder"),
        "segment: --out is a file": (cli.main, ["segment", scene, "--classes", "sky", "--out", str(f / "a_file")],
                                     "is a file, not a folder"),
        "segment: missing weights": (cli.main, ["segment", scene, "--classes", "cat", "--clip", "ViT-B-16", "--weights",
                                                str(f / "none.bin")], "no CLIP checkpoint file"),
        "segment: unknown CLIP": (cli.main, ["segment", scene, "--classes", "cat", "--clip", "ViT-X-99"],
                                  "unknown CLIP architecture"),
        # deop-lite demo, bench
        "demo: --scenes 0": (cli.main, ["demo", "--scenes", "0"], "--scenes must be at least 1, got 0"),
        "demo: --scenes -3": (cli.main, ["demo", "--scenes", "-3"], "--scenes must be at least 1, got -3"),
        "demo: --out is a file": (cli.main, ["demo", "--out", str(f / "a_file")], "is a file, not a folder"),
        "demo: --out cannot be made": (cli.main, ["demo", "--out", str(f / "a_file" / "figures")], "cannot create the folder"),
        "bench: --valid 0": (bench.main, ["--valid", "0", "10"], "every --valid value must be at least 1"),
        "bench: --valid > --queries": (bench.main, ["--queries", "8", "--valid", "4", "16"], "at most --queries (8)"),
        "bench: --short-side 50": (bench.main, ["--short-side", "50"], "multiple of 32"),
        "bench: --repeats 0": (bench.main, ["--repeats", "0"], "--repeats must be at least 1"),
        "bench: no GPU": (bench.main, ["--device", "cuda"], "no CUDA GPU"),
        # the toy stages: counts, folders, checkpoints
        "clip: --steps 0": (stages.main, ["train", "clip", "--steps", "0"], "--steps must be at least 1"),
        "clip: --run-dir is a file": (stages.main, ["train", "clip", "--run-dir", str(f / "a_file")],
                                      "is a file, not a folder"),
        "clip: --out is a folder": (stages.main, ["train", "clip", "--out", data], "is a folder; name the .safetensors file"),
        "clip: missing checkpoint": (stages.main, ["eval", "clip", "--checkpoint", str(f / "none.safetensors")],
                                     "no checkpoint at"),
        "clip: corrupt checkpoint": (stages.main, ["eval", "clip", "--checkpoint", str(f / "corrupt.safetensors")],
                                     "unreadable"),
        "clip: --per-class 0": (stages.main, ["eval", "clip", "--per-class", "0"], "--per-class must be at least 1"),
        "proposals: --scenes 0": (stages.main, ["eval", "proposals", "--scenes", "0"], "--scenes must be at least 1"),
        "proposals: --first-scene -1": (stages.main, ["eval", "proposals", "--first-scene", "-1"],
                                        "--first-scene must be at least 0"),
        "proposals: --refine-iterations -1": (stages.main, ["eval", "proposals", "--refine-iterations", "-1"],
                                              "--refine-iterations must be at least 0"),
        "proposals: a CLIP file": (stages.main, ["eval", "proposals", "--checkpoint",
                                                 str(DATA_DIR / "toy_clip.safetensors")], "of another kind"),
        "deop: unknown variant": (stages.main, ["eval", "deop", "--variant", "dope"], "invalid choice: 'dope'"),
        "deop: another variant's file": (stages.main, ["eval", "deop", "--variant", "deop", "--checkpoint",
                                                       str(DATA_DIR / "deop" / "ps.safetensors")], "holds the variant 'ps'"),
        "deop: --scenes 0": (stages.main, ["eval", "deop", "--variant", "deop", "--scenes", "0"],
                             "--scenes must be at least 1"),
        "deop: --steps -1": (stages.main, ["train", "deop", "--variant", "deop", "--steps", "-1"],
                             "--steps must be at least 1"),
        "deop: --severed-blocks 5": (stages.main, ["train", "deop", "--variant", "ps", "--severed-blocks", "5"],
                                     "sever between 0 and 4"),
        "deop: a CLIP file": (stages.main, ["eval", "deop", "--variant", "deop", "--checkpoint",
                                            str(DATA_DIR / "toy_clip.safetensors")], "of another kind"),
        "stages: no stage": (stages.main, ["train"], "the following arguments are required"),
        # data folders
        "datasets: missing --root": (datasets.main, ["prepare", "voc", "--root", str(f / "none"), "--out", str(f / "out")],
                                     "does not exist"),
        "datasets: --out is a file": (datasets.main, ["prepare", "voc", "--root", data, "--out", str(f / "a_file")],
                                      "is a file, not a folder"),
        "datasets: info, unprepared": (datasets.main, ["info", data], "holds no prepared split"),
        "datasets: info, a file": (datasets.main, ["info", str(f / "a_file")], "is a file; a folder is expected"),
        "datasets: info, corrupt index": (datasets.main, ["info", str(f / "broken_data")], "is corrupt"),
        "realworld: eval, unprepared data": (realworld.main, ["eval", *tiny_run, "--data", data], "no prepared split"),
        "realworld: eval, no run folder": (realworld.main, ["eval", "--preset", "tiny", "--run-dir", str(f / "none")],
                                           "no run folder"),
        "realworld: --data is a file": (realworld.main, ["eval", *tiny_run, "--data", str(f / "a_file")],
                                        "is a file; a folder is expected"),
        "realworld: missing --config": (realworld.main, ["train", "--config", str(f / "none.json")], "no such file"),
        "realworld: malformed --config": (realworld.main, ["train", "--config", str(f / "broken_config.json")],
                                          "is not a RealConfig"),
        "realworld: --micro-batch 0": (realworld.main, ["probe", "--preset", "tiny", "--micro-batch", "0"],
                                       "--micro-batch must be at least 1"),
        "realworld: --run-dir is a file": (realworld.main, ["train", "--preset", "tiny", "--run-dir", str(f / "a_file")],
                                           "is a file, not a folder"),
        "realworld: --stop-at 0": (realworld.main, ["train", *tiny_run, "--stop-at", "0"], "--stop-at must be at least 1"),
        "realworld: no --data": (realworld.main, ["train", "--preset", "voc", "--run-dir", str(f / "run")],
                                 "--data is required"),
    }


CASES = sorted(_cases(PROJECT_ROOT))  # names only; the arguments need the fixture's folder


@pytest.mark.parametrize("case", CASES)
def test_a_user_error_is_one_line_and_status_2(case, files, capsys):
    main, argv, expected = _cases(files)[case]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    assert err.count(": error: ") == 1 and expected in err.splitlines()[-1], err
    if "usage:" not in err:  # argparse's own errors (a bad option) print the usage before their line
        assert len(err.strip().splitlines()) == 1, err


def test_no_traceback_from_the_installed_commands(files):
    """The same through real processes: ``python -m`` and the console entry point's module."""
    for argv, expected in (([sys.executable, "-m", "deop_lite.cli", "demo", "--scenes", "0"], "--scenes must be at least 1"),
                           ([sys.executable, "-m", "deop_lite.realworld", "eval", "--preset", "tiny", "--run-dir",
                             str(files / "run"), "--data", str(files / "empty_dir")], "no prepared split")):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
        assert result.returncode == 2 and "Traceback" not in result.stderr and expected in result.stderr, result.stderr


def test_ctrl_c_is_one_line_and_status_130(capsys):
    @checks.command("deop-lite test")
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        interrupted()
    assert exit_info.value.code == 130 and capsys.readouterr().err == "deop-lite test: interrupted\n"


# ----------------------------------------------------------------------------------------------------
# The Python API: InputError (a ValueError) before any computation

@pytest.fixture(scope="module")
def deop():
    return stages.load_deop("deop")


def _image(*shape, scale=1.0, dtype=torch.float32):
    return (torch.rand(*shape) * scale).to(dtype)


API_CASES = {
    "empty class list": (lambda m: m.predict(_image(1, 3, 64, 64), []), "no class names given"),
    "class list as one blank string": (lambda m: m.predict(_image(1, 3, 64, 64), " "), "no class names given"),
    "duplicate classes": (lambda m: m.predict(_image(1, 3, 64, 64), ["sky", "ladybird", "sky"]), "named more than once"),
    "image without batch dim": (lambda m: m.predict(_image(3, 64, 64), ["sky"]), "add a batch dimension"),
    "grayscale image": (lambda m: m.predict(_image(1, 1, 64, 64), ["sky"]), "convert grayscale"),
    "uint8 image": (lambda m: m.predict(_image(1, 3, 64, 64, scale=255, dtype=torch.uint8), ["sky"]), "divide uint8"),
    "0-255 float image": (lambda m: m.predict(_image(1, 3, 64, 64, scale=255), ["sky"]), "values must lie in [0, 1]"),
    "size not a multiple of 32": (lambda m: m.predict(_image(1, 3, 60, 64), ["sky"]), "multiples of 32"),
    "image smaller than the model": (lambda m: m.predict(_image(1, 3, 1, 1), ["sky"]), "at least 32x32"),
    "masks of another size": (lambda m: m.classify_masks(_image(1, 3, 64, 64), _image(1, 16, 32, 32), ["sky"]),
                              "does not fit the images"),
    "masks of another batch": (lambda m: m.classify_masks(_image(1, 3, 64, 64), _image(2, 16, 64, 64), ["sky"]),
                               "does not fit the images"),
    "mask logits": (lambda m: m.classify_masks(_image(1, 3, 64, 64), _image(1, 16, 64, 64, scale=8) - 4, ["sky"]),
                    "apply .sigmoid()"),
    "3 masks for 16 anchors": (lambda m: m.classify_masks(_image(1, 3, 64, 64), _image(1, 3, 64, 64), ["sky"]),
                               "classifies exactly 16 masks"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_the_api_raises_input_error_before_computing(case, deop, monkeypatch):
    call, expected = API_CASES[case]

    def computed(*args, **kwargs):
        raise AssertionError("computed before checking the input")

    monkeypatch.setattr(deop.proposals, "forward", computed)  # the first computation of either stream
    monkeypatch.setattr(deop.clip.visual.conv1, "forward", computed)
    with pytest.raises(InputError, match=re.escape(expected)):
        call(deop)


def test_other_api_entry_points_check_their_input(toy_clip, tmp_path):
    from deop_lite import severance, viz
    from deop_lite.clip import load_clip
    with pytest.raises(InputError, match="unknown CLIP architecture"):
        load_clip("ViT-X-99", pretrained=None)
    with pytest.raises(checks.CheckpointMissing, match="no checkpoint at"):
        load_clip("toy", pretrained=tmp_path / "none.safetensors")
    with pytest.raises(InputError, match="alphas must be a dict"):
        severance.Severance("gps", 1.0)
    with pytest.raises(InputError, match="mps_norm must be one of"):
        severance.Severance("mps", {-1: 1.0}, mps_norm="max")
    with pytest.raises(InputError, match="pass num_queries"):
        stages.MaskClassifier(toy_clip, stages.DeOPConfig(anchors=stages.AnchorConfig("query")))
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(InputError, match="does not fit"):
        viz.AlphaExplorer(toy_clip, images, ["sky", "ladybird"], torch.rand(2, 4, 32, 32))
    with pytest.raises(InputError, match="named more than once"):
        viz.AlphaExplorer(toy_clip, images, ["sky", "sky"])
    explorer = viz.AlphaExplorer(toy_clip, images, ["sky", "ladybird"])
    for change, expected in (({"alpha": 1.5}, r"alpha must lie in \[0, 1\]"), ({"image": 2}, r"image must be an "
                             r"integer in \[0, 1\]"), ({"blocks": 5}, r"blocks must be an integer in \[1, 4\]"),
                             ({"row": -1}, "row must be"), ({"mode": "MPS"}, "MPS needs proposal"),
                             ({"mode": "gps"}, "mode must be one of")):
        with pytest.raises(InputError, match=expected):
            explorer.update(**change)
    assert explorer.state["alpha"] == 1.0  # a refused change leaves the state as it was
    with pytest.raises(datasets.DatasetNotFound, match="no prepared split"):
        datasets.SegmentationDataset(tmp_path, "val")
    (tmp_path / "val.json").write_text("[1, 2")
    with pytest.raises(datasets.DatasetNotFound, match="is corrupt"):
        datasets.SegmentationDataset(tmp_path, "val")
    with pytest.raises(InputError, match="unknown dataset"):
        datasets.dataset_info("cityscapes")


def test_an_unreadable_label_file_says_how_to_rewrite_it(tmp_path):
    data = realworld.prepare_fixture(tmp_path / "voc")
    dataset = datasets.SegmentationDataset(data, "val")
    (data / dataset.items[0]["label"]).write_bytes(b"truncated")
    with pytest.raises(datasets.DatasetNotFound, match="is unreadable: delete .*val.json and prepare the split again"):
        dataset[0]
    datasets.prepare("voc", realworld.FIXTURE, data, progress=False)  # idempotent: the index exists, nothing redone
    (data / "val.json").unlink()  # prepare the split again: the unreadable label file is rewritten
    datasets.prepare("voc", realworld.FIXTURE, data, splits=["val"], progress=False)
    assert datasets.SegmentationDataset(data, "val")[0]["label"].ndim == 2


# ----------------------------------------------------------------------------------------------------
# Nothing lost on interrupt

def test_an_interrupted_write_leaves_the_old_file_and_no_debris(tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"the good one")
    with pytest.raises(KeyboardInterrupt):
        with checks.atomic_path(target) as tmp:
            tmp.write_bytes(b"half of a new fi")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"the good one" and sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
    with checks.atomic_path(target) as tmp:
        tmp.write_bytes(b"the new one")
    assert target.read_bytes() == b"the new one" and sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]


def test_an_interrupted_demo_keeps_its_previous_figures(tmp_path, monkeypatch, capsys):
    import matplotlib.figure
    cli.main(["demo", "--out", str(tmp_path), "--scenes", "1"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"confusion.png", "segmentation.png"}

    def interrupted_savefig(self, path, *args, **kwargs):
        with open(path, "wb") as half:
            half.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted_savefig)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--out", str(tmp_path), "--scenes", "1"])
    assert exit_info.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_class_names_are_cleaned_not_guessed():
    assert checks.class_names(" ladybird, Grass ,sky ", vocabulary=("sky", "grass", "ladybird")) == ["ladybird", "grass", "sky"]
    assert checks.class_names(["a cat ", "dog"]) == ["a cat", "dog"]
    with pytest.raises(InputError, match="must be a list of strings"):
        checks.class_names([1, 2])
