"""`vectorized`: a round's benign clients train in lock-step as ONE batched computation.

The C clients' weights are stacked along a leading client axis and every SGD step of every
client is one call of `vmap(grad(loss))` over `torch.func.functional_call` of the engine's
own `CNN` (so the architecture cannot drift from `fl_core.models`): `vmap` turns each
convolution into one grouped convolution over all clients and each dense layer into one
batched matmul. One lock-step is then ~10 kernels for the whole cohort instead of ~10 per
client, which is what a GPU needs; on a CPU it is not faster than the per-client loop
(measured in BENCHMARKS.md), so `fl.backend: auto` uses it on CUDA only.

Exactly the same steps as `sequential`, client by client:

- Each client's examples are shuffled once per epoch by `torch.randperm(n_k, generator=g_k)`
  from the task's own CPU generator, the same draws in the same order as
  `client.sgd_epochs`, and cut at the same batch boundaries, the last partial batch
  included.
- Unequal sizes: a client with fewer batches simply stops. Clients are ordered by their
  number of batches per epoch (descending), so the clients still active in lock-step `s`
  are a prefix of the stack and the step runs on a view `[:m_s]` of the stacked weights:
  a finished client costs nothing and is never touched. Inside a partial batch the
  padding rows get weight 0 and the loss is the sum over the client's real rows divided
  by their count — the mean cross-entropy over its real examples, as `F.cross_entropy`
  computes it in `sequential`.
- Dropout: every client gets its own masks from a counter-based stream keyed by its task
  seed, its epoch, its batch index within the epoch and the layer (`keyed_keep_scale`), so
  a client's masks do not depend on which clients share its cohort, their order, the
  number of workers or the device (the stream is integer arithmetic, identical on CPU and
  CUDA). They cannot be bit-identical to `sequential`'s masks, which come from torch's
  global RNG seeded by `client_rng_scope`: with dropout off the two backends agree to
  float tolerance (the test suite checks `allclose` weights), with dropout on they agree
  statistically (the test suite checks the accuracy trajectories).

The SGD update is plain `w ← w − lr·g` on the stacked weights (`torch._foreach_add_`);
`fl.precision` (TF32 on CUDA; bf16 autocast on CUDA and on CPUs with native bf16) is applied
around it by `ClientRunner` (`backends.precision_scope`): the stacked weights, their
gradients and this update stay float32 under bf16.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fl_core.backends.base import BackendContext, require_benign
from fl_core.training import Cohort, current_memory_format, task_generator, to_input
from fl_core.types import ClientResult, ClientTask

_M32 = 0xFFFFFFFF
_SALT = 0x5BD1E995  # separates this stream from any other use of the task seed


def hash32(x):
    """A 32-bit integer mixer (C. Wellons' `lowbias32` variant 16/21f0aaad/15/735a2d97/15),
    a bijection on [0, 2^32). Works on numpy int64 arrays and torch int64 tensors holding
    values in [0, 2^32): both multipliers are < 2^31, so no product overflows int64 and the
    result is the same on every device."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    return x ^ (x >> 15)


def dropout_keys(seeds: Sequence[int], epochs: int, steps: int, layers: int) -> np.ndarray:
    """Per (epoch, batch, layer, client) the two 32-bit keys of its mask stream.

    Args:
        seeds: the clients' task seeds (`ClientTask.seed`, < 2^63).
    Returns:
        int64 array (epochs, steps, layers, C, 2).
    """
    s = np.asarray([int(v) for v in seeds], dtype=np.uint64)
    lo = (s & np.uint64(_M32)).astype(np.int64)
    hi = (s >> np.uint64(32)).astype(np.int64)
    kc = hash32(hash32(lo ^ _SALT) ^ hi)  # (C,)
    e = np.arange(epochs, dtype=np.int64)[:, None, None, None]
    b = np.arange(steps, dtype=np.int64)[None, :, None, None]
    layer = np.arange(layers, dtype=np.int64)[None, None, :, None]
    k = hash32(hash32(hash32(kc[None, None, None, :] ^ e) ^ b) ^ layer)
    return np.stack([hash32(k ^ 0x1), hash32(k ^ 0x2)], axis=-1)


def keyed_keep_scale(keys: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """Inverted-dropout multipliers for C clients: (C, *shape) float32, each entry 0 with
    probability p, else 1/(1−p) (what `nn.Dropout` multiplies by).

    Entry j of client c is decided by byte j % 4 of `hash32(hash32(⌊j/4⌋ ^ k1) ^ k2)`, where
    (k1, k2) = keys[c]: one hash per four entries, a handful of elementwise kernels for the
    whole cohort, no generator state, and the same bytes on every little-endian device (CPU
    and CUDA). p is applied at a resolution of 1/256 (exact for the CNN's 0.25 and 0.5);
    the scale uses the realised rate, so E[multiplier] = 1 exactly.
    """
    c = keys.shape[0]
    n = math.prod(shape)
    t = int(round(p * 256))
    if t <= 0:
        return torch.ones((c, *shape), device=keys.device)
    if t >= 256:
        return torch.zeros((c, *shape), device=keys.device)
    words = (n + 3) // 4
    j = torch.arange(words, device=keys.device, dtype=torch.int64)
    h = hash32(hash32(j[None, :] ^ keys[:, 0:1]) ^ keys[:, 1:2])  # (C, words) in [0, 2^32)
    # shift to the int32 range (exact, no wrap-around), then read the four bytes of each word
    u8 = (h - (1 << 31)).to(torch.int32).view(torch.uint8)[:, :n]
    return torch.where(u8 >= t, 256.0 / (256 - t), 0.0).to(torch.float32).reshape(c, *shape)


class _ScaleDropout(nn.Module):
    """Stands in for `nn.Dropout` in the functional model: multiplies by a precomputed
    `scale` buffer (passed per client through `functional_call`); the default scalar 1
    leaves the input unchanged (dropout p = 0)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.register_buffer("scale", torch.ones(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _functional_copy(model: nn.Module, device: torch.device) -> tuple[nn.Module, list[tuple[str, float]]]:
    """A copy of `model` whose `nn.Dropout`s are `_ScaleDropout`s; returns it and the
    (module name, p) of each dropout, in forward order of registration."""
    fmodel = copy.deepcopy(model).to(device)
    drops = []
    for name, module in list(fmodel.named_modules()):
        if isinstance(module, nn.Dropout):
            parent_name, _, attr = name.rpartition(".")
            parent = fmodel.get_submodule(parent_name) if parent_name else fmodel
            setattr(parent, attr, _ScaleDropout(module.p))
            drops.append((name, float(module.p)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise NotImplementedError("the vectorized backend does not batch BatchNorm statistics")
    fmodel.train()
    return fmodel, drops


def _dropout_shapes(fmodel: nn.Module, names: list[str], device: torch.device) -> dict[str, tuple[int, ...]]:
    """Per-example input shape of each dropout (one forward of a blank image)."""
    shapes: dict[str, tuple[int, ...]] = {}
    _blank_forward(fmodel, device, {
        fmodel.get_submodule(n): (lambda m, inp, out, n=n: shapes.__setitem__(n, tuple(inp[0].shape[1:])))
        for n in names
    })
    return shapes


def _blank_forward(model: nn.Module, device: torch.device, hooks: dict) -> None:
    """One no-grad forward of a blank 28×28 image with `hooks` (module → forward hook)
    registered for its duration: how the backend measures shapes and sizes."""
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    try:
        with torch.no_grad():
            model(torch.zeros((1, 1, 28, 28), device=device, dtype=next(model.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()


def _vmap_step(fmodel: nn.Module):
    """The generic formulation: `vmap(grad(loss ∘ functional_call(model)))` over the
    stacked weights; works for any model whose only train-mode randomness is nn.Dropout."""

    def client_loss(params, scales, x, y, w, count):
        logits = functional_call(fmodel, (params, scales), (x,))
        loss = (F.cross_entropy(logits, y, reduction="none") * w).sum() / count
        return loss, loss.detach()

    return vmap(grad(client_loss, has_aux=True))


def _conv1_bmm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The first convolution (1 → 32 channels, 3×3) of m clients as ONE batched matmul over
    their 3×3 patches, bias folded in as a column of ones: x (m, B, 28, 28), weight
    (m, 32, 1, 3, 3), bias (m, 32) → (B, m·32, 26, 26), the layout of a grouped conv.

    Why not a grouped conv: with one input channel per group, CPU kernels compute the
    weight and bias gradients with a reduction order that depends on the number of groups,
    so a client's update would change (in the last bits) with the size of its chunk. A
    batched matmul computes each client's product on its own, so a client's result is the
    same in a chunk of 1 or 1,000 (tests/fl_core/test_chunking.py)."""
    m, b, hgt, wid = x.shape
    oh, ow = hgt - 2, wid - 2
    patches = F.unfold(x.reshape(m * b, 1, hgt, wid), 3)  # (m·B, 9, oh·ow)
    patches = patches.view(m, b, 9, oh * ow).transpose(2, 3).reshape(m, b * oh * ow, 9)
    patches = torch.cat([patches, patches.new_ones(m, b * oh * ow, 1)], dim=2)  # (m, B·oh·ow, 10)
    kernel = torch.cat([weight.reshape(m, -1, 9), bias.unsqueeze(2)], dim=2).transpose(1, 2)  # (m, 10, 32)
    out = torch.bmm(patches, kernel)  # (m, B·oh·ow, 32)
    c = kernel.shape[2]
    # contiguous: at m = 1 the reshape would be a channels-last view, and conv2 would take
    # another kernel (other bits) than for m > 1; under the bf16 CPU path's channels-last
    # scope, channels-last for every m, for the same reason
    fmt = current_memory_format() or torch.contiguous_format
    return out.view(m, b, oh, ow, c).permute(1, 0, 4, 2, 3).reshape(b, m * c, oh, ow).contiguous(memory_format=fmt)


def _grouped_cnn_step(drop_names: tuple[str, str]):
    """The paper CNN written directly as batched ops over m clients (conv1 as a batched
    matmul over patches, conv2 as one grouped conv with the clients as groups, `baddbmm` for
    the dense layers) and differentiated by plain autograd: the same arithmetic as `vmap`
    produces, without its per-op wrapping, and with every op computing each client's part on
    its own (so chunking a cohort changes no client's bits on a CPU).
    `fl_core.models.CNN` is the reference; a test checks both formulations agree."""

    def step(params, scales, x, y, w, count):
        m, b = x.shape[0], x.shape[1]
        p = {k: v.detach().requires_grad_() for k, v in params.items()}
        h = F.relu(_conv1_bmm(x.reshape(m, b, 28, 28), p["conv1.weight"], p["conv1.bias"]))  # (B, m·32, 26, 26)
        h = F.relu(F.conv2d(h, p["conv2.weight"].flatten(0, 1), p["conv2.bias"].flatten(), groups=m))
        h = F.max_pool2d(h, 2)  # (B, m·64, 12, 12)
        h = h.reshape(b, m, -1).transpose(0, 1)  # (m, B, 9216), torch.flatten's order per client
        if f"{drop_names[0]}.scale" in scales:  # absent when that dropout has p = 0
            h = h * scales[f"{drop_names[0]}.scale"]
        h = F.relu(torch.baddbmm(p["fc1.bias"].unsqueeze(1), h, p["fc1.weight"].transpose(1, 2)))
        if f"{drop_names[1]}.scale" in scales:
            h = h * scales[f"{drop_names[1]}.scale"]
        logits = torch.baddbmm(p["fc2.bias"].unsqueeze(1), h, p["fc2.weight"].transpose(1, 2))
        ce = F.cross_entropy(logits.reshape(m * b, -1), y.reshape(-1), reduction="none").view(m, b)
        loss = (ce * w).sum(1) / count  # (m,): each client's mean over its real rows
        grads = torch.autograd.grad(loss.sum(), list(p.values()))
        return dict(zip(p.keys(), grads)), loss.detach()

    return step


def _is_paper_cnn(model: nn.Module) -> bool:
    from fl_core.models import CNN

    if type(model) is not CNN:
        return False
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    return shapes == {
        "conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,),
        "fc1.weight": (128, 9216), "fc1.bias": (128,), "fc2.weight": (10, 128), "fc2.bias": (10,),
    }


#: formulation name → does it apply to this model?
FORMULATIONS = ("grouped", "vmap")

#: `fl.vectorized_chunk: auto` on a CPU: clients per chunk (~23 MB each measured for the
#: paper CNN, BENCHMARKS.md), about 1.5 GB at the chunk's peak.
CPU_CHUNK = 64
#: `auto` on CUDA: the share of the device's free memory a chunk may plan to use.
AUTO_MEMORY_SHARE = 0.5
PARAM_COPIES = 4
ACTIVATION_COPIES = 4


def _activations_per_example(model: nn.Module, device: torch.device) -> int:
    """Values every leaf module outputs for one example (one forward of a blank image)."""
    total = 0

    def count(module, inp, out):
        nonlocal total
        total += out.numel()

    _blank_forward(model, device, {m: count for m in model.modules() if not list(m.children())})
    return total


class VectorizedBackend:
    """See the module docstring. Built from a `BackendContext`: reads its device, SGD
    hyper-parameters, chunk setting and model (architecture and dropout p) once.

    Args:
        formulation: `grouped` (the paper CNN as hand-batched ops, the default for it),
            `vmap` (generic torch.func, any model), or `auto` (grouped for the paper CNN,
            else vmap).
    """

    name = "vectorized"

    def __init__(self, ctx: BackendContext, formulation: str = "auto"):
        self.device = ctx.device
        self.hp = ctx.hp
        self.chunk = ctx.chunk
        self.fmodel, drops = _functional_copy(ctx.model, self.device)
        self.param_names = [n for n, _ in self.fmodel.named_parameters()]
        self.param_shapes = [p.shape for _, p in self.fmodel.named_parameters()]
        self.drops = [(n, p) for n, p in drops if p > 0.0]  # p = 0 needs no mask at all
        self.drop_shapes = _dropout_shapes(self.fmodel, [n for n, _ in self.drops], self.device)

        if formulation == "auto":
            formulation = "grouped" if _is_paper_cnn(ctx.model) else "vmap"
        if formulation == "grouped":
            if not _is_paper_cnn(ctx.model):
                raise ValueError("formulation 'grouped' is written for fl_core.models.CNN; use 'vmap'")
            names = [n for n, _ in drops]
            if names != ["dropout1", "dropout2"]:
                raise ValueError(f"the paper CNN has dropout1 and dropout2, found {names}")
            self._grad_step = _grouped_cnn_step(("dropout1", "dropout2"))
        elif formulation == "vmap":
            self._grad_step = _vmap_step(self.fmodel)
        else:
            raise ValueError(f"unknown formulation {formulation!r}; one of {FORMULATIONS} or 'auto'")
        self.formulation = formulation
        self._bytes_per_client: int | None = None

    # -- chunks ------------------------------------------------------------------------
    def chunk_size(self, n_tasks: int) -> int:
        """`fl.vectorized_chunk`, or for `auto` what fits: on CUDA half the device's free
        memory (`torch.cuda.mem_get_info`, asked at each round) over `bytes_per_client`; on
        a CPU `CPU_CHUNK`. Never more than `n_tasks`."""
        want = self.chunk
        if want == "auto":
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                want = int(AUTO_MEMORY_SHARE * free // self.bytes_per_client())
            else:
                want = CPU_CHUNK
        return max(1, min(int(want), max(n_tasks, 1)))

    def bytes_per_client(self) -> int:
        """A generous estimate of one client's device memory in a lock-step: its weights
        `PARAM_COPIES` times (stacked weights, gradients, the update on its way out, slack)
        and every layer's output for one batch `ACTIVATION_COPIES` times (the saved
        activations, their gradients, conv1's patches, slack)."""
        if self._bytes_per_client is None:
            params = sum(math.prod(s) for s in self.param_shapes)
            acts = _activations_per_example(self.fmodel, self.device)
            self._bytes_per_client = 4 * (PARAM_COPIES * params + ACTIVATION_COPIES * self.hp.batch_size * acts)
        return self._bytes_per_client

    # -- the round ---------------------------------------------------------------------
    def train(self, tasks: Sequence[ClientTask], global_params: torch.Tensor, cohort: Cohort) -> list[ClientResult]:
        """Train `tasks` in chunks of at most `chunk_size` clients, one after the other;
        a client's result does not depend on its chunk (see `_conv1_bmm`)."""
        require_benign(tasks)
        if not tasks:
            return []
        size = self.chunk_size(len(tasks))
        out: list[ClientResult] = []
        for start in range(0, len(tasks), size):
            out.extend(self._train_chunk(tasks[start : start + size], global_params, cohort))
        return out

    def _train_chunk(self, tasks: Sequence[ClientTask], global_params: torch.Tensor, cohort: Cohort) -> list[ClientResult]:
        hp, dev = self.hp, self.device
        bsz, epochs = hp.batch_size, hp.epochs
        spans = [cohort.rows(t.client_index) for t in tasks]  # rows in the cohort's arrays
        sizes = [b - a for a, b in spans]
        nbatch = [-(-n // bsz) for n in sizes]
        # Stack order: most batches first, so the active clients of a step are a prefix.
        order = sorted(range(len(tasks)), key=lambda i: -nbatch[i])
        c = len(order)
        steps = nbatch[order[0]]
        active = [sum(nbatch[i] > s for i in order) for s in range(steps)]

        rows, weights, counts = self._batch_plan([tasks[i] for i in order], [spans[i][0] for i in order],
                                                 [sizes[i] for i in order], steps)
        keys = torch.from_numpy(
            dropout_keys([tasks[i].seed for i in order], epochs, steps, len(self.drops))
        ).to(dev)
        rows, weights, counts = rows.to(dev), weights.to(dev), counts.to(dev)

        gp = global_params.to(dev)
        stacked, offset = {}, 0
        for name, shape in zip(self.param_names, self.param_shapes):
            n = math.prod(shape)
            stacked[name] = gp[offset : offset + n].view(shape).unsqueeze(0).repeat(c, *([1] * len(shape)))
            offset += n
        assert offset == gp.numel(), "global vector and model disagree"
        loss_sum = torch.zeros(c, dtype=torch.float64, device=dev)
        pixels, labels = cohort.pixels, cohort.labels

        for e in range(epochs):
            for s in range(steps):
                m = active[s]
                r = rows[e, s, :m]
                x = to_input(pixels[r.reshape(-1)]).view(m, bsz, 1, *pixels.shape[1:])
                scales = {
                    f"{name}.scale": keyed_keep_scale(keys[e, s, li, :m], (bsz, *self.drop_shapes[name]), p)
                    for li, (name, p) in enumerate(self.drops)
                }
                params = {k: v[:m] for k, v in stacked.items()}
                grads, loss = self._grad_step(params, scales, x, labels[r], weights[e, s, :m], counts[e, s, :m])
                torch._foreach_add_(list(params.values()), [grads[k] for k in params], alpha=-hp.lr)
                loss_sum[:m] += loss.double()

        losses = loss_sum.cpu().tolist()
        out: list[ClientResult | None] = [None] * c
        for pos, i in enumerate(order):
            t = tasks[i]
            # one client at a time (own storage: a view would pickle the whole chunk), so the
            # host never holds a second copy of the chunk's weights
            delta = (torch.cat([stacked[k][pos].reshape(-1) for k in self.param_names]) - gp).cpu()
            out[i] = ClientResult(
                t.client_index, t.slot, t.role, sizes[i], delta,
                {"train_loss": losses[pos] / max(epochs * nbatch[i], 1)},
            )
        return out  # type: ignore[return-value]

    def _batch_plan(
        self, tasks: Sequence[ClientTask], starts: Sequence[int], sizes: Sequence[int], steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row indices (E, S, C, B) into the cohort's arrays (client rows start at `starts`),
        row weights (E, S, C, B) (1 real, 0 padding) and real-row counts (E, S, C) (≥ 1), on
        the CPU.

        Each client's permutation per epoch is `torch.randperm(n, generator=g)` from
        `training.task_generator(task)`: the same draws as `training.sgd_epochs`."""
        bsz, epochs, c = self.hp.batch_size, self.hp.epochs, len(tasks)
        width = steps * bsz
        rows = torch.zeros((epochs, c, width), dtype=torch.int64)
        weights = torch.zeros((epochs, c, width), dtype=torch.float32)
        for pos, (t, start, n) in enumerate(zip(tasks, starts, sizes)):
            gen = task_generator(t)
            for e in range(epochs):
                perm = torch.randperm(n, generator=gen)
                rows[e, pos, :n] = perm + start
                rows[e, pos, n:] = start if n else 0
                weights[e, pos, :n] = 1.0
        rows = rows.view(epochs, c, steps, bsz).transpose(1, 2).contiguous()
        weights = weights.view(epochs, c, steps, bsz).transpose(1, 2).contiguous()
        counts = weights.sum(-1).clamp_min(1.0)
        return rows, weights, counts
