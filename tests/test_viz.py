import matplotlib.pyplot as plt
import pytest
import torch

from deop_lite import viz
from deop_lite.severance import NONE, Severance


def test_figures_draw_the_data_they_are_given():
    image = torch.rand(3, 32, 48)
    attention = torch.zeros(4, 6, 4, 6)
    attention[1, 2, 3, 5] = 1.0
    fig = viz.show_attention(image, {"stock": attention}, (1, 2), maps={"mask": torch.ones(32, 48)})
    assert len(fig.axes) == 3
    shown = fig.axes[1].images[-1].get_array()
    assert shown.shape == (4, 6) and shown[3, 5] == 1 and shown.sum() == 1
    plt.close(fig)
    label = torch.zeros(32, 48, dtype=torch.long)
    label[:, 24:] = 255
    blended = viz.overlay(image, label)
    assert (blended[:, 24:] == 0).all() and (blended[:, :24] > 0).any()  # ignored pixels black, what a loss never sees
    fig = viz.show_proposals(image, torch.rand(5, 32, 48))
    assert sum(bool(ax.images) for ax in fig.axes) == 5
    plt.close(fig)
    segments, proposals = torch.zeros(2, 32, 48, dtype=torch.bool), torch.zeros(2, 32, 48, dtype=torch.bool)
    segments[:, 8:16, 8:16], proposals[0, 8:16, :] = True, True
    fig = viz.show_segment_matches(image.expand(2, -1, -1, -1), segments, proposals, ["a", "b"], ncols=3)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "b"] and not fig.axes[2].images  # the spare panel is empty
    assert (fig.axes[1].images[0].get_array() == viz.to_hwc(image)).all()  # an empty proposal leaves the image as it is
    plt.close(fig)
    fig = viz.plot_per_class({"sky": 0.5, "fish": 0.25}, "IoU")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["sky", "fish*"]
    plt.close(fig)


def test_alpha_explorer_redraws_what_it_computes(toy_clip):
    import numpy as np
    import pytest

    from deop_lite.toyworld import CLASS_NAMES, segmentation_world
    world = segmentation_world("val", 2)
    images = torch.stack([world[i]["image_raw"] for i in range(2)])  # (2, 3, 128, 128)
    label = torch.stack([world[i]["label"] for i in range(2)])
    masks = (label[:, None] == torch.arange(len(CLASS_NAMES))[None, :, None, None]).float()  # ground-truth masks
    explorer = viz.AlphaExplorer(toy_clip, images, CLASS_NAMES, masks)
    stock = explorer.update(mode="none", row=3, col=4)
    drawn_stock = np.array(explorer.artists["attention"].get_array())
    severed = explorer.update(mode="GPS", alpha=1.0, blocks=4)  # its time: `deop-lite bench explorer`
    drawn = np.array(explorer.artists["attention"].get_array())
    assert np.allclose(drawn, severed["attention"].numpy()) and not np.allclose(drawn, drawn_stock)
    assert drawn[3, 4] == 1 and drawn.sum() == 1  # every block severed at α = 1: the patch's output is its own
    assert np.isclose(drawn_stock.sum(), 1) and drawn_stock[3, 4] < 0.9  # stock CLIP: it draws on other patches
    last_block = explorer.update(blocks=1)["attention"]  # the paper's setting leaves the mixing of 3 blocks
    assert 1 - 1e-6 < last_block.sum() < 1 + 1e-6 and last_block[3, 4] < 1
    assert np.allclose(explorer.artists["label"].get_array(), viz.overlay(images[0], explorer.compute()["label"], opacity=0.8))
    assert stock["label"].shape == (128, 128)
    panel = explorer.widget()  # sliders drive the same update
    panel.children[1].children[1].value = 0.25
    assert explorer.state["alpha"] == 0.25
    panel.children[1].children[0].value = 2
    assert explorer.severance() == Severance("gps", {2: 0.25, 3: 0.25})
    with pytest.raises(ValueError, match="unknown explorer setting"):
        explorer.update(beta=1)
    with pytest.raises(ValueError, match="MPS needs proposal masks"):
        viz.AlphaExplorer(toy_clip, images, CLASS_NAMES).update(mode="MPS")
    plt.close("all")


def test_alpha_explorer_offers_every_mode_and_disables_what_does_not_apply(toy_clip):
    import numpy as np

    from deop_lite.severance import severed_features_and_rollout
    from deop_lite.toyworld import CLASS_NAMES, segmentation_world
    images = torch.stack([segmentation_world("val", 1)[0]["image_raw"]])  # (1, 3, 128, 128)
    explorer = viz.AlphaExplorer(toy_clip, images, CLASS_NAMES)
    explorer.widget()
    mode, alpha, blocks = explorer.controls["mode"], explorer.controls["alpha"], explorer.controls["blocks"]
    assert not {"MPS", "ProxyCLIP", "CorrCLIP"} & set(mode.options)  # they need masks or a proxy, not given here
    assert {"SCLIP", "ClearCLIP", "NACLIP", "ResCLIP"} <= set(mode.options)
    blocks.value = 2
    for name in ("SCLIP", "ClearCLIP", "NACLIP", "ResCLIP", "none"):
        mode.value = name  # the button drives update(), which redraws this mode's rollout
        severance = NONE if name == "none" else Severance(name.lower(), {2: 1.0, 3: 1.0})
        expected = severed_features_and_rollout(toy_clip.visual, toy_clip.normalize(images), severance)
        assert np.allclose(explorer.artists["attention"].get_array(), expected[1][0, 8, 8].numpy(), atol=1e-6), name
        assert alpha.disabled and blocks.disabled == (name == "none")  # α is read by GPS only
    mode.value = "GPS"
    assert not alpha.disabled and not blocks.disabled
    plt.close("all")


