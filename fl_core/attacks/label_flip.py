"""Label flipping, data poisoning through the ordinary client: the attacker trains exactly
as a benign client (`fl_core.training.local_train`: fl.local_epochs epochs of minibatch
SGD from w_t on its own data) but on labels y → L − 1 − y (L = 10 digit classes: 9 − y),
and sends that update unboosted. The map is ByzFL's (`fed_framework/client.py`:
`targets.sub(L − 1).mul(-1)`) and epfml byzantine-robust-noniid-optimizer's
(`codes/attacks/labelflipping.py`); FLPoison's default flips one class (2 → 7) instead.
No forging: it works with every schedule and backend as any client does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fl_core.attacks.base import AttackSpec, register

if TYPE_CHECKING:
    import torch

NUM_CLASSES = 10  # the CNN's output classes (fl_core.models.CNN), the digits 0–9


def flip_labels(labels: "torch.Tensor", num_classes: int = NUM_CLASSES) -> "torch.Tensor":
    """y → num_classes − 1 − y."""
    return (num_classes - 1) - labels


class LabelFlip:
    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        from fl_core.training import ClientData, local_train

        return local_train(model, global_params, ClientData(benign.pixels, flip_labels(benign.labels)), hp, gen)


register(AttackSpec("label-flip", "label flip", lambda params, config: LabelFlip(), rank=11, goal="untargeted"))
