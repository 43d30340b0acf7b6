"""The toy world: a procedural, seeded, zero-download stand-in for COCO-Stuff.

A scene is a canvas of *stuff* textures (sky, grass, ...) filling regions, with *things* (shapes in
random colours, sizes and rotations) on top. Every scene comes with a pixel label map and a caption
naming what is in it. A fixed seen/unseen split mirrors the paper's zero-shot protocol (ZS3): training
labels hide the unseen classes (their pixels become ``IGNORE_INDEX``, the images are kept), evaluation
uses every class.

Scenes are a pure function of ``(split, seed, index)``: the same triple gives byte-identical images,
labels and captions, on any machine, so datasets need no files and random access is free.

>>> scene = make_scene(np.random.default_rng(0))
>>> scene.image.shape, scene.image.dtype, scene.label.shape
((64, 64, 3), dtype('uint8'), (64, 64))
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from . import checks
from .clip import split_words
from .metrics import IGNORE_INDEX
from .proposals import Refinement
from .world import World, shard

STUFF_CLASSES = ("sky", "grass", "water", "sand", "brick", "wood", "snow", "road")
THING_CLASSES = ("ladybird", "flower", "house", "fish", "car", "mushroom", "butterfly", "clock")
CLASS_NAMES = STUFF_CLASSES + THING_CLASSES
"""All 16 classes; a class's label id is its index here."""
UNSEEN_CLASSES = ("grass", "road", "fish", "car")
"""Never labelled in segmentation training (12 seen / 4 unseen, both stuff and things among them;
COCO-Stuff's unseen list also holds grass and road)."""
SEEN_CLASSES = tuple(c for c in CLASS_NAMES if c not in UNSEEN_CLASSES)

COLOURS = {  # named colours of things; the names may appear in captions
    "red": (215, 40, 40), "orange": (240, 140, 20), "yellow": (240, 215, 40), "green": (40, 170, 60),
    "blue": (40, 80, 220), "purple": (130, 50, 170), "pink": (240, 120, 180), "white": (245, 245, 245),
    "black": (25, 25, 25), "brown": (140, 85, 45),
}
_COLOUR_TABLE = np.array(list(COLOURS.values()), np.float32)  # (10, 3): the colours of things and stuff of no class
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
SCENE_KINDS = ("scene", "stuff", "object")
_TEXTURE_SIZE = 256  # side of each precomputed texture tile
_TEXTURE_VARIANTS = 4  # tiles per stuff class


def check_class_names(names) -> list[str]:
    """``names`` (a list, or one comma-separated string) as a clean list of toy-world classes, matched ignoring
    case and spaces; raises ``checks.InputError`` for an empty list, blank entries, duplicates and unknown names."""
    return checks.class_names(names, vocabulary=CLASS_NAMES)


# ----------------------------------------------------------------------------------------------------
# Stuff: texture tiles, computed once (seeded) and cropped per scene.

