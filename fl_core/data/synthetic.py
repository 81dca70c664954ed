"""Synthetic writer-styled digits at any number of writers, for scale tests and benchmarks.

Federated EMNIST's heterogeneity comes from writers (Caldas et al. 2018): each person
slants, sizes, places and inks every digit in their own way. We mimic that without font
files or downloads. Ten digit glyphs (plus three common alternative forms of 1, 4 and 7,
chosen per writer) are drawn procedurally as polylines and turned into distance fields
once; writer k gets a style (slant, rotation, scale, aspect, offset, stroke width, ink
darkness, glyph variants) and every image a small jitter of it plus per-pixel ink noise.
Rendering is one vectorised lookup of the distance field through each image's inverse
affine map, so 3,383 writers × 100 images take seconds.

Every draw for writer k comes from `numpy_rng(seed, Stream.DATA, k, ...)`, so writer k's
images do not depend on how many writers are generated (`num_writers=50` equals the
first 50 writers of `num_writers=3383`). Pixels follow the TFF convention: background
255, ink towards 0. Not a substitute for real data in the paper's experiments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fl_core.config import DataConfig
from fl_core.data.base import FederatedData
from fl_core.rng import Stream, numpy_rng

SDF_RES = 96            # distance-field cells per side over glyph space [-1, 1]²
TEST_SHARE = 1 / 9      # test images per train image (≈10% of a writer's images)
COUNT_SIGMA = 0.25      # lognormal spread of per-writer train counts
MIN_TRAIN = 5
_CHUNK = 4096           # images rendered per vectorised step (bounds temporary memory)

# Sub-keys under (seed, DATA, writer): independent streams for style/params and noise.
_KEY_STYLE, _KEY_NOISE_TRAIN, _KEY_NOISE_TEST = 0, 1, 2


# -- glyphs -----------------------------------------------------------------------------
# Glyph space: x to the right, y downwards, digits span about x ∈ [-0.4, 0.4], y ∈ [-0.6, 0.6].

def _line(*pts: tuple[float, float]) -> np.ndarray:
    return np.asarray(pts, np.float64)


def _arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int = 24) -> np.ndarray:
    t = np.deg2rad(np.linspace(t0, t1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _bezier(p0, p1, p2, n: int = 16) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)


# (label, strokes): index 0..9 are the prototypes of digits 0..9, the rest variants.
GLYPHS: tuple[tuple[int, tuple[np.ndarray, ...]], ...] = (
    (0, (_arc(0, 0, 0.34, 0.58, 0, 360, 40),)),
    (1, (_line((0.04, -0.6), (-0.02, 0.6)),)),
    (2, (_arc(0, -0.28, 0.3, 0.3, -170, 25), _line((0.27, -0.15), (-0.32, 0.6), (0.36, 0.6)))),
    (3, (_arc(0, -0.3, 0.28, 0.3, -150, 90), _arc(0, 0.3, 0.32, 0.3, -90, 150))),
    (4, (_line((0.14, 0.6), (0.14, -0.6), (-0.36, 0.22), (0.38, 0.22)),)),
    (5, (_line((0.32, -0.6), (-0.24, -0.6), (-0.24, -0.08)), _arc(0, 0.23, 0.33, 0.36, -120, 140))),
    (6, (_bezier((0.24, -0.6), (-0.38, -0.35), (-0.32, 0.3)), _arc(0, 0.28, 0.32, 0.3, 0, 360, 32))),
    (7, (_line((-0.34, -0.6), (0.36, -0.6), (-0.06, 0.6)),)),
    (8, (_arc(0, -0.32, 0.25, 0.27, 0, 360, 32), _arc(0, 0.28, 0.32, 0.32, 0, 360, 32))),
    (9, (_arc(0, -0.26, 0.3, 0.32, 0, 360, 32), _bezier((0.3, -0.26), (0.3, 0.2), (0.14, 0.6)))),
    (1, (_line((-0.2, -0.38), (0.06, -0.6), (0.0, 0.6)), _line((-0.18, 0.6), (0.18, 0.6)))),
    (4, (_line((-0.14, -0.6), (-0.34, 0.16), (0.38, 0.16)), _line((0.18, -0.3), (0.18, 0.6)))),
    (7, (_line((-0.34, -0.6), (0.36, -0.6), (-0.06, 0.6)), _line((-0.18, 0.02), (0.28, 0.02)))),
)
# Per digit: glyph indices a writer may use; a writer picks one form per digit.
VARIANTS: tuple[tuple[int, ...], ...] = tuple(
    tuple(i for i, (lab, _) in enumerate(GLYPHS) if lab == d) for d in range(10)
)
VARIANT_P = 0.35  # chance that a writer uses the alternative form of 1, 4 or 7


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each of `points` (P, 2) to the nearest segment a[i]–b[i] (S, 2)."""
    ab = b - a
    ap = points[:, None, :] - a[None, :, :]
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(axis=1)


