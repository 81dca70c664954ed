"""FLTrust (Cao, Fang, Liu and Gong 2021, "FLTrust: Byzantine-robust federated learning via
trust bootstrapping", NDSS, Algorithm 2): the server holds a small clean root set and each
round trains on it from the current global model w_t, exactly as a client does (the one
`fl_core.training.local_train`, with `fl.local_epochs`, `fl.batch_size`, `fl.client_lr`),
giving g0. Then
    TS_i = ReLU(cos(Δ_i, g0)),   Δ̂_i = Δ_i · ‖g0‖ / ‖Δ_i‖,   aggregate = Σ TS_i Δ̂_i / Σ TS_i.
An update pointing away from g0 gets no weight, and no update weighs more than g0's norm.
`accepted` is TS_i > 0, so the round reports flag rates. The FedAvg weights are not used.

The root set (the paper's default size, 100 images): the train images of writers OUTSIDE
the training population, i.e. the writers the data source holds beyond `data.max_writers`
(the population is its first max_writers writers, `fl_core.data.load_data`). Those writers
are walked in a seeded random order (`fl_core.rng` Stream.ROOT, key 0) and taken whole until
they hold at least `root_size` images; `root_size` of those rows are then drawn uniformly
without replacement (same stream). The set is drawn once, when the aggregator is built,
and described by `FLTrust.root` (writer ids and positions, images) and by the metrics
`fltrust_root_writers` / `fltrust_root_images` of every round. A config without
`data.max_writers`, or one leaving no writer (or too few images) beyond it, is refused
(ConfigError naming the key).
Each round's server training draws its shuffles from Stream.ROOT keyed (1, round) and its
dropout inside `client_rng_scope` seeded from Stream.ROOT keyed (2, round); on the CPU it
runs with `fl.threads` intra-op threads, as the clients do. It needs the round's global
weights: `AggregatorContext.global_params` (ValueError when absent).
Choices where the paper leaves room (ours): all TS_i = 0 (every update orthogonal to or
against g0, or g0 = 0) gives the zero update, i.e. the model is kept; a zero update has
cosine 0 (TS 0); cosines and the weighted sum are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from fl_core.aggregation import ordered_weighted_mean
from fl_core.aggregators.base import (
    Aggregate,
    AggregatorContext,
    AggregatorSpec,
    Params,
    flag_metrics,
    register,
)
from fl_core.errors import ConfigError
from fl_core.rng import Stream, derive_seed, numpy_rng, torch_generator

_DRAW = 1024  # writer offsets drawn per step of the seeded walk


class FLTrustParams(Params):
    root_size: int = Field(100, ge=1, le=1_000_000, description="images in the server's clean root set, "
                           "drawn from writers beyond data.max_writers (the paper's default 100)")


def check(p: FLTrustParams, cfg) -> None:
    if cfg.data.max_writers is None:
        raise ConfigError("data.max_writers", None, "a writer count below the data source's: FLTrust's "
                          "root set is drawn from the source's writers beyond it (outside the population)")


@dataclass(frozen=True)
class RootSet:
    """The server's root data and where it came from.

    Attributes:
        pixels: uint8 (root_size, 28, 28); labels: int64 (root_size,).
        positions: source indices (≥ data.max_writers) of the writers contributing images.
        writer_ids: their ids (positions as text for a source without ids).
        images_per_writer: how many root images each contributed.
    """

    pixels: np.ndarray
    labels: np.ndarray
    positions: tuple[int, ...]
    writer_ids: tuple[str, ...]
    images_per_writer: tuple[int, ...]


def held_out_order(seed: int, first: int, total: int):
    """Writers first..total−1 in a seeded uniformly random order (Stream.ROOT, key 0),
    drawn offset by offset so a huge lazy source is never enumerated."""
    rng = numpy_rng(seed, Stream.ROOT, 0)
    held, seen = total - first, set()
    while len(seen) < held:
        for o in rng.integers(0, held, size=_DRAW).tolist():
            if o not in seen:
                seen.add(o)
                yield first + o
                if len(seen) == held:
                    return


def draw_root_set(data, first: int, size: int, seed: int) -> RootSet:
    """`size` train images of the writers of `data` at positions ≥ `first` (see the module
    docstring); ConfigError when there are none or too few."""
    total = data.num_writers
    if first >= total:
        raise ConfigError("data.max_writers", first, f"less than the data source's {total} writers "
                          "(FLTrust's root set is drawn from the writers beyond it)")
    chosen, parts, have = [], [], 0
    for k in held_out_order(seed, first, total):
        pix, lab = data.writer_train(k)
        if len(lab):
            chosen.append(k)
            parts.append((pix, lab))
            have += len(lab)
        if have >= size:
            break
    if have < size:
        raise ConfigError("defense.aggregator_params.root_size", size, f"at most {have}, the train images "
                          f"of the {total - first} writers beyond data.max_writers = {first}")
    pixels = np.concatenate([p for p, _ in parts])
    labels = np.concatenate([lb for _, lb in parts]).astype(np.int64)
    owner = np.concatenate([np.full(len(lb), i) for i, (_, lb) in enumerate(parts)])
    rows = np.sort(numpy_rng(seed, Stream.ROOT, 0, 1).choice(have, size=size, replace=False))
    counts = np.bincount(owner[rows], minlength=len(chosen))
    used = [i for i in range(len(chosen)) if counts[i] > 0]
    ids = getattr(data, "writer_ids", None)
    return RootSet(
        np.ascontiguousarray(pixels[rows]), labels[rows],
        tuple(chosen[i] for i in used),
        tuple(str(ids[chosen[i]]) if ids is not None else str(chosen[i]) for i in used),
        tuple(int(counts[i]) for i in used),
    )


def trust_combine(updates: torch.Tensor, g0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(aggregate float32 [d], trust scores TS float64 [n] on the CPU) for `updates` [n, d]
    and the server's update `g0` [d]: Σ TS_i Δ_i ‖g0‖/‖Δ_i‖ / Σ TS_i; zero when Σ TS = 0."""
    n, d = updates.shape
    g = g0.to(updates.device, torch.float64)
    g_norm = float(torch.linalg.vector_norm(g))
    ts, scale = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for i in range(n):  # row by row: no [n, d] float64 copy
        u = updates[i].to(torch.float64)
        u_norm = float(torch.linalg.vector_norm(u))
        if u_norm > 0 and g_norm > 0:
            ts[i] = max(float(u @ g) / (u_norm * g_norm), 0.0)
            scale[i] = ts[i] * g_norm / u_norm
    total = float(ts.sum())
    if total == 0.0:
        return torch.zeros(d, device=updates.device), ts
    return ordered_weighted_mean(updates, scale, total=total), ts