def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """(size, size) float field in [0, 1] with features about ``cell`` pixels wide."""
    coarse = rng.normal(size=(size // cell + 3, size // cell + 3))
    field_ = ndimage.zoom(coarse, cell, order=3)[cell:cell + size, cell:cell + size]
    return (field_ - field_.min()) / (np.ptp(field_) + 1e-8)


def _stretched_noise(rng: np.random.Generator, size: int, sy: int, sx: int) -> np.ndarray:
    """(size, size) noise in [0, 1] stretched ``sy`` times vertically and ``sx`` times horizontally."""
    coarse = rng.random((size // sy + 1, size // sx + 1))
    return np.kron(coarse, np.ones((sy, sx)))[:size, :size]


def _texture(name: str, rng: np.random.Generator, s: int) -> np.ndarray:
    """One (s, s, 3) float texture tile in [0, 255] for stuff class ``name``."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float64)
    fine = rng.random((s, s))
    if name == "sky":
        t = (y / s)[..., None]
        base = (1 - t) * np.array([70, 130, 225]) + t * np.array([160, 200, 245])
        clouds = np.clip((_smooth_noise(rng, s, 24) - 0.55) * 4, 0, 1)[..., None]
        return base * (1 - clouds) + np.array([250, 250, 252]) * clouds
    if name == "grass":
        blades = _stretched_noise(rng, s, 7, 1)
        shade = 0.55 + 0.35 * blades + 0.2 * _smooth_noise(rng, s, 16)
        return shade[..., None] * np.array([70, 150, 45])
    if name == "water":
        warp = _smooth_noise(rng, s, 32)
        ripples = 0.5 + 0.5 * np.sin(2 * np.pi * (y / 7 + 1.5 * warp))
        highlight = (ripples > 0.85)[..., None] * 70
        return (0.8 + 0.2 * ripples)[..., None] * np.array([30, 95, 175]) + highlight
    if name == "sand":
        dunes = 0.5 + 0.5 * np.sin(2 * np.pi * ((x + 0.6 * y) / 40 + _smooth_noise(rng, s, 32)))
        shade = 0.85 + 0.1 * dunes + 0.12 * (fine - 0.5)
        return shade[..., None] * np.array([225, 195, 135])
    if name == "brick":
        row = (y // 8).astype(int)
        col = ((x + 8 * (row % 2)) // 16).astype(int)
        jitter = rng.uniform(0.8, 1.1, size=(row.max() + 1, col.max() + 1))[row, col]
        mortar = ((y % 8) < 1.5) | (((x + 8 * (row % 2)) % 16) < 1.5)
        bricks = (jitter * (0.92 + 0.16 * fine))[..., None] * np.array([165, 65, 45])
        return np.where(mortar[..., None], np.array([195, 190, 180]), bricks)
    if name == "wood":
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (x / 6 + 2.5 * _smooth_noise(rng, s, 48)))
        shade = 0.7 + 0.3 * grain + 0.08 * (fine - 0.5)
        return shade[..., None] * np.array([160, 105, 55])
    if name == "snow":
        shade = 0.93 + 0.06 * _smooth_noise(rng, s, 20)
        sparkle = (fine > 0.985)[..., None] * 30
        return shade[..., None] * np.array([235, 242, 252]) + sparkle - 10 * (fine < 0.02)[..., None]
    if name == "road":
        asphalt = (0.8 + 0.4 * fine + 0.15 * _smooth_noise(rng, s, 12))[..., None] * np.array([70, 70, 76])
        dashes = ((y % 48) > 40) & ((x % 32) < 18)  # dashed lane markings
        return np.where(dashes[..., None], np.array([235, 210, 60]), asphalt)
    raise KeyError(name)


@lru_cache(maxsize=1)
def texture_bank() -> dict[str, np.ndarray]:
    """Stuff class -> (variants, S, S, 3) uint8 tiles. Seeded: identical on every machine."""
    rng = np.random.default_rng(20231001)
    return {name: np.stack([np.clip(_texture(name, rng, _TEXTURE_SIZE), 0, 255).astype(np.uint8)
                            for _ in range(_TEXTURE_VARIANTS)])
            for name in STUFF_CLASSES}


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """(8, S, S) smooth noise fields used for blob-shaped stuff layouts."""
    rng = np.random.default_rng(7)
    return np.stack([_smooth_noise(rng, _TEXTURE_SIZE, 20) for _ in range(8)]).astype(np.float32)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (size, size) float32."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return y, x


def _crop_tile(rng: np.random.Generator, tiles: np.ndarray, size: int) -> np.ndarray:
    """A random (size, size, 3) uint8 window of a random tile."""
    tile = tiles[rng.integers(len(tiles))]
    oy, ox = rng.integers(0, tile.shape[0] - size + 1, size=2)
    return tile[oy:oy + size, ox:ox + size]


def _stuff_layout(rng: np.random.Generator, n_regions: int, size: int, window=np.s_[:, :]) -> np.ndarray:
    """The ``window`` of a (size, size) int region map with values in [0, n_regions): wavy bands, Voronoi cells or
    blobs laid out on the whole canvas."""
    if n_regions == 1:
        return np.zeros((size, size), np.int64)[window]
    y, x = (g[window] for g in _grid(size))
    kind = rng.choice(["bands", "cells", "blobs"] if n_regions == 2 else ["bands", "cells"])
    if kind == "bands":
        along, across = (x, y) if rng.random() < 0.6 else (y, x)  # horizontal bands are more common
        cuts = np.sort(rng.uniform(0.25, 0.75, size=n_regions - 1)) * size
        if n_regions == 3 and cuts[1] - cuts[0] < 0.2 * size:
            cuts = np.array([0.33, 0.67]) * size
        amp, freq, phase = rng.uniform(0, 0.08 * size), rng.uniform(0.5, 2.5), rng.uniform(0, 2 * np.pi)
        wave = amp * np.sin(2 * np.pi * freq * along / size + phase)
        return np.searchsorted(cuts, across + wave).astype(np.int64)
    if kind == "cells":
        seeds = rng.uniform(0.1, 0.9, size=(n_regions, 2)) * size  # (n, 2) as (y, x)
        dist = (y[None] - seeds[:, 0, None, None]) ** 2 + (x[None] - seeds[:, 1, None, None]) ** 2
        return dist.argmin(0)
    noise = _crop_tile(rng, _noise_bank()[..., None], size)[..., 0]
    return (noise > np.quantile(noise, rng.uniform(0.4, 0.75))).astype(np.int64)[window]


# ----------------------------------------------------------------------------------------------------
# Things: objects assembled from parts, each part an implicit function of the thing's own rotated,
# normalised coordinates (u, v) in [-1, 1] (u to the right, v down). Parts are drawn in the thing's
# coordinates, so they scale with it, as a car's wheels do: a patch of a ladybird (red with black spots)
# looks different from a patch of a mushroom cap (red with white dots), whatever the size.

BLACK, WHITE, GREY = (25, 25, 25), (245, 245, 245), (165, 165, 170)
GLASS, WOOD, ROOF, CREAM = (150, 205, 245), (115, 75, 40), (150, 55, 40), (235, 225, 200)


def _disc(u, v, cu: float, cv: float, r: float) -> np.ndarray:
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


def _ellipse(u, v, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _box(u, v, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _hand(u, v, angle: float, length: float, width: float) -> np.ndarray:
    """A clock hand from the centre towards ``angle`` (radians, clockwise from 12 o'clock)."""
    du, dv = np.sin(angle), -np.cos(angle)
    along, across = u * du + v * dv, np.abs(u * dv - v * du)
    return (along >= -0.08) & (along <= length) & (across <= width)


def _ladybird(u, v, body, rng):
    shell = _ellipse(u, v, 0, 0.12, 0.8, 0.85)
    spots = (_disc(u, v, -0.38, -0.2, 0.17) | _disc(u, v, 0.38, -0.2, 0.17) | _disc(u, v, -0.45, 0.3, 0.17)
             | _disc(u, v, 0.45, 0.3, 0.17) | _disc(u, v, -0.2, 0.68, 0.14) | _disc(u, v, 0.2, 0.68, 0.14))
    midline = (np.abs(u) <= 0.05) & (v >= -0.55)
    return [(_disc(u, v, 0, -0.68, 0.36), BLACK), (shell, body), (shell & (spots | midline), BLACK)]


def _flower(u, v, body, rng):
    radius, angle = np.sqrt(u * u + v * v), np.arctan2(v, u)
    petals = radius <= 0.5 + 0.45 * np.abs(np.cos(3 * angle))  # six lobes
    veins = petals & (radius > 0.3) & (np.abs(np.sin(3 * angle)) < 0.12)
    centre = (240, 200, 40) if body[0] < 200 or body[2] > 100 else (230, 120, 20)
    return [(petals, body), (veins, tuple(0.7 * np.asarray(body))), (radius <= 0.3, centre),
            (_disc(u, v, 0, 0, 0.1), WOOD)]


def _house(u, v, body, rng):
    roof = (v <= -0.1) & (v >= -0.95 + 0.95 * np.abs(u))
    tiles = roof & (np.mod(v + 0.95, 0.22) < 0.06)
    windows = _box(u, v, -0.55, -0.15, 0.05, 0.4) | _box(u, v, 0.15, 0.55, 0.05, 0.4)
    bars = windows & ((np.abs(np.abs(u) - 0.35) < 0.04) | (np.abs(v - 0.225) < 0.04))
    return [(_box(u, v, 0.35, 0.6, -0.85, -0.3), ROOF), (roof, ROOF), (tiles, BLACK),
            (_box(u, v, -0.75, 0.75, -0.1, 0.9), body), (windows, GLASS), (bars, WHITE),
            (_box(u, v, -0.13, 0.13, 0.5, 0.9), WOOD)]


def _fish(u, v, body, rng):
    u = u if rng.random() < 0.5 else -u  # facing left or right
    trunk = _ellipse(u, v, -0.12, 0, 0.68, 0.45)
    tail = (u >= 0.4) & (u <= 0.95) & (np.abs(v) <= 0.9 * (u - 0.4) + 0.05)
    fin = (v <= -0.3) & (v >= -0.6 + 0.9 * np.abs(u + 0.1)) & (u > -0.45) & (u < 0.25)
    stripes = trunk & (np.abs(u + 0.12) > 0.1) & (np.cos(np.pi * 3.2 * (u + 0.12)) > 0.7)
    stripe_colour = BLACK if sum(body) > 500 else WHITE
    return [(tail | fin, tuple(0.75 * np.asarray(body))), (trunk, body), (stripes, stripe_colour),
            (_disc(u, v, -0.55, -0.1, 0.13), WHITE), (_disc(u, v, -0.57, -0.1, 0.065), BLACK)]


def _car(u, v, body, rng):
    u = u if rng.random() < 0.5 else -u  # driving left or right
    cabin = (v >= -0.6) & (v <= -0.05) & (np.abs(u + 0.05) <= 0.4 + 0.5 * (v + 0.6))
    glass = (v >= -0.5) & (v <= -0.12) & (np.abs(u + 0.05) <= 0.32 + 0.5 * (v + 0.5)) & (np.abs(u + 0.05) > 0.05)
    wheels = _disc(u, v, -0.55, 0.45, 0.27) | _disc(u, v, 0.55, 0.45, 0.27)
    hubs = _disc(u, v, -0.55, 0.45, 0.1) | _disc(u, v, 0.55, 0.45, 0.1)
    return [(cabin | _box(u, v, -0.95, 0.95, -0.1, 0.45), body), (glass, GLASS), (wheels, BLACK), (hubs, GREY),
            (_box(u, v, 0.82, 0.95, 0.0, 0.14), (250, 220, 60))]


def _mushroom(u, v, body, rng):
    cap = _ellipse(u, v, 0, 0.05, 0.95, 0.85) & (v <= 0.05)
    dots = (_disc(u, v, 0, -0.55, 0.14) | _disc(u, v, -0.45, -0.3, 0.13) | _disc(u, v, 0.45, -0.3, 0.13)
            | _disc(u, v, -0.2, -0.15, 0.1) | _disc(u, v, 0.25, -0.1, 0.1) | _disc(u, v, -0.72, -0.02, 0.08)
            | _disc(u, v, 0.72, -0.02, 0.08))
    stem = (v >= 0.0) & (v <= 0.95) & (np.abs(u) <= 0.2 + 0.1 * v)
    return [(stem, CREAM), (cap, body), (cap & dots, WHITE), (_box(u, v, -0.85, 0.85, 0.0, 0.08), (200, 175, 140))]


def _butterfly(u, v, body, rng):
    au = np.abs(u)  # mirror symmetric
    wings = _ellipse(au, v, 0.48, -0.3, 0.45, 0.38) | _ellipse(au, v, 0.35, 0.35, 0.32, 0.32)
    inner = _ellipse(au, v, 0.48, -0.3, 0.36, 0.29) | _ellipse(au, v, 0.35, 0.35, 0.24, 0.24)
    return [(wings, BLACK), (inner, body), (_disc(au, v, 0.52, -0.32, 0.16), BLACK),
            (_disc(au, v, 0.52, -0.32, 0.07), WHITE), (_disc(au, v, 0.36, 0.38, 0.09), WHITE),
            (_ellipse(u, v, 0, 0, 0.08, 0.62), BLACK)]


def _clock(u, v, body, rng):
    radius = np.sqrt(u * u + v * v)
    ticks = (radius >= 0.55) & (radius <= 0.72) & (np.abs(np.sin(6 * np.arctan2(u, -v))) < 0.15)
    hour, minute = rng.uniform(0, 2 * np.pi, size=2)
    return [(radius <= 1.0, body), (radius <= 0.8, WHITE), (ticks, BLACK),
            (_hand(u, v, hour, 0.4, 0.07) | _hand(u, v, minute, 0.62, 0.045), BLACK), (radius <= 0.09, BLACK)]


_THINGS = {"ladybird": _ladybird, "flower": _flower, "house": _house, "fish": _fish, "car": _car,
           "mushroom": _mushroom, "butterfly": _butterfly, "clock": _clock}
"""Thing class -> its parts: ``parts(u, v, body colour, rng)`` gives [(inside (h, w) bool, colour)], painted
in order; the label is their union."""
THING_PALETTES = {
    "ladybird": ("red", "orange", "yellow"), "flower": ("pink", "purple", "white", "red", "yellow"),
    "house": ("white", "yellow", "orange", "pink"), "fish": ("orange", "yellow", "blue", "purple"),
    "car": ("red", "blue", "green", "yellow", "white", "black"), "mushroom": ("red", "orange", "brown"),
    "butterfly": ("blue", "orange", "yellow", "purple", "pink"), "clock": ("black", "red", "blue", "green")}
"""The body colours each thing comes in (like a class's real colours: ladybirds are red, orange or yellow)."""
_MAX_ROTATION = {"ladybird": 180, "flower": 30, "house": 8, "fish": 20, "car": 6, "mushroom": 12,
                 "butterfly": 25, "clock": 0}  # degrees; a clock's hands turn instead


def _object_frame(size: int, centre, half: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The window of a (size, size) image that an object of radius ``half`` at ``centre`` (y, x) may cover, and its
    pixels' coordinates in the object's frame, (dy, dx) each (h, w), in units of ``half``. An object may lie
    partly or wholly outside the image: the window holds only what is inside."""
    y0, y1, x0, x1 = np.clip([np.floor(centre[0] - half), np.ceil(centre[0] + half),
                              np.floor(centre[1] - half), np.ceil(centre[1] + half)], 0, size).astype(int)
    gy, gx = _grid(size)
    return np.s_[y0:y1, x0:x1], (gy[y0:y1, x0:x1] - centre[0]) / half, (gx[y0:y1, x0:x1] - centre[1]) / half


def _draw_thing(rng, image, label, name: str, diameter: float, centre, colour) -> None:
    """Paint one thing into ``image`` (H, W, 3) float and ``label`` (H, W) uint8, in place."""
    window, dy, dx = _object_frame(label.shape[0], centre, diameter / 2)  # (h, w) each
    theta = np.deg2rad(rng.uniform(-1, 1) * _MAX_ROTATION[name])
    u, v = np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy
    light = rng.uniform(-0.2, 0.2, size=2)
    shade = (1.0 + light[0] * u - light[1] * v)[..., None]  # (h, w, 1) soft directional lighting
    patch, covered = image[window], np.zeros(u.shape, bool)
    for inside, part_colour in _THINGS[name](u, v, tuple(colour), rng):
        patch[inside] = np.clip(shade[inside] * np.asarray(part_colour, np.float32), 0, 255)  # (k, 3)
        covered |= inside
    label[window][covered] = CLASS_NAMES.index(name)


def draw_object_of_no_class(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, segment_id: int) -> None:
    """Paint a random object assembled from parts (a body and 2-5 parts, shapes and colours at random, drawn in the
    object's own coordinates) with label ``segment_id``, in place. It belongs to no class: for class-agnostic
    proposal training, so that 'an object' means parts that belong together, not one of the seen things."""
    size = label.shape[0]
    half = size * np.exp(rng.uniform(np.log(0.2), np.log(0.6))) / 2
    window, v, u = _object_frame(size, rng.uniform(half, size - half, size=2), half)  # (h, w) each
    colours = _COLOUR_TABLE[rng.integers(len(_COLOUR_TABLE), size=6)]  # (6, 3)
    a, b = rng.uniform(0.5, 1.0, size=2)
    body = _ellipse(u, v, 0, 0, a, b) if rng.random() < 0.5 else _box(u, v, -a, a, -b, b)
    patch, covered = image[window], body.copy()
    patch[body] = colours[0]
    for colour in colours[1:2 + rng.integers(4)]:
        cu, cv, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.1, 0.35)
        part = (_disc(u, v, cu, cv, r) if rng.random() < 0.5 else _box(u, v, cu - r, cu + r, cv - r / 2, cv + r / 2)) & body
        patch[part] = colour
    label[window][covered] = segment_id


def paint_stuff_of_no_class(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, segment_id: int) -> None:
    """Turn a random blob of the scene's stuff (never its things) into a random texture of no class, labelled
    ``segment_id``, in place: a region behind the things, cut into pieces by them as grass and road are."""
    side = label.shape[0]
    noise = _crop_tile(rng, _noise_bank()[..., None], side)[..., 0]  # (side, side)
    blob = noise > np.quantile(noise, rng.uniform(0.5, 0.8))
    region = blob & np.isin(label, [CLASS_NAMES.index(c) for c in STUFF_CLASSES])  # labelled stuff only
    a, b = _COLOUR_TABLE[rng.integers(len(_COLOUR_TABLE), size=2)]
    y, x = _grid(side)
    angle, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * x + np.sin(angle) * y) / period)  # (side, side)
    texture = stripes[..., None] * a + (1 - stripes[..., None]) * b + rng.normal(0, 12, size=(side, side, 1))
    image[region] = np.clip(texture[region], 0, 255)
    label[region] = segment_id


def _pick_colour(rng: np.random.Generator, name: str, behind: np.ndarray) -> tuple[str, np.ndarray]:
    """A body colour of thing ``name`` that stands out from the mean colour ``behind`` (3,), jittered a little."""
    palette = THING_PALETTES[name]
    order = rng.permutation(len(palette))
    values = np.array([COLOURS[palette[i]] for i in order], np.float32)  # (k, 3)
    far = np.flatnonzero(np.abs(values - behind).sum(1) > 150)
    index = order[far[0]] if len(far) else order[0]
    return palette[index], np.clip(np.asarray(COLOURS[palette[index]]) + rng.integers(-20, 21, size=3), 0, 255)


# ----------------------------------------------------------------------------------------------------
# Captions

_SCENE_TEMPLATES = ("a photo of {things} on {stuff}.", "{things} on {stuff}.",
                    "a picture of {things} over {stuff}.", "there is {things} in front of {stuff}.",
                    "{stuff} with {things}.", "an image of {things} and {stuff}.")
_STUFF_TEMPLATES = ("a photo of {stuff}.", "{stuff}.", "a picture of {stuff}.", "a view of {stuff}.")
_OBJECT_TEMPLATES = ("a photo of {things}.", "{things}.", "a picture of {things}.",
                     "an image of {things}.", "there is {things}.")
CAPTION_TEMPLATES = (*_SCENE_TEMPLATES, *_STUFF_TEMPLATES, *_OBJECT_TEMPLATES)
"""Every caption template: scenes of things on stuff, stuff alone, things alone ({things}, {stuff}: filled in)."""
PROMPT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")
"""Class-name prompts used by the text classifier; some single-class captions use them too, as the
web captions that CLIP was trained on contain "a photo of a ..." sentences."""


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(words: list[str]) -> str:
    """["a star", "a ring", "a cross"] -> "a star, a ring and a cross"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _caption(rng, stuff: list[str], things: list[tuple[str, str]], colour_word_prob: float) -> str:
    """A caption naming every class in the scene; ``things`` holds (class, colour name) pairs. Colour words
    are rare on purpose: a caption without them can only be matched to its image by shape."""
    phrases = []
    for name, colour in things:
        noun = f"{colour} {name}" if rng.random() < colour_word_prob else name
        phrases.append(f"{_article(noun)} {noun}")
    if len(stuff) + len(things) == 1 and rng.random() < 0.2:
        return str(rng.choice(PROMPT_TEMPLATES)).format((stuff or [things[0][0]])[0])
    templates = _SCENE_TEMPLATES if stuff and things else _OBJECT_TEMPLATES if things else _STUFF_TEMPLATES
    return str(rng.choice(templates)).format(things=_join(phrases) if phrases else "",
                                             stuff=_join(stuff) if stuff else "")


# ----------------------------------------------------------------------------------------------------
# Scenes

@dataclass(frozen=True)
class ToyWorldConfig:
    """How scenes are drawn; sizes in pixels. The defaults are the 64 x 64 world the toy CLIP is
    pre-trained on; :meth:`segmentation` gives the 128 x 128 scenes of the segmentation notebooks."""
    image_size: int = 64
    canvas: int | None = 128  # draw a "scene" this wide and cut an image_size window out of it (None: no cut)
    things: tuple[int, int] = (2, 5)  # range of things per "scene" (on the canvas), each class at most once
    max_stuff: int = 3  # stuff regions per "scene" (1..max_stuff)
    thing_size: tuple[float, float] = (0.2, 0.9)  # diameters of things in scenes, log-uniform, x image side
    min_visible: int = 62  # visible pixels a class needs to be named in the caption (any image size)
    kind_probs: tuple[float, float, float] = (0.45, 0.15, 0.4)  # "scene", "stuff", "object"
    colour_word_prob: float = 0.25  # how often a thing is named with its colour ("a red star")

    @classmethod
    def segmentation(cls, image_size: int = 128) -> ToyWorldConfig:
        """Scenes for segmentation (128 x 128 by default): things of the same pixel size as in pre-training, so
        CLIP sees familiar scales on a 16 x 16 patch grid, and more of them per scene."""
        return cls(image_size=image_size, canvas=None, kind_probs=(1.0, 0.0, 0.0))


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) uint8, class ids or IGNORE_INDEX
    caption: str
    classes: tuple[str, ...]  # classes named in the caption, stuff first
    kind: str
    colours: dict = field(default_factory=dict)  # thing class -> colour name


def make_scene(rng: np.random.Generator, config: ToyWorldConfig = ToyWorldConfig(),
               kind: str | None = None, classes: tuple[str, ...] | None = None) -> Scene:
    """Draw one scene.

    Args:
        rng: the only source of randomness; the same generator state gives a byte-identical scene.
        config: sizes and probabilities.
        kind: "scene" (stuff regions with things on top), "stuff" (one texture filling the image) or
            "object" (one large thing on a plain, unlabelled background); None draws it.
        classes: force the classes of a "stuff" or "object" scene (exactly one name).
    """
    kind = kind or SCENE_KINDS[rng.choice(3, p=config.kind_probs)]
    size = config.canvas if kind == "scene" and config.canvas else config.image_size  # the side laid out
    if kind not in SCENE_KINDS:
        raise ValueError(f"kind must be one of {SCENE_KINDS}, got {kind!r}")
    if classes is not None:
        check_class_names(classes)
        pool = STUFF_CLASSES if kind == "stuff" else THING_CLASSES
        if kind == "scene" or len(classes) != 1 or classes[0] not in pool:
            raise ValueError(f"classes can force one {'stuff' if kind == 'stuff' else 'thing'} class "
                             f"of a 'stuff' or 'object' scene, got kind={kind!r}, classes={classes}")
    # A "scene" is laid out on the canvas and only the window (oy, ox) + image_size is drawn: things at the pixel
    # scale of segmentation scenes, at the cost of the window.
    side = config.image_size
    oy, ox = rng.integers(0, size - side + 1, size=2) if size > side else (0, 0)
    window = np.s_[oy:oy + side, ox:ox + side]
    image = np.empty((side, side, 3), np.float32)
    label = np.full((side, side), IGNORE_INDEX, np.uint8)
    bank = texture_bank()
    stuff: list[str] = []
    if kind == "object":  # a plain background with a soft gradient
        base = rng.uniform(70, 190) + rng.uniform(-25, 25, size=3)
        gy, gx = _grid(size)
        ramp = (gy * rng.uniform(-0.4, 0.4) + gx * rng.uniform(-0.4, 0.4))[..., None]
        image[:] = base + ramp
    else:
        n_stuff = 1 if kind == "stuff" else int(rng.integers(1, config.max_stuff + 1))
        stuff = list(classes) if classes and kind == "stuff" else \
            [STUFF_CLASSES[i] for i in rng.choice(len(STUFF_CLASSES), n_stuff, replace=False)]
        regions = _stuff_layout(rng, n_stuff, size, window)  # (side, side)
        for i, name in enumerate(stuff):
            tile = _crop_tile(rng, bank[name], size)[window]  # (side, side, 3) uint8
            brightness = np.float32(rng.uniform(0.85, 1.15))
            if n_stuff == 1:  # the whole canvas
                np.multiply(tile, brightness, out=image)
                label[:] = CLASS_NAMES.index(name)
            else:
                inside = regions == i  # (side, side) bool
                np.copyto(image, tile * brightness, where=inside[..., None])
                np.copyto(label, CLASS_NAMES.index(name), where=inside)
    if kind == "object":
        thing_names = list(classes) if classes else [THING_CLASSES[rng.integers(len(THING_CLASSES))]]
        diameters = [rng.uniform(0.45, 0.8) * size]
    elif kind == "scene":
        n_things = int(rng.integers(config.things[0], config.things[1] + 1))
        thing_names = [THING_CLASSES[i] for i in rng.choice(len(THING_CLASSES), n_things, replace=False)]
        diameters = list(size * np.exp(rng.uniform(*np.log(config.thing_size), size=n_things)))
    else:
        thing_names, diameters = [], []
    colours = {}
    for name, diameter in zip(thing_names, diameters):
        centre = rng.uniform(diameter / 2, size - diameter / 2, size=2) - (oy, ox)  # in window pixels
        cy, cx = np.clip(centre.astype(int), 0, side - 1)
        colours[name], colour = _pick_colour(rng, name, image[cy, cx])
        _draw_thing(rng, image, label, name, diameter, centre, colour)
    counts = np.bincount(label.ravel(), minlength=256)
    visible = counts >= config.min_visible
    stuff = [n for n in stuff if visible[CLASS_NAMES.index(n)]]
    things = [(n, colours[n]) for n in thing_names if visible[CLASS_NAMES.index(n)]]
    caption = _caption(rng, stuff, things, config.colour_word_prob)
    image = np.clip(image, 0, 255, out=image) + 0.5  # round half up on the cast below
    return Scene(image=image.astype(np.uint8), label=label, caption=caption,
                 classes=tuple(stuff) + tuple(n for n, _ in things), kind=kind,
                 colours={n: c for n, c in things})


def scene_rng(split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator of scene ``index`` of ``split``: scenes are independent and randomly accessible."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
    return np.random.default_rng((SPLIT_SEEDS[split], seed, index))


# ----------------------------------------------------------------------------------------------------
# torch Datasets

def hide_unseen(label: np.ndarray) -> np.ndarray:
    """ZS3 training labels: pixels of unseen classes become IGNORE_INDEX (the image is kept)."""
    lut = np.arange(256, dtype=np.uint8)
    lut[[CLASS_NAMES.index(c) for c in UNSEEN_CLASSES]] = IGNORE_INDEX
    return lut[label]


class ToyScenes(Dataset):
    """Toy scenes as a torch ``Dataset`` with the ZS3 protocol of DeOP's data code.

    Items are dicts: ``image_raw`` (3, H, W) float32 in [0, 1] (not CLIP-normalised), ``label``
    (H, W) int64 with ``IGNORE_INDEX``, ``caption`` str and ``index`` int.

    Args:
        split: "train", "val" or "test" (disjoint random streams).
        length: number of scenes.
        config: scene sizes and probabilities.
        seen_only_labels: hide unseen classes in the labels; default True for "train", False otherwise
            (evaluation scores all classes).
        seed: another seed gives another, equally valid world of the same split.
        kind: draw only this scene kind ("scene", "stuff" or "object"), or None for the mix of the config.
    """

    def __init__(self, split: str = "train", length: int = 1000, config: ToyWorldConfig = ToyWorldConfig(),
                 seen_only_labels: bool | None = None, seed: int = 0, kind: str | None = None):
        scene_rng(split, 0)  # validates the split name
        self.split, self.length, self.config, self.seed, self.kind = split, length, config, seed, kind
        self.seen_only_labels = split == "train" if seen_only_labels is None else seen_only_labels

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        """The raw scene (uint8 image, full labels, caption) behind item ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ToyScenes of length {self.length}")
        return make_scene(scene_rng(self.split, index, self.seed), self.config, kind=self.kind)

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        label = hide_unseen(scene.label) if self.seen_only_labels else scene.label
        return {"image_raw": torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255.0,  # (3, H, W)
                "label": torch.from_numpy(label.astype(np.int64)),  # (H, W)
                "caption": scene.caption, "index": index}


def segmentation_world(split: str, length: int, image_size: int = 128) -> ToyScenes:
    """The scenes every segmentation stage trains and evaluates on (:meth:`ToyWorldConfig.segmentation`, this
    size); "train" labels hide the unseen classes (ZS3)."""
    return ToyScenes(split, length, ToyWorldConfig.segmentation(image_size))


def single_class_images(n_per_class: int, split: str = "val", config: ToyWorldConfig = ToyWorldConfig(),
                        class_names=CLASS_NAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-shot classification set: one class per image (a stuff texture, or one thing on a plain
    background).

    Returns:
        image_raw (C * n_per_class, 3, S, S) float32 in [0, 1], and targets (C * n_per_class,) int64
        indexing ``class_names``.
    """
    images, targets = [], []
    for target, name in enumerate(check_class_names(class_names)):
        kind = "stuff" if name in STUFF_CLASSES else "object"
        for i in range(n_per_class):
            rng = scene_rng(split, 10_000_000 + CLASS_NAMES.index(name) * 100_000 + i)
            images.append(make_scene(rng, config, kind=kind, classes=(name,)).image)
            targets.append(target)
    image_raw = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return image_raw, torch.tensor(targets)


def vocabulary() -> list[str]:
    """Every word and punctuation mark the toy world's captions and prompts can use, sorted: the toy CLIP's."""
    texts = [*CAPTION_TEMPLATES, *PROMPT_TEMPLATES, *CLASS_NAMES, *COLOURS, "and , an the"]
    words = set()
    for text in texts:
        words.update(split_words(re.sub(r"\{\w*\}", " ", text)))
    return sorted(words)


# ----------------------------------------------------------------------------------------------------
# The toy world as a ``World``: what every stage trains and evaluates on

REFINEMENT = Refinement()
"""The toy world's post-process of proposals at evaluation (notebook 01 §4 measures what it buys). The real world
uses none: it has not been measured on real images, where colour edges are texture as often as object boundaries."""
NO_CLASS_OBJECTS = 2
"""Objects of no class pasted into each scene of the proposal network's training stream."""


class ToyWorld(World):
    """The toy world's segmentation scenes (``ToyWorldConfig.segmentation``) as a :class:`~deop_lite.world.World`.

    Args:
        image_size: the side of the scenes (128; the tiny CI runs use 64).
        segments_of_no_class: the proposal network's training stream: each scene gets up to ``NO_CLASS_OBJECTS``
            objects of no class and, in half of them, a stuff of no class, labelled as segments of their own (ids
            16, 17 and 18), so that it learns to propose what no class names.
    """
    name = "toy"
    class_names, seen_classes, unseen_classes, thing_classes = CLASS_NAMES, SEEN_CLASSES, UNSEEN_CLASSES, THING_CLASSES
    refinement = REFINEMENT
    prompt_templates = PROMPT_TEMPLATES  # the toy CLIP's text classifier (stored with it by its pre-training)

    def __init__(self, image_size: int = 128, segments_of_no_class: bool = False):
        self.image_size, self.segments_of_no_class = image_size, segments_of_no_class
        self.scenes = segmentation_world("train", 10 ** 9, image_size)

    def training_batch(self, step: int, batch_size: int, share: int = 0, shares: int = 1) -> dict:
        """Scenes step·B + [share·B/shares, (share + 1)·B/shares) of the training stream (a function of the step)."""
        images, label_maps = [], []
        for index in shard(step, batch_size, share, shares):
            scene = self.scenes.scene(index)
            image, label = scene.image.astype(np.float32), hide_unseen(scene.label)
            rng = np.random.default_rng((7, index))
            if self.segments_of_no_class and rng.random() < 0.5:
                paint_stuff_of_no_class(rng, image, label, 18)
            for k in range(rng.integers(NO_CLASS_OBJECTS + 1) if self.segments_of_no_class else 0):
                draw_object_of_no_class(rng, image, label, 16 + k)
            images.append(torch.from_numpy(image).permute(2, 0, 1) / 255.0)  # (3, H, W)
            label_maps.append(torch.from_numpy(label.astype(np.int64)))  # (H, W)
        return {"image_raw": torch.stack(images), "label": torch.stack(label_maps)}

    def training_set(self) -> ToyScenes:
        return self.scenes

    def caption_batch(self, step: int, batch_size: int, image_size: int = 64, share: int = 0,
                      shares: int = 1) -> tuple[torch.Tensor, list[str]]:
        """The toy CLIP's pre-training stream (``ToyWorldConfig(image_size)``: scenes, stuff and objects, with
        captions): this share of batch ``step``, (B/shares, 3, S, S) raw images in [0, 1] and their captions."""
        config = ToyWorldConfig(image_size=image_size)
        scenes = [make_scene(scene_rng("train", index), config) for index in shard(step, batch_size, share, shares)]
        images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
        return images, [s.caption for s in scenes]

    vocabulary = staticmethod(vocabulary)  # the toy CLIP's words

    def validation_set(self, scenes: int | None = 200) -> ToyScenes:
        return segmentation_world("val", scenes, self.image_size)

    def __repr__(self) -> str:
        return f"ToyWorld(image_size={self.image_size}, segments_of_no_class={self.segments_of_no_class})"
