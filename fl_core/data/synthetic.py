"""Synthetic writer-styled digits at any number of writers, for scale tests and benchmarks.

Federated EMNIST's heterogeneity comes from writers (Caldas et al. 2018): each person
slants, sizes, places and inks every digit in their own way. We mimic that without font
files or downloads. Ten digit glyphs (plus three common alternative forms of 1, 4 and 7,
chosen per writer) are drawn procedurally as polylines and turned into distance fields
once; writer k gets a style (slant, rotation, scale, aspect, offset, stroke width, ink
darkness, glyph variants) and every image a small jitter of it plus per-pixel ink noise.
Rendering is one vectorised lookup of the distance field through each image's inverse
affine map, so 3,383 writers × 100 images take seconds.

Writer k's train count n_k comes from one vectorised stream for all writers (blocks of
2^16 writers, `train_counts`), and every other draw for writer k from
`numpy_rng(seed, Stream.DATA, k, ...)`, so writer k's images do not depend on how many
writers are generated (`num_writers=50` equals the first 50 writers of
`num_writers=3383`). Above LAZY_ABOVE writers `load` returns a `SyntheticPopulation`,
which renders writer k only when asked (the same pixels), so K = 10^7 costs the n_k array. Pixels follow the TFF convention: background
255, ink towards 0. Not a substitute for real data in the paper's experiments.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fl_core.config import DataConfig
from fl_core.data.base import DataSummary, FederatedData, labels_only
from fl_core.rng import Stream, numpy_rng

SDF_RES = 96            # distance-field cells per side over glyph space [-1, 1]²
TEST_SHARE = 1 / 9      # test images per train image (≈10% of a writer's images)
COUNT_SIGMA = 0.25      # lognormal spread of per-writer train counts
MIN_TRAIN = 5
_CHUNK = 4096           # images rendered per vectorised step (bounds temporary memory)

# Sub-keys under (seed, DATA, writer): independent streams for style/params and noise.
_KEY_STYLE, _KEY_NOISE_TRAIN, _KEY_NOISE_TEST = 0, 1, 2
# (seed, DATA, _KEY_COUNTS, block): the n_k of a block of writers; far above any writer index.
_KEY_COUNTS = 2**40
_COUNT_BLOCK = 2**16
LAZY_ABOVE = 20_000   # `load` makes a lazy population above this many writers
CACHE_WRITERS = 128   # lazy: writer splits kept rendered (LRU; ~10 MB at 100 images)
LABEL_WRITERS = 5000  # `describe` indexes the labels up to this many writers (~0.15 s per 1000)


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


def train_counts(seed: int, num_writers: int, mean_train: int) -> np.ndarray:
    """n_k of writers 0..K−1: int64 (K,), lognormal around `mean_train`, at least MIN_TRAIN.

    Drawn in blocks of _COUNT_BLOCK writers, block b from `numpy_rng(seed, DATA, _KEY_COUNTS, b)`,
    so 10^7 counts cost ~150 seed derivations (not one per writer), and writer k's count
    does not depend on K."""
    sigma = COUNT_SIGMA
    out = np.empty(num_writers, np.int64)
    for b, lo in enumerate(range(0, num_writers, _COUNT_BLOCK)):
        draw = numpy_rng(seed, Stream.DATA, _KEY_COUNTS, b).lognormal(-sigma**2 / 2, sigma, _COUNT_BLOCK)
        hi = min(lo + _COUNT_BLOCK, num_writers)
        out[lo:hi] = np.maximum(MIN_TRAIN, np.rint(mean_train * draw[: hi - lo]))
    return out


def test_count(n_train: int) -> int:
    return max(1, int(round(n_train * TEST_SHARE)))


def plan_writer(seed: int, k: int, n_train: int) -> tuple[ImagePlan, ImagePlan]:
    """(train, test) plans of writer k with `n_train` train images, from its own stream only."""
    rng = numpy_rng(seed, Stream.DATA, k, _KEY_STYLE)
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
    return _images(rng, n_train, style, variant), _images(rng, test_count(n_train), style, variant)


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
    counts = train_counts(seed, num_writers, examples_per_writer)
    plans = [plan_writer(seed, k, int(counts[k])) for k in range(num_writers)]
    trp, trl, tro = _render_split([p[0] for p in plans], seed, _KEY_NOISE_TRAIN)
    tep, tel, teo = _render_split([p[1] for p in plans], seed, _KEY_NOISE_TEST)
    ids = tuple(writer_id(k) for k in range(num_writers))
    data = FederatedData(ids, trp, trl, tro, tep, tel, teo, _name(num_writers, examples_per_writer, seed))
    data.validate()
    return data


def writer_id(k: int) -> str:
    return f"syn{k:07d}"  # zero-padded: sorted = index order (up to 10^7 writers)


def _name(num_writers: int, examples_per_writer: int, seed: int) -> str:
    return f"synthetic:K={num_writers},n={examples_per_writer},seed={seed}"


class SyntheticPopulation:
    """The same writers as `generate`, made on demand (`fl_core.data.population`).

    Holds the n_k array (8 bytes per writer) and an LRU cache of the last CACHE_WRITERS
    writers rendered; writer k's train and test images equal `generate(...)`'s writer k
    bit for bit. Pickles as its three parameters, so a Ray actor rebuilds it in O(K)
    integers instead of receiving pixels. `rendered` counts the train and test splits
    rendered (cache misses), for tests that check a round touches O(cohort) writers.
    """

    lazy = True

    def __init__(self, num_writers: int, examples_per_writer: int, seed: int, cache: int = CACHE_WRITERS):
        self.params = (int(num_writers), int(examples_per_writer), int(seed))
        self.name = _name(*self.params)
        self._counts = train_counts(seed, num_writers, examples_per_writer)
        self._counts.flags.writeable = False
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache
        self.rendered = [0, 0]  # writers' train / test splits rendered (cache misses)

    def __reduce__(self):
        return (SyntheticPopulation, self.params)

    @property
    def num_writers(self) -> int:
        return self.params[0]

    def train_counts(self) -> np.ndarray:
        return self._counts

    def writer_train_labels(self, k: int) -> np.ndarray:
        return plan_writer(self.params[2], k, int(self._counts[k]))[0].labels

    def writer_train(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._writer(int(k), 0)

    def writer_test(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._writer(int(k), 1)

    def _writer(self, k: int, split: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= k < self.num_writers:
            raise IndexError(f"writer {k} of {self.num_writers}")
        hit = self._cache.get((k, split))
        if hit is not None:
            self._cache.move_to_end((k, split))
            return hit
        seed = self.params[2]
        plan = plan_writer(seed, k, int(self._counts[k]))[split]
        key = (_KEY_NOISE_TRAIN, _KEY_NOISE_TEST)[split]
        noise = numpy_rng(seed, Stream.DATA, k, key).random((len(plan.labels), 784), dtype=np.float32)
        px = render(plan, noise)
        px.flags.writeable = False
        self.rendered[split] += 1
        self._cache[(k, split)] = entry = (px, plan.labels)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry


def describe(cfg: DataConfig, seed: int) -> DataSummary:
    """Registry entry of `fl_core.data.describe_data` for `data.source=synthetic`: K from
    the config, the image counts from `train_counts` (writer k's count does not depend on
    K), and the labels from the writers' plans (nothing rendered) up to LABEL_WRITERS
    writers of an eager population."""
    k = cfg.num_writers if cfg.max_writers is None else min(cfg.num_writers, cfg.max_writers)
    counts = train_counts(seed, k, cfg.examples_per_writer)
    num_test = int(np.maximum(1, np.rint(counts * TEST_SHARE)).sum())  # test_count, vectorised
    name = _name(cfg.num_writers, cfg.examples_per_writer, seed)
    lazy = k > LAZY_ABOVE
    view = None
    if not lazy and k <= LABEL_WRITERS:
        plans = [plan_writer(seed, w, int(counts[w])) for w in range(k)]
        tr = [p[0].labels for p in plans]
        te = [p[1].labels for p in plans]
        off = [np.concatenate([[0], np.cumsum([len(x) for x in part])]) for part in (tr, te)]
        view = labels_only(tuple(writer_id(w) for w in range(k)), np.concatenate(tr), off[0],
                           np.concatenate(te), off[1], name)
    if view is not None or lazy:
        return DataSummary(name, k, int(counts.sum()), num_test, lazy, view)
    # no labels (too many writers to index): the counts, for data.min_examples (`at_least`)
    test_counts = np.maximum(1, np.rint(counts * TEST_SHARE)).astype(np.int64)
    return DataSummary(name, k, int(counts.sum()), num_test, lazy, None, counts, test_counts)


def load(cfg: DataConfig, seed: int) -> FederatedData | SyntheticPopulation:
    """Registry entry: `data.source=synthetic` (`data.num_writers`, `data.examples_per_writer`).

    Up to LAZY_ABOVE writers (after `data.max_writers`): an eager FederatedData (the Ray
    object store and the vectorised backend's fast path); above: a SyntheticPopulation
    with the same writers, made on demand."""
    k = cfg.num_writers if cfg.max_writers is None else min(cfg.num_writers, cfg.max_writers)
    if k > LAZY_ABOVE:
        return SyntheticPopulation(k, cfg.examples_per_writer, seed)
    return generate(cfg.num_writers, cfg.examples_per_writer, seed)