class FLTrust:
    def __init__(self, root: RootSet, hp, threads: int):
        self.root, self.hp, self.threads = root, hp, threads

    def server_update(self, global_params: torch.Tensor, ctx: AggregatorContext,
                      device: torch.device) -> tuple[torch.Tensor, float]:
        """(g0 on `device`, its train loss): one client's local training on the root set."""
        from fl_core.models import CNN
        from fl_core.rng import client_rng_scope
        from fl_core.training import ClientData, local_train, torch_threads

        data = ClientData(torch.from_numpy(self.root.pixels).to(device), torch.from_numpy(self.root.labels).to(device))
        gen = torch_generator(ctx.seed, Stream.ROOT, 1, ctx.round_idx)
        scope = derive_seed(ctx.seed, Stream.ROOT, 2, ctx.round_idx)
        with torch_threads(self.threads), client_rng_scope(scope, device):
            model = CNN().to(device)  # its init draws are overwritten by w_t; inside the scope, as dropout
            g0, m = local_train(model, global_params.to(device), data, self.hp, gen)
        return g0, float(m["train_loss"])

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        if ctx.global_params is None:
            raise ValueError("FLTrust trains on the round's global weights: AggregatorContext.global_params "
                             "must be passed (fl_core.round)")
        g0, loss = self.server_update(ctx.global_params, ctx, updates.device)
        delta, ts = trust_combine(updates, g0)
        accepted = tuple(bool(x > 0) for x in ts)
        metrics = {**flag_metrics(accepted), "fltrust_trust_mean": float(ts.mean()),
                   "fltrust_root_norm": float(torch.linalg.vector_norm(g0.to(torch.float64))),
                   "fltrust_root_loss": loss, "fltrust_root_images": int(len(self.root.labels)),
                   "fltrust_root_writers": len(self.root.positions)}
        return Aggregate(delta, metrics, accepted=accepted)


def build(p: FLTrustParams, cfg) -> FLTrust:
    """Loads the data source again without `data.max_writers` to reach the writers beyond
    it; only the root set's images are kept."""
    from fl_core.data import load_data
    from fl_core.training import SGDParams

    source = load_data(cfg.data.model_copy(update={"max_writers": None}), cfg.seed)
    root = draw_root_set(source, cfg.data.max_writers, p.root_size, cfg.seed)
    hp = SGDParams(cfg.fl.local_epochs, cfg.fl.batch_size, cfg.fl.client_lr)
    return FLTrust(root, hp, cfg.fl.threads)


SPEC = register(AggregatorSpec(
    "fltrust", FLTrustParams, build, lambda p: "FLTrust" + ("" if p.root_size == 100 else f" root={p.root_size}"),
    check=check,
))
