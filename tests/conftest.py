import pytest
import torch


@pytest.fixture(scope="session")
def vit_b16():
    """A randomly initialised open_clip ViT-B-16 (QuickGELU), built from its config: no download."""
    from deop_lite.clip import load_clip
    torch.manual_seed(0)
    return load_clip("ViT-B-16", pretrained=None)


@pytest.fixture(scope="session")
def toy_clip():
    """The shipped toy CLIP."""
    from deop_lite.clip import load_clip
    return load_clip("toy")
