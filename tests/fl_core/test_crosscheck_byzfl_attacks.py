"""Cross-checks of the zoo's attacks against ByzFL 0.0.11 (LPD-EPFL/byzfl, a test-only
oracle): the same inputs into both, agreement to float precision.

Definitions mapped (ByzFL's callables take the honest vectors, [k, d]):
- ALIE: ByzFL's ALittleIsEnough(τ) returns μ + τ·σ₁ with σ₁ the ddof-1 standard deviation
  (`tools.var(..., ddof=1)`); ours sends μ + z·σ₀ with the ddof-0 one (the authors'
  `np.var`). σ₀ = σ₁·√((k − 1)/k), so ByzFL with τ = z·√((k − 1)/k) is ours with z. Both
  are fed the same vectors, our updates Δ; ByzFL's framework feeds it gradients (≈ −Δ/η),
  so its own default step, +τσ on gradients, is our z = −τ·√(k/(k − 1)) (alie.py).
- IPM: InnerProductManipulation(τ) = −τ·mean: our ε = τ (ByzFL's default τ is 2.0, ours 0.1).
- SignFlipping = −mean: our omniscient sign flip.
- Gaussian(mu, sigma): `torch.randn(d) * sigma + mu` from the global torch RNG. Ours draws
  the same expression from the forge generator; seeding the global RNG (inside fork_rng,
  so the test leaves it as it was) and our generator with the same seed gives the same
  bits (torch's CPU generator is one Mersenne Twister whichever object holds it), so the
  comparison is exact, for one attacker (d values).
- LabelFlipping: ByzFL's attack callable only averages; the flip is in its client
  (`fed_framework/client.py`: targets.sub(L − 1).mul(-1), gradient of the flipped batch
  in `gradient_LF`). We build its Client, put our CNN in it (dropout off: ByzFL takes the
  flipped gradient in eval mode, our client trains in train mode), feed it our batch in
  our client's order, and compare its flipped gradient g with our label-flip update from
  one full-batch step at η = 1: Δ = fl(fl(w − g) − w).

Tolerances: ours computes mean and std in float64 and rounds to float32 once; ByzFL's numpy
path works in float64 throughout. The two float64 results differ by a few float64 ulps
(~1e-16 relative, from the τ mapping's √ and summation order), far below float32's half
ulp (2^-24 relative), so the float32 results agree to one float32 ulp at most:
rtol = 2^-23; atol = 1e-12 covers outputs that cancel to ~0 where the relative bound means
nothing.
"""

from __future__ import annotations

import math

import byzfl  # the pinned test-only oracle (pyproject's test extra): missing = a failure, not a skip
import numpy as np
import pytest
import torch

from fl_core.attacks.alie import ALIE
from fl_core.attacks.base import ForgeContext
from fl_core.attacks.gaussian import Gaussian
from fl_core.attacks.ipm import IPM
from fl_core.attacks.label_flip import LabelFlip
from fl_core.attacks.sign_flip import SignFlip

RTOL, ATOL = 2.0**-23, 1e-12


def test_byzfl_is_the_pinned_version():
    from importlib.metadata import version

    assert version("byzfl") == "0.0.11"


def inputs(k=7, d=33, a=3, seed=0):
    rng = np.random.default_rng(seed)
    known = torch.from_numpy(rng.normal(0.0, 0.5, (k, d)).astype(np.float32))
    own = torch.from_numpy(rng.normal(0.0, 0.5, (a, d)).astype(np.float32))
    return known, own, ForgeContext(0, 0, k + a, a, "omniscient", None)


def agree(ours: torch.Tensor, ref: np.ndarray) -> None:
    ref_t = torch.from_numpy(np.asarray(ref, dtype=np.float64))
    for row in ours:
        assert torch.allclose(row.double(), ref_t, rtol=RTOL, atol=ATOL), (row, ref_t)


@pytest.mark.parametrize("z", [1.5, -0.8, 0.0])
@pytest.mark.parametrize("k", [2, 7])
def test_alie_matches_byzfl_with_tau_mapped(z, k):
    known, own, ctx = inputs(k=k)
    ours, _ = ALIE(z, "omniscient").forge(known, own, ctx, torch.Generator())
    tau = float(z * math.sqrt((k - 1) / k))
    agree(ours, byzfl.ALittleIsEnough(tau=tau)(known.double().numpy()))


