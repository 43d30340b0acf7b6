"""One resumable training loop for every stage: AdamW, warm-up + cosine or poly schedule, gradient
clipping, fixed-format logs, progress bar, checkpoints on a timer and on Ctrl-C.

A stage provides ``step_loss(step) -> (loss, metrics)``. Data must be a function of the step (the toy
world is indexed by scene number), so a resumed run sees exactly the batches it would have seen.

Multi-process runs (``torchrun``, see ``deop_lite.realworld``): every process runs ``fit`` on the same
model; the stage's ``step_loss`` calls a ``DistributedDataParallel`` wrapper (:func:`distributed`), whose backward
averages the gradients, so all processes take identical steps; :func:`accumulated_step` adds micro-batches.
Only rank 0 writes logs and checkpoints; checkpoints
do not depend on the number of processes, so a run may resume on another one.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import checks, runtime
from .checks import CheckpointError, CheckpointMissing, atomic_path


@dataclass
class TrainConfig:
    """Optimisation settings shared by all stages."""
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.1  # on weight matrices only; biases, norms and embeddings are not decayed
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine", or "poly": (1 - t)^0.9 as in DeOP's detectron2 configs
    grad_clip: float = 1.0
    log_every: int = 50
    checkpoint_every: int = 250  # also when evaluation runs
    seed: int = 0
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # name prefix -> lr factor, e.g. {"backbone.": 0.1}

    def __post_init__(self):
        if self.schedule not in ("cosine", "poly"):
            raise ValueError(f"schedule must be 'cosine' or 'poly', got {self.schedule!r}")


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine or poly decay to 0."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * t)) if config.schedule == "cosine" else (1 - t) ** 0.9


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on tensors with 2+ dims except embeddings; the
    learning rate scaled by ``config.lr_multipliers`` for parameters whose name starts with a given prefix."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = p.ndim >= 2 and "embedding" not in name
            factor = next((f for prefix, f in config.lr_multipliers.items() if name.startswith(prefix)), 1.0)
            groups.setdefault((decay, factor), []).append(p)
    return torch.optim.AdamW([{"params": params, "weight_decay": config.weight_decay if decay else 0.0,
                               "lr": config.lr * factor} for (decay, factor), params in sorted(groups.items())],
                             lr=config.lr)


def rank() -> int:
    """This process's rank in a distributed run, else 0."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def step_seed(seed: int, step: int) -> int:
    """The seed of torch's generator during ``step`` (of this process's rank): dropout and whatever else a step
    draws come from the step's number, as its data does, so a resumed run draws exactly what it would have."""
    return (seed * 1_000_003 + step) * 1_009 + rank()


