import pytest

from deop_lite.cli import main


def test_demo_writes_figures(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--scenes", "4"])
    printed = capsys.readouterr().out
    assert "zero-shot classification" in printed and "naive CLIP patches" in printed and "DeOP" in printed
    assert (tmp_path / "confusion.png").stat().st_size > 10_000
    assert (tmp_path / "segmentation.png").stat().st_size > 10_000


def _scene_png(path, mode):
    import numpy as np
    from PIL import Image

    from deop_lite.toyworld import segmentation_world
    rgb = (segmentation_world("val", 1)[0]["image_raw"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)  # 16-bit grayscale
    elif mode == "large":
        image = image.resize((2000, 1500))
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "large"])
def test_segment_own_image(tmp_path, capsys, mode):
    import numpy as np
    from PIL import Image
    path = _scene_png(tmp_path / "scene.png", mode)
    main(["segment", str(path), "--classes", "sky, grass, ladybird, clock", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    label = Image.open(tmp_path / "out" / "scene_labels.png")
    assert label.mode == "L" and np.asarray(label).max() < 4 and "pixels: sky" in printed
    assert (tmp_path / "out" / "scene_overlay.png").stat().st_size > 10_000
    if mode == "large":
        assert "resized from 2000x1500" in printed
