import matplotlib.pyplot as plt
import torch

from deop_lite import viz


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
    assert (blended[:, 24:] == viz.to_hwc(image)[:, 24:]).all()  # ignored pixels show the image untouched
    fig = viz.show_proposals(image, torch.rand(5, 32, 48))
    assert sum(bool(ax.images) for ax in fig.axes) == 5
    plt.close(fig)
    fig = viz.plot_per_class({"sky": 0.5, "star": 0.25}, "IoU")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["sky", "star*"]
    plt.close(fig)