def test_alie_with_derived_z_matches_byzfl_and_differs_without_the_ddof_map():
    known, own, ctx = inputs(k=8, a=2)  # n = 10, f = 2 → z = 0: both send the mean
    ours, m = ALIE(None, "omniscient").forge(known, own, ctx, torch.Generator())
    assert m["alie_z"] == 0.0
    agree(ours, byzfl.ALittleIsEnough(tau=0.0)(known.double().numpy()))
    ours, _ = ALIE(1.5, "omniscient").forge(known, own, ctx, torch.Generator())
    unmapped = torch.from_numpy(byzfl.ALittleIsEnough(tau=1.5)(known.double().numpy()))
    assert not torch.allclose(ours[0].double(), unmapped, rtol=1e-4)  # ddof 0 vs 1 is visible


@pytest.mark.parametrize("eps", [0.1, 2.0])
def test_ipm_matches_byzfl(eps):
    known, own, ctx = inputs()
    ours, _ = IPM(eps, "omniscient").forge(known, own, ctx, torch.Generator())
    agree(ours, byzfl.InnerProductManipulation(tau=eps)(known.double().numpy()))


def test_sign_flip_matches_byzfl():
    known, own, ctx = inputs()
    ours, _ = SignFlip("omniscient").forge(known, own, ctx, torch.Generator())
    agree(ours, byzfl.SignFlipping()(known.double().numpy()))


@pytest.mark.parametrize("mu,sigma", [(0.0, 1.0), (0.5, 2.0)])
def test_gaussian_matches_byzfl_bit_for_bit_from_the_same_seed(mu, sigma):
    known, own, ctx = inputs(a=1, d=37)
    with torch.random.fork_rng():
        torch.manual_seed(2024)
        ref = byzfl.Gaussian(mu=mu, sigma=sigma)(known)  # torch path: torch.randn(d) * sigma + mu
    ours, _ = Gaussian(mu, sigma).forge(known, own, ctx, torch.Generator().manual_seed(2024))
    assert ours.shape == (1, 37) and torch.equal(ours[0], ref)


def test_label_flip_matches_byzfl_clients_flipped_gradient():
    from byzfl.fed_framework.client import Client

    from fl_core.models import CNN
    from fl_core.params import get_flat
    from fl_core.training import ClientData, SGDParams, to_input
    from fl_core.types import ClientTask

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CNN()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    w = get_flat(model).clone()
    rng = np.random.default_rng(1)
    n = 6
    own = ClientData(torch.from_numpy(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                     torch.from_numpy(rng.integers(0, 10, n).astype(np.int64)))
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    perm = torch.randperm(n, generator=gen())  # our client's one full batch, in its order
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(to_input(own.pixels[perm]), own.labels[perm]), batch_size=n, shuffle=False)
    client = Client({"model_name": "logreg_mnist", "device": "cpu", "loss_name": "CrossEntropyLoss",
                     "LabelFlipping": True, "nb_labels": 10, "momentum": 0.0, "training_dataloader": loader,
                     "store_per_client_metrics": False, "learning_rate": None, "weight_decay": None,
                     "milestones": None, "learning_rate_decay": None, "optimizer_name": None})
    client.model = model
    client.compute_gradients()
    g = client.get_flat_flipped_gradients().detach().clone()

    task = ClientTask(0, 0, 0, "attacker", 1, 10.0, None)  # β = 10 must not apply
    delta, _ = LabelFlip().craft(task, model, w, own, own, SGDParams(1, n, 1.0), gen())
    # Δ = fl(fl(w − g) − w): two float32 roundings, each ≤ 2^-24 of a value ≤ |w| + |g|
    tol = 2.0**-23 * (w.abs() + g.abs())
    assert bool(((delta + g).abs() <= tol).all()), float((delta + g).abs().max())
    assert float(g.abs().max()) > 1e-3  # a real gradient, not zeros
    # unflipped labels give another gradient: the flip is what is compared
    client.training_dataloader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(to_input(own.pixels[perm]), 9 - own.labels[perm]), batch_size=n)
    client.train_iterator = iter(client.training_dataloader)
    client.compute_gradients()
    assert not torch.allclose(client.get_flat_flipped_gradients(), g, atol=1e-4)
