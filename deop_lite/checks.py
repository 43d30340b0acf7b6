"""Checks of what a user hands the package: class lists, images, masks, counts, folders; and the command
lines' one-line errors.

Every check raises :class:`InputError` (a ``ValueError``) before any computation, with one line that says
what was wrong and what to do. The other mistakes a user can make are named subclasses of it, raised
where they are found: ``datasets.DatasetNotFound`` (a missing or unprepared data folder),
``clip.ClipWeightsUnavailable`` and :class:`CheckpointError` (missing, corrupt or mismatched weights).
One condition is not a mistake but has a fix that only the user can make: :class:`DiskFull`, raised by
:func:`atomic_path` when the disk fills while a file is written (what was saved before stays intact).
:func:`command` turns all of them into one line on stderr and exit status 2 for every command line;
anything else is a bug and keeps its traceback.

>>> class_names(" ladybird, Grass ,sky ", vocabulary=("sky", "grass", "ladybird"))
['ladybird', 'grass', 'sky']
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch


class InputError(ValueError):
    """A user's mistake (bad argument, class list, image, file or folder); the message says what to do."""


class CheckpointError(InputError, RuntimeError):
    """A weights file that is unreadable, or of another model, variant or shape than asked for."""


class CheckpointMissing(CheckpointError, FileNotFoundError):
    """No weights file where one was expected."""


class DiskFull(InputError, OSError):
    """The disk filled while a file was written; nothing half-written was left in its place."""


# ----------------------------------------------------------------------------------------------------
# Class lists

def class_names(names: str | Sequence[str], vocabulary: Sequence[str] | None = None) -> list[str]:
    """A clean class list: each name stripped of surrounding spaces, in the given order.

    Args:
        names: a list of names, or one string of comma-separated names ("ladybird, grass, sky").
        vocabulary: the names a model knows (the toy world's 16), or None for any name (real CLIP).
            With a vocabulary, names are matched to it ignoring case ("Ladybird" -> "ladybird").
    Raises:
        InputError: for an empty list, a blank entry, a name given twice (ignoring case and spaces), or a
            name outside the vocabulary.
    """
    if isinstance(names, str):
        names = names.split(",")
    elif not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise InputError(f"class names must be a list of strings, got {names!r}")
    cleaned = [n.strip() for n in names]
    if not any(cleaned):
        raise InputError("no class names given: name at least one class, e.g. \"ladybird, grass, sky\"")
    blank = [i + 1 for i, n in enumerate(cleaned) if not n]
    if blank:
        raise InputError(f"class name number {', '.join(map(str, blank))} of {len(cleaned)} is blank: "
                         f"remove the extra comma(s) from {', '.join(cleaned)!r}")
    if vocabulary is not None:
        known = {v.lower(): v for v in vocabulary}
        unknown = [n for n in cleaned if n.lower() not in known]
        if unknown:
            raise InputError(f"unknown class name(s) {unknown}; this model knows: {', '.join(vocabulary)}")
        cleaned = [known[n.lower()] for n in cleaned]
    seen, twice = set(), []
    for name in cleaned:
        if name.lower() in seen:
            twice.append(name)
        seen.add(name.lower())
    if twice:
        raise InputError(f"class(es) {sorted(set(twice))} named more than once (case and spaces ignored): name each "
                         "class once, or two entries would compete for the same pixels")
    return cleaned


# ----------------------------------------------------------------------------------------------------
# Tensors

def image_batch(image_raw, name: str = "image_raw", min_side: int = 1, multiple_of: int = 1,
                in_unit_range: bool = True) -> None:
    """Check a batch of images: a float tensor (B, 3, H, W), B >= 1, H and W >= ``min_side`` and multiples of
    ``multiple_of``, values in [0, 1] (raw pixels; ``in_unit_range=False`` for normalised images)."""
    if not isinstance(image_raw, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor (B, 3, H, W), got {type(image_raw).__name__}; "
                         "convert with torchvision.transforms.functional.to_tensor(pil_image)[None]")
    shape = tuple(image_raw.shape)
    if image_raw.ndim != 4 or shape[1] != 3:
        hint = "add a batch dimension with image[None]" if image_raw.ndim == 3 and shape[0] == 3 else \
            "convert grayscale/RGBA images to RGB"
        raise InputError(f"expected {name} of shape (B, 3, H, W), got {shape}; {hint}")
    if shape[0] == 0:
        raise InputError(f"{name} is an empty batch (B = 0): pass at least one image")
    if not image_raw.is_floating_point():
        raise InputError(f"{name} must be float in [0, 1], got {image_raw.dtype}; divide uint8 pixels by 255 "
                         "(image.float() / 255)")
    height, width = shape[-2:]
    if min(height, width) < min_side:
        raise InputError(f"{name} is {height}x{width}; this model needs at least {min_side}x{min_side} pixels: "
                         "resize the image up")
    if height % multiple_of or width % multiple_of:
        raise InputError(f"{name} height and width must be multiples of {multiple_of}, got {height}x{width}; pad or "
                         f"resize it (e.g. to {max(multiple_of, height // multiple_of * multiple_of)}x"
                         f"{max(multiple_of, width // multiple_of * multiple_of)})")
    if in_unit_range:
        low, high = image_raw.min().item(), image_raw.max().item()
        if low < 0 or high > 1 or image_raw.isnan().any():
            raise InputError(f"{name} values must lie in [0, 1] (raw pixels), got [{low:.3g}, {high:.3g}]; "
                             "divide 8-bit pixels by 255, and pass raw images, not CLIP-normalised ones")