@lru_cache(maxsize=1)
def distance_fields() -> np.ndarray:
    """float32 (len(GLYPHS) * SDF_RES², ) flattened distance to each glyph's strokes,
    in glyph units, sampled on a SDF_RES × SDF_RES grid over [-1, 1]² (row = y)."""
    axis = np.linspace(-1.0, 1.0, SDF_RES)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    fields = []
    for _, strokes in GLYPHS:
        a = np.concatenate([s[:-1] for s in strokes])
        b = np.concatenate([s[1:] for s in strokes])
        fields.append(_segment_distance(grid, a, b))
    out = np.concatenate(fields).astype(np.float32)
    out.flags.writeable = False
    return out


# -- per-writer plan ----------------------------------------------------------------------

@dataclass(frozen=True)
class ImagePlan:
    """Everything but the pixel noise for n images (one writer, one split)."""

    labels: np.ndarray   # int64 (n,)
    glyphs: np.ndarray   # int64 (n,) index into GLYPHS
    inv: np.ndarray      # float32 (n, 2, 2): pixel offset → glyph coordinates
    shift: np.ndarray    # float32 (n, 2): glyph centre in pixels from the image centre
    half_width: np.ndarray  # float32 (n,) stroke half width in pixels
    darkness: np.ndarray    # float32 (n,) ink at full coverage, 0..1


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Each digit ⌊n/10⌋ or ⌈n/10⌉ times, shuffled (writers filled in forms of all digits)."""
    return rng.permutation((np.arange(n) + rng.integers(10)) % 10).astype(np.int64)


def _images(rng: np.random.Generator, n: int, style: dict[str, float], variant: np.ndarray) -> ImagePlan:
    labels = _balanced_labels(rng, n)
    rot = style["rotation"] + rng.normal(0.0, 0.06, n)
    shear = style["shear"] + rng.normal(0.0, 0.06, n)
    scale = style["scale"] * np.exp(rng.normal(0.0, 0.06, n))
    sx, sy = scale * style["aspect"], scale
    c, s = np.cos(rot), np.sin(rot)
    # forward map glyph → pixels: rotation · shear · diag(sx, sy); we store its inverse.
    fwd = np.empty((n, 2, 2))
    fwd[:, 0, 0] = c * sx
    fwd[:, 0, 1] = (c * shear - s) * sy
    fwd[:, 1, 0] = s * sx
    fwd[:, 1, 1] = (s * shear + c) * sy
    shift = np.asarray([style["dx"], style["dy"]]) + rng.normal(0.0, 0.8, (n, 2))
    half_width = style["half_width"] * np.exp(rng.normal(0.0, 0.12, n))
    darkness = style["darkness"] * rng.uniform(0.9, 1.0, n)
    return ImagePlan(
        labels,
        variant[labels],
        np.linalg.inv(fwd).astype(np.float32),
        shift.astype(np.float32),
        half_width.astype(np.float32),
        darkness.astype(np.float32),
    )


def plan_writer(seed: int, k: int, mean_train: int) -> tuple[ImagePlan, ImagePlan]:
    """(train, test) plans of writer k, from its own stream only."""
    rng = numpy_rng(seed, Stream.DATA, k, _KEY_STYLE)
    sigma = COUNT_SIGMA
    n_train = max(MIN_TRAIN, int(round(mean_train * rng.lognormal(-sigma**2 / 2, sigma))))
    n_test = max(1, int(round(n_train * TEST_SHARE)))
    style = {
        "rotation": rng.normal(0.0, 0.08),
        "shear": rng.normal(0.0, 0.22),
        "scale": rng.uniform(9.0, 12.5),        # pixels per glyph unit: digits ~11–15 px tall
        "aspect": float(np.exp(rng.normal(0.0, 0.1))),
        "dx": rng.normal(0.0, 1.5),
        "dy": rng.normal(0.0, 1.5),
        "half_width": rng.uniform(0.6, 1.6),
        "darkness": rng.uniform(0.65, 1.0),
    }
    alt = rng.random(10) < VARIANT_P
    variant = np.asarray([v[1] if a and len(v) > 1 else v[0] for v, a in zip(VARIANTS, alt)], np.int64)
    return _images(rng, n_train, style, variant), _images(rng, n_test, style, variant)


# -- rendering ------------------------------------------------------------------------------

_PIX = (np.arange(28, dtype=np.float32) + 0.5) - 14.0  # pixel centres from the image centre
_PIX_X, _PIX_Y = np.tile(_PIX, 28), np.repeat(_PIX, 28)   # row-major (y, x) → 784
NOISE = 0.2  # ink multiplied by a uniform factor in [1 - NOISE, 1 + NOISE) per pixel


def _to_cell(coord: np.ndarray) -> np.ndarray:
    """Glyph coordinate in [-1, 1] → nearest distance-field index (overwrites `coord`)."""
    coord += 1.0
    coord *= (SDF_RES - 1) / 2.0
    np.rint(coord, out=coord)
    np.clip(coord, 0, SDF_RES - 1, out=coord)  # outside the field: the border is ink-free
    return coord.astype(np.int32)


def render(plan: ImagePlan, noise: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) images for `plan`.

    `noise` (float32 (n, 784), uniform on [0, 1)) is used as scratch and overwritten.
    """
    inv = plan.inv
    px = _PIX_X[None, :] - plan.shift[:, :1]  # (n, 784) pixel offsets from the glyph centre
    py = _PIX_Y[None, :] - plan.shift[:, 1:]
    # glyph coordinates → nearest distance-field cell, computed in place to spare memory
    u = inv[:, 0, :1] * px
    u += inv[:, 0, 1:] * py
    v = inv[:, 1, :1] * px
    v += inv[:, 1, 1:] * py
    cell = _to_cell(v)
    cell *= SDF_RES
    cell += _to_cell(u)
    cell += (plan.glyphs * SDF_RES * SDF_RES).astype(np.int32)[:, None]
    ink = distance_fields()[cell]
    # glyph units → pixels by the map's mean scale; a 1-pixel soft edge anti-aliases
    ink *= (-1.0 / np.sqrt(np.abs(np.linalg.det(inv))))[:, None]
    ink += plan.half_width[:, None] + 0.5
    np.clip(ink, 0.0, 1.0, out=ink)
    noise *= 2.0 * NOISE
    noise += 1.0 - NOISE
    noise *= plan.darkness[:, None]
    ink *= noise
    np.clip(ink, 0.0, 1.0, out=ink)
    ink *= -255.0
    ink += 255.0
    return np.rint(ink, out=ink).astype(np.uint8).reshape(-1, 28, 28)


