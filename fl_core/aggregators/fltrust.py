"""FLTrust (Cao, Fang, Liu and Gong 2021, "FLTrust: Byzantine-robust federated learning via
trust bootstrapping", NDSS, Algorithm 2): the server holds a small clean root set and each
round trains on it from the current global model w_t, exactly as a client does (the one
`fl_core.training.local_train`, with `fl.local_epochs`, `fl.batch_size`, `fl.client_lr`),
giving g0. Then
    TS_i = ReLU(cos(Δ_i, g0)),   Δ̂_i = Δ_i · ‖g0‖ / ‖Δ_i‖,   aggregate = Σ TS_i Δ̂_i / Σ TS_i.
An update pointing away from g0 gets no weight, and no update weighs more than g0's norm.
`accepted` is TS_i > 0, so the round reports flag rates. The FedAvg weights are not used.

The root set (100 images by default: FLPoison's default, and as we read Cao et al. their
default root-set size; the paper was not re-checked here): train images of writers OUTSIDE
the training population, i.e. the writers the data source holds beyond `data.max_writers`
(the population is its first max_writers writers, `fl_core.data.load_data`): `root_size`
images drawn uniformly without replacement from all of those writers' train images
(`fl_core.rng` Stream.ROOT, key 0), as the paper samples its root set uniformly from the
training data, but from writers no client is. The set is drawn once, when the aggregator
is built, and described by `FLTrust.root` (writer ids and positions, images per writer) and
by the metrics `fltrust_root_writers` / `fltrust_root_images` of every round. A config without
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

from fl_core.aggregation import RunningMean
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

class FLTrustParams(Params):
    root_size: int = Field(100, ge=1, le=1_000_000, description="images in the server's clean root set, "
                           "drawn from writers beyond data.max_writers (FLPoison's default 100)")


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


def draw_root_set(data, first: int, size: int, seed: int) -> RootSet:
    """`size` train images drawn uniformly without replacement from all the train images of
    the writers of `data` at positions ≥ `first` (Stream.ROOT, key 0); only the writers
    drawn are read (a lazy source stays lazy). ConfigError when there are none or too few."""
    total = data.num_writers
    if first >= total:
        raise ConfigError("data.max_writers", first, f"less than the data source's {total} writers "
                          "(FLTrust's root set is drawn from the writers beyond it)")
    counts = np.asarray(data.train_counts(), dtype=np.int64)[first:]
    have = int(counts.sum())
    if have < size:
        raise ConfigError("defense.aggregator_params.root_size", size, f"at most {have}, the train images "
                          f"of the {total - first} writers beyond data.max_writers = {first}")
    rows = np.sort(numpy_rng(seed, Stream.ROOT, 0).choice(have, size=size, replace=False))
    ends = np.cumsum(counts)
    owner = np.searchsorted(ends, rows, side="right")  # offset of the writer holding each row
    within = rows - (ends[owner] - counts[owner])
    pixels, labels, positions, per_writer = [], [], [], []
    for o in np.unique(owner).tolist():
        pix, lab = data.writer_train(first + o)
        take = within[owner == o]
        pixels.append(pix[take])
        labels.append(lab[take])
        positions.append(first + o)
        per_writer.append(len(take))
    ids = getattr(data, "writer_ids", None)
    return RootSet(
        np.ascontiguousarray(np.concatenate(pixels)), np.concatenate(labels).astype(np.int64), tuple(positions),
        tuple(str(ids[k]) if ids is not None else str(k) for k in positions), tuple(per_writer),
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
    run = RunningMean(updates.device)
    for i in range(n):  # key order, float64 sum; rows with TS 0 add nothing
        if ts[i] > 0:
            run.add(updates[i], float(scale[i]))
    return run.mean(total=total), ts


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

    check(p, cfg)  # built without a validated config (tests): the same refusal
    source = load_data(cfg.data.model_copy(update={"max_writers": None}), cfg.seed)
    root = draw_root_set(source, cfg.data.max_writers, p.root_size, cfg.seed)
    hp = SGDParams(cfg.fl.local_epochs, cfg.fl.batch_size, cfg.fl.client_lr)
    return FLTrust(root, hp, cfg.fl.threads)


SPEC = register(AggregatorSpec(
    "fltrust", FLTrustParams, build, lambda p: "FLTrust" + ("" if p.root_size == 100 else f" root={p.root_size}"),
    check=check,
))
