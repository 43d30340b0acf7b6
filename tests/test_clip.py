import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from deop_lite import toyworld
from deop_lite.clip import ClipWeightsUnavailable, WordTokenizer, load_clip, load_toy_clip
from deop_lite.train import read_metadata, save_weights


def _open_clip_dense(visual, image):
    """open_clip's own path: output_tokens -> @ proj -> L2 normalise -> (B, D, h, w)."""
    visual = copy.copy(visual)
    visual.output_tokens = True
    _, tokens = visual(image)  # (B, h*w, W) after ln_post
    feats = F.normalize(tokens @ visual.proj, dim=-1)
    h, w = image.shape[-2] // 16, image.shape[-1] // 16
    return feats.transpose(1, 2).reshape(image.shape[0], -1, h, w)


def test_dense_features_equal_open_clip_tokens_exactly(vit_b16):
    image = torch.randn(2, 3, 224, 224)
    ours = vit_b16.dense_features(image)
    assert ours.shape == (2, 512, 14, 14)
    assert torch.equal(ours, _open_clip_dense(vit_b16.visual, image))
    assert torch.allclose(ours.norm(dim=1), torch.ones(2, 14, 14), atol=1e-5)


def test_non_square_input_matches_open_clip_with_resized_positions(vit_b16):
    image = torch.randn(1, 3, 224, 320)
    ours = vit_b16.dense_features(image)
    assert ours.shape == (1, 512, 14, 20)
    # open_clip itself only runs at a fixed size: build one for 224x320 and resize its positional
    # embedding with open_clip's own function. Its default antialias=True switches PyTorch to another
    # cubic kernel (a = -0.5 instead of -0.75) even when upsampling; DeOP's code uses plain bicubic.
    wide = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True,
                                  force_image_size=(224, 320)).eval()
    state = vit_b16.model.state_dict()
    open_clip.model.resize_pos_embed(state, wide, antialias=False)
    wide.load_state_dict(state)
    with torch.no_grad():
        reference = _open_clip_dense(wide.visual, image)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_toy_clip_dense_features_any_grid(toy_clip):
    image = toy_clip.normalize(torch.rand(2, 3, 128, 96))
    assert toy_clip.dense_features(image).shape == (2, toy_clip.embed_dim, 16, 12)


def test_text_embeddings(toy_clip, vit_b16):
    for clip in (toy_clip, vit_b16):
        emb = clip.text_embeddings(["ladybird", "grass", "sky"])
        assert emb.shape == (3, clip.embed_dim)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="non-empty list"):
        toy_clip.text_embeddings("ladybird")


def test_toy_tokenizer():
    tokenizer = WordTokenizer(toyworld.vocabulary(), context_length=12)
    tokens = tokenizer(["a photo of a ladybird.", "grass"])
    assert tokens.shape == (2, 12)
    assert tokens.argmax(-1).tolist() == [7, 2]  # EOT has the largest id: open_clip's argmax pooling finds it
    assert tokenizer.decode(tokens[0]) == "a photo of a ladybird ."
    with pytest.raises(ValueError, match="not in the toy CLIP's vocabulary; it knows: , . a an and"):
        tokenizer(["a photo of a giraffe."])
    with pytest.raises(ValueError, match="context length"):
        tokenizer(["a " * 12])


def test_toy_clip_round_trips_bit_exactly(toy_clip, tmp_path):
    """Saved as its pre-training stage saves it (weights, config, vocabulary, its world's prompt templates)."""
    path = tmp_path / "copy.safetensors"
    save_weights(toy_clip.model, path, read_metadata("data/toy_clip.safetensors"))
    model, tokenizer, templates = load_toy_clip(path)
    for (name, a), b in zip(toy_clip.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert tokenizer.vocabulary == toy_clip.tokenizer.vocabulary == toyworld.vocabulary()
    assert templates == toy_clip.templates == toyworld.PROMPT_TEMPLATES
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # (with grad enabled, nn.MultiheadAttention leaves its fused fast path: other rounding)
        assert torch.equal(model.encode_image(image), toy_clip.model.encode_image(image))


def test_missing_or_corrupt_toy_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m deop_lite.stages train clip"):
        load_toy_clip(tmp_path / "nothing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(RuntimeError, match="unreadable or of another kind.*re-train"):
        load_toy_clip(bad)


def test_real_clip_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown CLIP architecture"):
        load_clip("ViT-Q-99")
    with pytest.raises(ClipWeightsUnavailable, match="no CLIP checkpoint file.*load_clip\\('toy'\\)"):
        load_clip("ViT-B-16", pretrained=tmp_path / "missing.bin")
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipWeightsUnavailable, match="(?s)could not load ViT-B-16.*never substituted"):
        load_clip("ViT-B-16", pretrained=corrupt)

    def offline(*args, **kwargs):  # what open_clip raises without internet (seen here, after retries)
        raise RuntimeError("Failed to download weights for tag 'openai'")
    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ClipWeightsUnavailable, match="Failed to download.*pretrained='/path/to/weights.bin'"):
        load_clip("ViT-B-16", pretrained="openai")


def test_clip_is_frozen_and_in_eval_mode(toy_clip):
    assert not toy_clip.model.training
    assert not any(p.requires_grad for p in toy_clip.model.parameters())


def test_imagenet_pixel_norm_option():
    clip = load_clip("toy", pixel_norm="imagenet")
    x = torch.full((1, 3, 8, 8), 0.5)
    assert torch.allclose(clip.normalize(x)[0, :, 0, 0], torch.tensor([0.0655, 0.1964, 0.4178]), atol=1e-3)
    with pytest.raises(ValueError, match="pixel_norm"):
        load_clip("toy", pixel_norm="zscore")


def test_shipped_toy_clip_zero_shot_accuracy(toy_clip):
    """The toy CLIP's claim (docs/experiments.md): >= 90 % top-1 over all 16 classes on single-class validation images."""
    from deop_lite.toyclip import evaluate_zero_shot
    result = evaluate_zero_shot(toy_clip, n_per_class=25)
    assert result["top1"] >= 0.9, result
    assert result["confusion"].sum() == 25 * len(toyworld.CLASS_NAMES)