def test_alpha_explorer_draws_nothing_until_shown_and_a_click_chooses_the_patch(toy_clip):
    import numpy as np

    from deop_lite.toyworld import CLASS_NAMES, segmentation_world
    images = torch.stack([segmentation_world("val", 1)[0]["image_raw"]])  # (1, 3, 128, 128)
    names = [CLASS_NAMES[3], CLASS_NAMES[0], CLASS_NAMES[12]]  # a subset, out of order
    figures = plt.get_fignums()
    explorer = viz.AlphaExplorer(toy_clip, images, names)
    assert plt.get_fignums() == figures  # building it in one cell leaves no stray figure for that cell to show
    legend = explorer.fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [n + ("*" if n in viz.UNSEEN_CLASSES else "") for n in names]
    explorer.widget()
    result = explorer.select_patch(x=100.0, y=20.0)  # 8-pixel patches: row 2, column 12
    assert (explorer.state["row"], explorer.state["col"]) == (2, 12)
    assert (explorer.controls["row"].value, explorer.controls["col"].value) == (2, 12)  # sliders follow the click
    assert explorer.artists["box"].get_xy() == (96.0, 16.0)
    label_rgb = explorer.artists["label"].get_array()  # class i is drawn in its legend colour
    for i, name in enumerate(names):
        where = (result["label"] == i).numpy()
        if where.any():
            expected = viz.overlay(images[0], torch.full((128, 128), CLASS_NAMES.index(name)), opacity=0.8)
            assert np.allclose(label_rgb[where], expected[where])
    explorer.controls["col"].value = 3  # and the slider still drives the patch
    assert explorer.state["col"] == 3
    plt.close("all")


def test_training_curves_one_per_key_or_per_run():
    history = [{"step": 50, "loss": 1.0}, {"step": 100, "loss": 0.5, "hIoU": 30.0}]
    fig = viz.plot_history(history, ["loss", "hIoU"])
    assert [len(line.get_xdata()) for line in fig.axes[0].lines] == [2, 1]  # records lacking a key are skipped
    fig = viz.plot_runs({"a": history, "b": history[:1]}, "loss")
    assert [line.get_label() for line in fig.axes[0].lines] == ["a", "b"]
    fig = viz.plot_run_panels({"a": history, "b": history}, {"loss": "training loss", "hIoU": "validation hIoU"})
    assert [ax.get_title() for ax in fig.axes] == ["training loss", "validation hIoU"]
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    plt.close("all")


def test_alpha_explorer_draws_the_proxy_modes_from_the_proxy_it_is_given(toy_clip):
    import numpy as np

    from deop_lite.severance import severed_features_and_rollout
    from deop_lite.toyworld import CLASS_NAMES, segmentation_world
    images = torch.stack([segmentation_world("val", 1)[0]["image_raw"]])  # (1, 3, 128, 128)
    masks = torch.zeros(1, 2, 128, 128)
    masks[:, 0, :, :64], masks[:, 1, :, 64:] = 1, 1
    proxy = torch.randn(1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    explorer = viz.AlphaExplorer(toy_clip, images, CLASS_NAMES, masks, proxy)
    assert {"MPS", "ProxyCLIP", "CorrCLIP"} <= set(explorer.available_modes())
    for name in ("ProxyCLIP", "CorrCLIP"):
        drawn = explorer.update(mode=name, blocks=1)["attention"]
        expected = severed_features_and_rollout(toy_clip.visual, toy_clip.normalize(images),
                                                Severance(name.lower(), {3: 1.0}), masks, proxy)[1][0, 8, 8]
        assert np.allclose(drawn.numpy(), expected.numpy(), atol=1e-6), name
    with pytest.raises(ValueError, match="CorrCLIP needs proposal masks"):
        viz.AlphaExplorer(toy_clip, images, CLASS_NAMES, proxy=proxy).update(mode="CorrCLIP")
    plt.close("all")


def test_alpha_explorer_shows_the_attention_each_mode_gives_the_patch(toy_clip):
    """The panel switch: the last block's attention of the chosen patch under the current mode (what users of SCLIP,
    ClearCLIP and ResCLIP ask to see), instead of the rollout."""
    import numpy as np

    from deop_lite.severance import patch_attention
    from deop_lite.toyworld import CLASS_NAMES, segmentation_world
    images = torch.stack([segmentation_world("val", 1)[0]["image_raw"]])  # (1, 3, 128, 128)
    explorer = viz.AlphaExplorer(toy_clip, images, CLASS_NAMES)
    for mode in ("none", "SCLIP", "ClearCLIP", "ResCLIP"):
        drawn = explorer.update(mode=mode, blocks=1, panel="last block")["attention"]
        severance = NONE if mode == "none" else Severance(mode.lower(), {3: 1.0})
        expected = patch_attention(toy_clip.visual, toy_clip.normalize(images), severance=severance)[0, 8, 8]
        assert np.allclose(drawn.numpy(), expected.numpy(), atol=1e-6), mode
    with pytest.raises(ValueError, match="panel must be one of"):
        explorer.update(panel="heatmap")
    plt.close("all")
