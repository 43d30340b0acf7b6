import math

import torch
import torch.nn.functional as F

from deop_lite.toyclip import (ToyClipConfig, WordTokenizer, build_toy_clip, caption_batch, contrastive_loss,
                               toy_vocabulary)
from deop_lite.train import TrainConfig, fit, lr_factor, read_log


def test_contrastive_loss_is_clip_loss_without_duplicates():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    tokens = torch.arange(4)[:, None]  # four different captions
    logits = 10 * img @ txt.T
    expected = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    assert torch.allclose(contrastive_loss(img, txt, tokens, torch.tensor(math.log(10))), expected)


def test_repeated_captions_are_not_negatives():
    # Two images with the same caption: a perfect model cannot tell the two texts apart, and must not
    # be pushed to. Its loss equals that of a batch where the duplicate is dropped entirely.
    img = F.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0.01, 0], [0, 0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]), dim=-1)
    tokens = torch.tensor([[5, 6], [5, 6], [7, 8]])
    scale = torch.tensor(math.log(50))
    with_dupes = contrastive_loss(img, txt, tokens, scale)
    as_negatives = contrastive_loss(img, txt, torch.tensor([[1], [2], [3]]), scale)
    assert with_dupes < 0.5 * as_negatives


def test_caption_batches_are_a_function_of_the_step():
    a_images, a_captions = caption_batch(3, 4, 64)
    b_images, b_captions = caption_batch(3, 4, 64)
    assert torch.equal(a_images, b_images) and a_captions == b_captions
    assert a_images.shape == (4, 3, 64, 64)
    tokens = WordTokenizer(toy_vocabulary())(a_captions)  # every caption is in the vocabulary
    assert tokens.shape == (4, 32)


def _train(config: ToyClipConfig, run_dir, steps: int) -> torch.nn.Module:
    tokenizer = WordTokenizer(toy_vocabulary(), config.context_length)
    torch.manual_seed(0)
    model = build_toy_clip(config, tokenizer.vocab_size)

    def step_loss(step):
        images, captions = caption_batch(step, config.batch_size, config.image_size)
        tokens = tokenizer(captions)
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        return contrastive_loss(img, txt, tokens, model.logit_scale), {}

    config.train.steps = steps
    fit(model, step_loss, config.train, run_dir)
    return model


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    straight = _train(ToyClipConfig.tiny(), tmp_path / "straight", steps=4)
    _train(ToyClipConfig.tiny(), tmp_path / "resumed", steps=2)  # "interrupted" after 2 steps
    resumed = _train(ToyClipConfig.tiny(), tmp_path / "resumed", steps=4)  # picks up from last.pt
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    history = read_log(tmp_path / "resumed" / "train.log")
    assert [r["step"] for r in history] == [2, 4]


def test_lr_schedule():
    config = TrainConfig(steps=100, warmup_steps=10)
    assert lr_factor(0, config) == 0.1 and lr_factor(9, config) == 1.0
    assert lr_factor(99, config) < 0.01
    poly = TrainConfig(steps=100, warmup_steps=0, schedule="poly")
    assert math.isclose(lr_factor(50, poly), 0.5 ** 0.9)
