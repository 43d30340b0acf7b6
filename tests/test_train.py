"""The training loop's promises: a run stopped by Ctrl-C or a full disk resumes to exactly the weights of an
uninterrupted run, and a full disk costs one line and nothing already saved."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from deop_lite import checks
from deop_lite.train import TrainConfig, fit


def _train_deop_command(run_dir, steps: int) -> list[str]:
    return [sys.executable, "-m", "deop_lite.stages", "train", "deop", "--variant", "deop", "--tiny", "--steps", str(steps),
            "--run-dir", str(run_dir / "run"), "--out", str(run_dir / "deop.safetensors")]


def test_ctrl_c_then_the_same_command_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    """As a user does it: the CLI in a subprocess, SIGINT once its first checkpoint exists, the same command
    again. ``deop`` trains CAL with dropout 0.1, so this also checks that dropout draws from the step."""
    steps = 40
    subprocess.run(_train_deop_command(tmp_path / "straight", steps), check=True, capture_output=True)
    run = tmp_path / "stopped"
    process = subprocess.Popen(_train_deop_command(run, steps), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    while not (run / "run" / "last.pt").exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "Interrupted: saved" in stdout and "python -m deop_lite.stages: interrupted" in stderr
    stopped_at = int(stdout.split("Interrupted: saved")[1].split("at step ")[1].split(";")[0])
    assert 0 < stopped_at < steps  # stopped mid-run, on a whole step
    resumed = subprocess.run(_train_deop_command(run, steps), check=True, capture_output=True, text=True)
    assert f"at step {stopped_at}/{steps}: resuming" in resumed.stdout
    straight, stopped = load_file(tmp_path / "straight" / "deop.safetensors"), load_file(run / "deop.safetensors")
    assert straight.keys() == stopped.keys()
    for name in straight:
        assert torch.equal(straight[name], stopped[name]), name


class _Dropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.linear(x)).square().mean()


def _fit(run_dir, stop_at=None, **overrides) -> nn.Module:
    torch.manual_seed(0)
    model = _Dropout()
    config = TrainConfig(steps=6, warmup_steps=0, log_every=1, checkpoint_every=2, **overrides)
    inputs = torch.randn(6, 4, 8, generator=torch.Generator().manual_seed(1))  # the data of each step
    fit(model, lambda step: (model(inputs[step]), {}), config, run_dir, stop_at=stop_at)
    return model


def test_dropout_draws_from_the_step_so_a_resumed_run_matches(tmp_path):
    straight = _fit(tmp_path / "straight")
    _fit(tmp_path / "resumed", stop_at=3)  # a checkpoint at step 3, off the checkpoint_every grid
    torch.manual_seed(123)  # whatever the global generator holds when the run resumes
    resumed = _fit(tmp_path / "resumed")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    other_seed = _fit(tmp_path / "other", seed=1)  # the masks come from the seed and the step, not a constant
    assert not torch.equal(straight.linear.weight, other_seed.linear.weight)


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch):
    """torch.save's C++ writer fails on a full disk with this RuntimeError (seen on a 7 MB tmpfs)."""
    real_save, saves = torch.save, []

    def save_until_the_disk_is_full(obj, path, *args, **kwargs):
        saves.append(obj["step"])
        if len(saves) == 2:
            real_save(obj, path)  # a half-written temporary file...
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4290")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(checks.DiskFull) as error:
        _fit(tmp_path)
    message = str(error.value)
    assert message.startswith(f"no space left on device while writing {tmp_path / 'last.pt'};")
    assert f"the last checkpoint ({tmp_path / 'last.pt'}, step 2) is intact" in message and "\n" not in message
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "train.log"]  # ...removed; the good checkpoint kept
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(torch, "save", real_save)
    for (name, a), b in zip(_fit(tmp_path / "straight").state_dict().items(), _fit(tmp_path).state_dict().values()):
        assert torch.equal(a, b), name  # room made, the same call resumes from step 2 to the same weights


def test_every_writer_turns_a_full_disk_into_one_line(tmp_path):
    out = tmp_path / "figure.png"
    out.write_text("the previous figure")
    with pytest.raises(checks.DiskFull, match=r"^no space left on device while writing .*figure\.png; nothing was "
                                              r"left half-written: free space and run the same command again$"):
        with checks.atomic_path(out) as tmp:
            tmp.write_text("half a fig")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert out.read_text() == "the previous figure" and os.listdir(tmp_path) == ["figure.png"]

    @checks.command("deop-lite segment")
    def main():
        raise checks.DiskFull(checks.disk_full_message(out))

    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 2
