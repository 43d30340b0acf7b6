import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deop_lite.clip import ToyClipConfig, WordTokenizer, build_toy_clip
from deop_lite.severance import NONE, Severance
from deop_lite.toyclip import caption_groups, contrastive_loss
from deop_lite.toyworld import ToyWorld, vocabulary
from deop_lite.train import TrainConfig, fit, lr_factor, read_log


def test_contrastive_loss_is_clip_loss_without_repeats():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    logits = 10 * img @ txt.T
    expected = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    assert torch.allclose(contrastive_loss(img, txt, torch.arange(4), torch.tensor(math.log(10))), expected)


def test_paraphrases_are_positives_not_negatives():
    groups = caption_groups(["a photo of a red star on grass.", "grass with a red star.", "a star on grass."])
    assert groups.tolist() == [0, 0, 1]
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    logits = 10 * img @ txt.T
    targets = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    assert torch.allclose(contrastive_loss(img, txt, groups, torch.tensor(math.log(10))), expected)
    # Image 0 moving onto its paraphrase (text 1) is not penalised as it would be for a negative.
    towards_paraphrase = F.normalize(img[0] + 2 * txt[1], dim=-1)
    moved = torch.stack([towards_paraphrase, img[1], img[2]])
    plain = lambda x: contrastive_loss(x, txt, torch.arange(3), torch.tensor(math.log(10)))
    grouped = lambda x: contrastive_loss(x, txt, groups, torch.tensor(math.log(10)))
    assert grouped(moved) - grouped(img) < plain(moved) - plain(img)


def test_exact_duplicates_alone_change_nothing():
    # Identical captions have identical embeddings: grouping them gives plain CLIP loss exactly.
    torch.manual_seed(1)
    img, txt = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    txt[1] = txt[0]
    scale = torch.tensor(math.log(10))
    assert torch.allclose(contrastive_loss(img, txt, torch.tensor([0, 0, 1]), scale),
                          contrastive_loss(img, txt, torch.arange(3), scale))


def test_caption_batches_are_a_function_of_the_step_and_shard():
    a_images, a_captions = ToyWorld().caption_batch(3, 4, 64)
    b_images, b_captions = ToyWorld().caption_batch(3, 4, 64)
    assert torch.equal(a_images, b_images) and a_captions == b_captions
    assert a_images.shape == (4, 3, 64, 64)
    halves = [ToyWorld().caption_batch(3, 4, 64, share, 2) for share in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), a_images) and halves[0][1] + halves[1][1] == a_captions
    tokens = WordTokenizer(vocabulary())(a_captions)  # every caption is in the vocabulary
    assert tokens.shape == (4, 32)


def _train(run_dir, interrupt_at: int | None = None) -> torch.nn.Module:
    """Train the tiny toy CLIP for 4 steps; raise KeyboardInterrupt (as Ctrl-C would) at ``interrupt_at``."""
    config = ToyClipConfig.tiny()
    tokenizer = WordTokenizer(vocabulary(), config.context_length)
    torch.manual_seed(0)
    model = build_toy_clip(config, tokenizer.vocab_size)

    def step_loss(step):
        if step == interrupt_at:
            raise KeyboardInterrupt
        images, captions = ToyWorld().caption_batch(step, config.batch_size, config.image_size)
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
        return contrastive_loss(img, txt, caption_groups(captions), model.logit_scale), {}

    fit(model, step_loss, config.train, run_dir)
    return model


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    straight = _train(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", interrupt_at=3)  # Ctrl-C during step 3: steps 0-2 are saved
    resumed = _train(tmp_path / "resumed")  # the same command again picks up from last.pt
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["step"] for r in read_log(tmp_path / "resumed" / "train.log")] == [2, 4]


def test_lr_schedule():
    config = TrainConfig(steps=100, warmup_steps=10)
    assert lr_factor(0, config) == 0.1 and lr_factor(9, config) == 1.0
    assert lr_factor(99, config) < 0.01
    poly = TrainConfig(steps=100, warmup_steps=0, schedule="poly")
    assert math.isclose(lr_factor(50, poly), 0.5 ** 0.9)


def test_stochastic_severance_is_drawn_from_the_step_and_keeps_the_model_clip():
    from deop_lite.severance import severed_image_embedding
    from deop_lite.toyclip import stochastic_severance
    draws = [stochastic_severance(step, 4, 0.5) for step in range(200)]
    assert draws == [stochastic_severance(step, 4, 0.5) for step in range(200)]  # a resumed run draws the same
    assert 0.4 < np.mean([len(d.alphas) for d in draws]) / 4 < 0.6 and stochastic_severance(3, 4, 0.0) == NONE
    model = build_toy_clip(ToyClipConfig.tiny(), WordTokenizer(vocabulary()).vocab_size).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(severed_image_embedding(model.visual, image, NONE), model.encode_image(image), atol=1e-5)
        assert not torch.allclose(severed_image_embedding(model.visual, image, Severance("gps", {0: 1.0})),
                                  model.encode_image(image))


def test_the_gate_scores_one_pass_and_crops_on_the_same_ground_truth_masks(toy_clip):
    from deop_lite.toyclip import GATE_SEVERANCE, ground_truth_gate
    from deop_lite.toyworld import THING_CLASSES
    rows = ground_truth_gate(toy_clip, scenes=2)
    assert list(rows) == [f"one pass, {name}" for name in GATE_SEVERANCE] + ["multi-pass crops"]
    for row in rows.values():
        assert {"seen", "unseen", "hIoU", "things"} <= set(row) and set(THING_CLASSES) <= set(row["IoU"])
    assert rows["one pass, stock"]["IoU"] != rows["one pass, GPS α=1, all layers"]["IoU"]


def test_the_pre_training_stage_writes_what_load_clip_reads(tmp_path):
    from deop_lite.clip import load_clip
    from deop_lite.stages import main
    out = tmp_path / "clip.safetensors"
    main(["train", "clip", "--tiny", "--run-dir", str(tmp_path / "run"), "--out", str(out)])
    clip = load_clip("toy", pretrained=out)
    assert clip.templates == ToyWorld.prompt_templates and clip.tokenizer.vocabulary == vocabulary()
    assert (tmp_path / "clip_train.log").exists()
