"""Model weights as one flat float32 vector: the unit every update, norm, clip and
noise draw works on (global L2 norms over all parameters, never per layer)."""

from __future__ import annotations

import torch
from torch import nn


def get_flat(model: nn.Module) -> torch.Tensor:
    """All parameters concatenated in `model.parameters()` order (a new tensor)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@torch.no_grad()
def set_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector into the model's parameters in place."""
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} values, model has {offset}")


def l2_norm(v: torch.Tensor) -> float:
    """Global L2 norm, accumulated in float64 so it does not depend on vector length."""
    return float(torch.linalg.vector_norm(v.double()))


def cnn_param_slice(name: str) -> tuple[int, torch.Size]:
    """(offset, shape) of the paper CNN's parameter `name` (e.g. "fc2.weight") in the flat
    vector (`model.parameters()` order, as `get_flat`). Why one helper: FoolsGold, FLDetector,
    DeepSight and FreqFed each read one layer out of the flat updates. Shapes come from a
    meta-device CNN: no init drawn, no memory."""
    from fl_core.models import CNN

    with torch.device("meta"):
        model = CNN()
    offset = 0
    for pname, param in model.named_parameters():
        if pname == name:
            return offset, param.shape
        offset += param.numel()
    raise KeyError(f"the CNN has no parameter {name!r}; it has {', '.join(n for n, _ in model.named_parameters())}")
