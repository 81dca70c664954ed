"""Named, stateless random streams derived from the one config seed.

Every draw comes from `SeedSequence(entropy=seed, spawn_key=(stream, *keys))`, keyed by
round and stable client index, never from global RNG state. So a checkpoint holds no RNG
state, a resumed run equals an uninterrupted one, and results do not depend on the number
of workers or on which actor trained which client.
"""

from __future__ import annotations

import contextlib
from enum import IntEnum
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # torch is imported where a torch stream is made: data and grid
    import torch   # validation use the numpy streams only and start without torch


class Stream(IntEnum):
    """Append only: renumbering changes every result."""

    INIT = 0          # initial model weights
    POPULATION = 1    # attacker pool, target writers, eval subsample
    SAMPLING = 2      # cohort of a round
    CLIENT = 3        # a client's shuffling and dropout in a round
    ATTACK = 4        # the attacker's shuffling/dropout, attacker choice in fixed frequency
    DP_NOISE = 5      # server noise of a round
    EVAL = 6          # evaluation-time randomness
    DATA = 7          # synthetic data generation
    AGG_NOISE = 8     # noise an aggregator adds itself (FLAME), per round
    FORGE = 9         # the colluding attackers' joint crafting of a round (attacks' round hook)
    PREAGG = 10       # pre-aggregation draws of a round (Bucketing's shuffle)
    ROOT = 11         # a server's own clean data and training (FLTrust's root set)
    CLIP_COUNT = 12   # adaptive clipping's noisy count of unclipped updates, per round
    TRIGGER = 13      # a learned-trigger attack's optimisation of its trigger, per round (A3FL, IBA)
    CRFL = 14         # CRFL's noise on the global model (round, 0) and its certification's copies (round, 1, m)


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed for (seed, stream, *keys); the same inputs always give the same seed."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(stream), *map(int, keys)))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def numpy_rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, stream, *keys))


def torch_generator(seed: int, stream: Stream, *keys: int, device: "str | torch.device" = "cpu") -> "torch.Generator":
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, stream, *keys))
    return g


@contextlib.contextmanager
def client_rng_scope(task_seed: int, device: "str | torch.device" = "cpu") -> Iterator[None]:
    """Run code that uses torch's global RNG (dropout) with a state derived from the
    task's seed, and restore the global state afterwards."""
    import torch

    dev = torch.device(device)
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cuda"):
        torch.manual_seed(task_seed)
        yield