def _render_split(plans: list[ImagePlan], seed: int, noise_key: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.asarray([len(p.labels) for p in plans], np.int64)
    offsets = np.zeros(len(plans) + 1, np.int64)
    offsets[1:] = np.cumsum(counts)
    pixels = np.empty((int(offsets[-1]), 28, 28), np.uint8)
    labels = np.concatenate([p.labels for p in plans]) if plans else np.zeros(0, np.int64)
    k = 0
    while k < len(plans):
        stop = k + 1  # writers k..stop-1 make one chunk of about _CHUNK images
        while stop < len(plans) and offsets[stop + 1] - offsets[k] <= _CHUNK:
            stop += 1
        group = plans[k:stop]
        noise = np.empty((int(offsets[stop] - offsets[k]), 784), np.float32)
        for j, p in enumerate(group):
            lo, hi = offsets[k + j] - offsets[k], offsets[k + j + 1] - offsets[k]
            numpy_rng(seed, Stream.DATA, k + j, noise_key).random(out=noise[lo:hi], dtype=np.float32)
        merged = ImagePlan(*(np.concatenate([getattr(p, f) for p in group]) for f in ImagePlan.__dataclass_fields__))
        pixels[offsets[k] : offsets[stop]] = render(merged, noise)
        k = stop
    return pixels, labels, offsets


def generate(num_writers: int, examples_per_writer: int, seed: int) -> FederatedData:
    """Synthetic FederatedData: `num_writers` writers with ~`examples_per_writer` train
    images each (lognormal spread, at least 5) and ~10% as many test images."""
    plans = [plan_writer(seed, k, examples_per_writer) for k in range(num_writers)]
    trp, trl, tro = _render_split([p[0] for p in plans], seed, _KEY_NOISE_TRAIN)
    tep, tel, teo = _render_split([p[1] for p in plans], seed, _KEY_NOISE_TEST)
    ids = tuple(f"syn{k:07d}" for k in range(num_writers))  # zero-padded: sorted = index order
    name = f"synthetic:K={num_writers},n={examples_per_writer},seed={seed}"
    data = FederatedData(ids, trp, trl, tro, tep, tel, teo, name)
    data.validate()
    return data


def load(cfg: DataConfig, seed: int) -> FederatedData:
    """Registry entry: `data.source=synthetic` (`data.num_writers`, `data.examples_per_writer`)."""
    return generate(cfg.num_writers, cfg.examples_per_writer, seed)