class StopRequest:
    """Ctrl-C (SIGINT) during training, turned from an exception anywhere into a request that the loop reads
    between steps: the step under way finishes, so the checkpoint always holds a whole number of steps. A
    second Ctrl-C stops at once, without saving (the last checkpoint stays intact). Outside the main thread,
    where Python delivers no signals, Ctrl-C keeps its default behaviour."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if rank() == 0:
            print("\nCtrl-C: stopping after this step and saving (press it again to stop now, without saving).",
                  file=sys.stderr, flush=True)

    def agreed(self, device: torch.device) -> bool:
        """Whether to stop now; in a multi-process run, as soon as any process was asked (all stop together)."""
        if world_size() == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def fit(model: nn.Module, step_loss: Callable[[int], tuple[torch.Tensor, dict]], config: TrainConfig,
        run_dir: str | Path, evaluate: Callable[[], dict] | None = None, stop_at: int | None = None) -> list[dict]:
    """Train ``model``, resuming from ``run_dir/last.pt`` when it exists.

    A resumed run ends with exactly the weights of an uninterrupted one: a checkpoint holds whole steps (Ctrl-C
    finishes the step under way, :class:`StopRequest`), and each step seeds torch's generator from its number
    (:func:`step_seed`), so dropout draws the same masks either way. A full disk raises ``checks.DiskFull``
    naming the last checkpoint, which stays intact.

    Args:
        model: the module; only parameters with ``requires_grad`` are optimised.
        step_loss: step -> (scalar loss, dict of floats to log). Called in train mode.
        config: optimisation settings.
        run_dir: where ``last.pt`` (model, optimiser, history) and ``train.log`` go.
        evaluate: optional, called in eval mode under no_grad every ``checkpoint_every`` steps and at the
            end; its dict is logged too.
        stop_at: leave after this many steps with a checkpoint (a job with a time limit); running again
            resumes. The schedule is still the one of ``config.steps``.
    Returns:
        The history: one dict per log line (``step``, ``loss``, ``lr``, ... and evaluation results).
    Raises:
        KeyboardInterrupt: after Ctrl-C, once the checkpoint of the last whole step is saved.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "last.pt"
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    start, history = 0, []
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["step"], state["history"]
        if rank() == 0:
            print(f"Found {checkpoint} at step {start}/{config.steps}: resuming")
            with atomic_path(run_dir / "train.log") as tmp:  # the log as of the checkpoint: no line written twice
                tmp.write_text("".join(format_record(record, config.steps) + "\n" for record in history))
    saved_step = start if checkpoint.exists() else None
    main_process = rank() == 0
    device = next(model.parameters()).device

    def intact() -> str:
        return ("no checkpoint was saved yet" if saved_step is None
                else f"the last checkpoint ({checkpoint}, step {saved_step}) is intact")

    def save(step: int) -> None:
        nonlocal saved_step
        if main_process and step != saved_step:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "scheduler": scheduler.state_dict(), "history": history, "config": asdict(config)}
            with atomic_path(checkpoint, saved=intact()) as tmp:  # an interrupt never leaves half a file
                torch.save(state, tmp)
        saved_step = step

    params = [p for p in model.parameters() if p.requires_grad]
    done, tic = start, time.perf_counter()
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    try:
        with (open(run_dir / "train.log", "a") if main_process else open(os.devnull, "w")) as log, \
                StopRequest() as stop:
            for step in tqdm(range(start, end), initial=start, total=config.steps,
                             disable=runtime.CI or not main_process, desc="train", mininterval=2):
                model.train()
                torch.manual_seed(step_seed(config.seed, step))
                optimizer.zero_grad(set_to_none=True)  # before step_loss: it may accumulate micro-batches
                loss, metrics = step_loss(step)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                done = step + 1
                if done % config.log_every == 0 or done == config.steps:
                    record = {"step": done, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                              "grad_norm": grad_norm.item(), **metrics,
                              "s_per_step": (time.perf_counter() - tic) / (done - start)}
                    if evaluate is not None and main_process and (done % config.checkpoint_every == 0
                                                                 or done == config.steps):
                        model.eval()
                        with torch.no_grad():
                            record.update(evaluate())
                    history.append(record)
                    log.write(format_record(record, config.steps) + "\n")
                    log.flush()
                if done % config.checkpoint_every == 0:
                    save(done)
                if stop.agreed(device):
                    save(done)
                    if main_process:
                        print(f"Interrupted: saved {checkpoint} at step {done}; run the same command again to resume.")
                    raise KeyboardInterrupt
    except OSError as error:  # the log, on a full disk (a checkpoint raises DiskFull itself)
        if checks.is_disk_full(error) and not isinstance(error, checks.DiskFull):
            raise checks.DiskFull(checks.disk_full_message(run_dir / "train.log", intact())) from error
        raise
    save(max(start, end))
    if world_size() > 1:
        dist.barrier()  # the other processes wait for rank 0's checkpoint
    model.eval()
    return history


