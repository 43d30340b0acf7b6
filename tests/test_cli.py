from deop_lite.cli import main


def test_demo_writes_figures(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--scenes", "4"])
    printed = capsys.readouterr().out
    assert "zero-shot classification" in printed and "naive CLIP patches" in printed and "DeOP" in printed
    assert (tmp_path / "confusion.png").stat().st_size > 10_000
    assert (tmp_path / "segmentation.png").stat().st_size > 10_000