def mask_batch(mask_probs, image_raw: torch.Tensor, name: str = "mask_probs") -> None:
    """Check masks to classify: a float tensor (B, N, H, W) of probabilities in [0, 1], N >= 1, with the
    batch size and the height and width of ``image_raw`` (B, 3, H, W)."""
    if not isinstance(mask_probs, torch.Tensor) or mask_probs.ndim != 4:
        shape = tuple(mask_probs.shape) if isinstance(mask_probs, torch.Tensor) else type(mask_probs).__name__
        raise InputError(f"expected {name} of shape (B, N, H, W), got {shape}; one (N, H, W) stack per image, "
                         "batched with masks[None]")
    expected = (image_raw.shape[0], image_raw.shape[-2], image_raw.shape[-1])
    got = (mask_probs.shape[0], mask_probs.shape[-2], mask_probs.shape[-1])
    if got != expected:
        raise InputError(f"{name} {tuple(mask_probs.shape)} does not fit the images {tuple(image_raw.shape)}: "
                         f"masks need the same batch size and the image's height and width {expected}")
    if mask_probs.shape[1] == 0:
        raise InputError(f"{name} holds no masks (N = 0): pass at least one mask per image")
    if not mask_probs.is_floating_point():
        raise InputError(f"{name} must be float probabilities in [0, 1], got {mask_probs.dtype}; use masks.float()")
    low, high = mask_probs.min().item(), mask_probs.max().item()
    if low < 0 or high > 1 or mask_probs.isnan().any():
        raise InputError(f"{name} must be probabilities in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                         "apply .sigmoid() to mask logits")


# ----------------------------------------------------------------------------------------------------
# Command-line arguments: counts, files and folders

def known_fields(config_class, values: dict, where: str) -> dict:
    """``values`` without the keys that ``config_class`` (a dataclass) does not have, with a note naming them:
    checkpoints written before an option was removed still load, as the configuration that they were trained with."""
    from dataclasses import fields
    names = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        print(f"note: {where} has settings this version no longer has, ignored: {', '.join(unknown)}", file=sys.stderr)
    return {k: v for k, v in values.items() if k in names}


def at_least(value: int, minimum: int, what: str) -> int:
    """``value`` if it is at least ``minimum``, else an InputError naming ``what`` (e.g. "--scenes")."""
    if value < minimum:
        raise InputError(f"{what} must be at least {minimum}, got {value}")
    return value


def output_folder(path: str | Path, what: str = "--out") -> Path:
    """A folder that can be written: created if missing; an InputError if it is a file or not writable."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder: choose a folder name (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the folder {what} {path} ({error.strerror}): choose another place") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {what} {path} (permission denied): choose a folder you can write to")
    return path


def input_file(path: str | Path, what: str) -> Path:
    """An existing file; an InputError if it is missing or a folder."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{what} {path} " + ("is a folder; a file is expected" if path.is_dir() else "does not exist"))
    return path


def input_folder(path: str | Path, what: str) -> Path:
    """An existing folder; an InputError if it is missing or a file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise InputError(f"{what} {path} is a file; a folder is expected")
    return path


_DISK_FULL_SIGNS = ("no space left", "storagefull", "unexpected pos", "file write failed", "disk quota")
"""How a full disk shows in the errors of ``torch.save`` (its C++ writer: "unexpected pos", "file write
failed"), safetensors ("StorageFull") and the OS (errno ENOSPC, EDQUOT)."""


def is_disk_full(error: BaseException) -> bool:
    """True when ``error`` says the disk (or the user's quota) is full."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(sign in str(error).lower() for sign in _DISK_FULL_SIGNS)


def disk_full_message(path: str | Path, saved: str = "nothing was left half-written") -> str:
    """The one line for a full disk: what was being written, what is intact, what to do."""
    return f"no space left on device while writing {path}; {saved}: free space and run the same command again"


@contextlib.contextmanager
def atomic_path(path: str | Path, saved: str = "nothing was left half-written") -> Iterator[Path]:
    """Write a file through a temporary name beside it, renamed over ``path`` only when the block succeeds:
    an interrupt or a full disk never leaves a half-written file in place of a good one.

    A full disk raises :class:`DiskFull`, whose message names ``path`` and says ``saved`` (what is intact).

    >>> with atomic_path("out.png") as tmp:       # doctest: +SKIP
    ...     fig.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as error:
        if is_disk_full(error):
            raise DiskFull(disk_full_message(path, saved)) from error
        raise
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        tmp.replace(path)
    except (OSError, RuntimeError) as error:
        if is_disk_full(error):
            raise DiskFull(disk_full_message(path, saved)) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------
# One line and exit status 2 for a user's mistake, in every command line

def command(prog: str) -> Callable:
    """Decorate a command line's ``main(argv)``: a user's mistake (:class:`InputError` and its subclasses)
    prints ``<prog>: error: <message>`` on one line and exits with status 2, as argparse does for bad
    options; Ctrl-C prints one line and exits with 130 (whatever was interrupted has saved what it can)."""
    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except InputError as error:
                message = " ".join(str(error).split())  # one line
                print(f"{prog}: error: {message}", file=sys.stderr)
                raise SystemExit(2) from None
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                raise SystemExit(130) from None
        return run
    return decorate