def distributed(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when several processes run, else itself."""
    if world_size() == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def accumulated_step(micro_loss: Callable[[int, int], tuple[torch.Tensor, dict]], ddp: nn.Module,
                     accumulate: int) -> tuple[torch.Tensor, dict]:
    """Run one optimiser step's micro-batches for :func:`fit`.

    ``micro_loss(share, shares)`` computes the loss of this process's share ``share`` of the global batch
    cut into ``shares`` pieces (``world.World.training_batch``'s share and shares). All but the last
    micro-batch are back-propagated here without gradient synchronisation; the last is returned for
    ``fit`` to back-propagate, which makes DDP average the accumulated gradients over processes.

    The returned tensor's *gradient* is the last micro-batch's loss / A; its *value* is the mean loss over
    every micro-batch of every process (the number the log should show); metrics are averaged the same way.
    """
    shares, first = world_size() * accumulate, rank() * accumulate
    values, logs = [], []
    for micro in range(accumulate):
        last = micro == accumulate - 1
        sync = contextlib.nullcontext() if last or not hasattr(ddp, "no_sync") else ddp.no_sync()
        with sync:
            loss, metrics = micro_loss(first + micro, shares)
            loss = loss / accumulate
            if not last:
                loss.backward()
        values.append(loss.detach() * accumulate)
        logs.append(metrics)
    means = [sum(float(m[k]) for m in logs) / accumulate for k in logs[0]]
    summary = torch.tensor([torch.stack(values).mean().item(), *means], dtype=torch.float64)
    if world_size() > 1:
        dist.all_reduce(summary)
        summary /= world_size()
    return loss + (summary[0].to(loss) - loss).detach(), dict(zip(logs[0], summary[1:].tolist()))


def format_record(record: dict, total_steps: int) -> str:
    """One fixed-format log line: ``step   500/2000 | loss 1.2345 | lr 9.1e-04 | ...``."""
    parts = [f"step {record['step']:5d}/{total_steps}"]
    for key, value in record.items():
        if key != "step":
            parts.append(f"{key} {value:.3e}" if key == "lr" else f"{key} {value:.4f}")
    return " | ".join(parts)


def read_log(path: str | Path) -> list[dict]:
    """Parse a ``train.log`` written by :func:`fit` back into a history (for plots)."""
    history = []
    for line in Path(path).read_text().splitlines():
        fields = [f.strip().split(" ", 1) for f in line.split("|")]
        record = {k: float(v) for k, v in fields[1:]}
        record["step"] = int(fields[0][1].split("/")[0])
        history.append(record)
    return history


# ----------------------------------------------------------------------------------------------------
# Shipped weights: one safetensors file with JSON metadata (config, training summary, ...)

def save_weights(model: nn.Module, path: str | Path, metadata: dict, saved: str = "nothing was left half-written") -> None:
    """Write ``model``'s state dict and JSON-serialisable ``metadata`` to a safetensors file, atomically
    (``saved``: what a full disk leaves intact, for its one-line message)."""
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, saved) as tmp:  # creates the folder too
        save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})


def ship_log(run_dir: str | Path, out: str | Path, saved: str = "nothing was left half-written") -> None:
    """Copy ``run_dir/train.log`` beside a shipped file ``out`` as ``<stem>_train.log`` (atomically)."""
    out = Path(out)
    with atomic_path(out.with_name(out.stem + "_train.log"), saved) as tmp:
        shutil.copy(Path(run_dir) / "train.log", tmp)


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata stored beside the weights by :func:`save_weights`."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def load_weights(path: str | Path, build: Callable[[dict], nn.Module], retrain_command: str) -> tuple[nn.Module, dict]:
    """Load a file written by :func:`save_weights`: ``build(metadata)`` makes the module, then the weights
    are loaded strictly. Missing or corrupt files raise errors that say how to restore or re-train them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise CheckpointMissing(f"no checkpoint at {path}. Restore the shipped one with `git checkout -- {path.name}` "
                                f"(in data/), or train it with `{retrain_command}`.")
    try:
        metadata = read_metadata(path)
        model = build(metadata)
        model.load_state_dict(load_file(str(path)))
    except (SafetensorError, KeyError, ValueError, TypeError, RuntimeError, json.JSONDecodeError, OSError) as error:
        raise CheckpointError(f"the checkpoint {path} is unreadable or of another kind ({type(error).__name__}: "
                           f"{str(error)[:200]}). If it is a shipped file, restore it with `git checkout -- "
                           f"{path.name}` (a git-lfs pointer? run `git lfs pull`), or re-train it with "
                           f"`{retrain_command}`.") from error
    return model.eval(), metadata
