"""The validated, frozen configuration of one simulation (the public key contract).

Every grid file, `fl-sweep simulate --set key=value` and checkpoint speaks these
dotted keys; they are fixed by the issues, so add keys but never rename them.
Validation happens once at the edge (`parse_config`), and a bad value becomes a
`ConfigError` naming the key and the allowed values. Inside fl_core only the typed
`SimulationConfig` travels, never dicts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import warnings
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from fl_core.errors import ConfigError, UnknownKeyError

if TYPE_CHECKING:
    from collections.abc import Set


@dataclass(frozen=True)
class PluginHooks:
    """What the schema asks of the plug-in families, without importing them: the families
    register these (`fl_core.plugin_config`, imported by the `fl_core` package itself, so
    they are in place before any config is parsed). config.py stays a plain schema.

    Attributes:
        attack: raw `attack` mapping → the same with `kind` checked, `params` and
            `backdoor_params` validated by the plug-ins' own models (defaults filled in), the
            backdoor resolved, and the deprecated flat keys moved into the params.
        defense: raw `defense` mapping → the same with `aggregator_params` validated.
        data_source: raises a ConfigError unless `data.source` names a registered source.
        backend: the same for `fl.backend` (a registered backend or `auto`).
        check_attack, check_defense, check_data: the plug-ins' cross-field checks on the
            whole config (an attack's needs_bound and backdoor; an aggregator's own, e.g.
            Krum's f; a data source's need for `data.path`).
        keys: every registered plug-in's parameter keys (`attack.params.top_k`, ...).
    """

    attack: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    defense: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    data_source: Callable[[str], None]
    backend: Callable[[str], None]
    check_attack: Callable[["SimulationConfig"], None]
    check_defense: Callable[["SimulationConfig"], None]
    check_data: Callable[["SimulationConfig"], None]
    keys: Callable[[], "Set[str]"]


class DeprecatedConfigWarning(DeprecationWarning):
    """A config in an old shape was mapped onto the current one (one line: what moved)."""


_hooks: list[PluginHooks] = []


def register_plugin_hooks(hooks: PluginHooks) -> None:
    """Install the plug-in families' hooks (once; `fl_core.plugin_config`)."""
    _hooks[:] = [hooks]


def plugin_hooks() -> PluginHooks:
    if not _hooks:  # fl_core/__init__.py imports fl_core.plugin_config: never seen in practice
        raise RuntimeError("fl_core's plug-ins are not registered: import fl_core.plugin_config")
    return _hooks[0]


class _Frozen(BaseModel):
    """Frozen, unknown keys refused, no NaN/inf, and strict types: a number field takes a
    number (an integer where a float is expected), never `true` or the string "1"; a
    boolean takes only true/false. YAML's `true` for `fl.rounds` would otherwise run 1 round."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)


class DataConfig(_Frozen):
    source: str = Field(
        "embedded",
        min_length=1,
        description="where the writer-partitioned digits come from: a source registered in "
        "fl_core/data/ (embedded, synthetic, tff-h5, leaf)",
    )

    @field_validator("source")
    @classmethod
    def _registered_source(cls, v: str) -> str:
        plugin_hooks().data_source(v)
        return v
    path: str | None = Field(
        None,
        description="tff-h5: directory with fed_emnist_digitsonly_{train,test}.h5; "
        "leaf: directory with train/ and test/",
    )
    num_writers: int = Field(
        100, ge=2, le=10_000_000, description="synthetic only: number of writers K"
    )
    examples_per_writer: int = Field(
        100, ge=5, le=10_000, description="synthetic only: mean train images per writer"
    )
    max_writers: int | None = Field(
        None,
        ge=2,
        description="keep only the first N writers (sorted by id; after data.min_examples); null keeps all",
    )
    min_examples: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="drop the writers with fewer train images than this before anything counts them "
        "(K, ε·K, the target order; then data.max_writers cuts); LEAF's --min_samples; 0 keeps all. "
        "Eager populations only (a lazy one is refused)",
    )


class FLConfig(_Frozen):
    rounds: int = Field(300, ge=1, description="number of FedAvg rounds to run")
    clients_per_round: int = Field(30, ge=1, description="cohort size C·K")
    local_epochs: int = Field(5, ge=1, description="client epochs over its own data")
    batch_size: int = Field(20, ge=1, description="client minibatch size")
    client_lr: float = Field(0.1, gt=0, description="client SGD learning rate")
    server_lr: float = Field(1.0, gt=0, description="server learning rate η")
    eval_every: int = Field(1, ge=1, description="evaluate every N rounds (and the last)")
    eval_subsample: int | None = Field(
        None, ge=1, description="evaluate main task on a fixed random subset of N test images"
    )
    sampling: Literal["without-replacement", "with-replacement"] = Field(
        "without-replacement",
        description="cohort sampling; the paper samples without replacement, "
        "the original code with replacement",
    )
    backend: str = Field(
        "auto", min_length=1,
        description="client-training backend registered in fl_core/backends/ (sequential, vectorized), "
        "or auto: the fastest for the device",
    )

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, v: str) -> str:
        plugin_hooks().backend(v)
        return v
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32",
        description="client-training arithmetic: fp32 (IEEE, TF32 off), tf32 (CUDA only: TF32 "
        "matmuls/convolutions), bf16 (autocast, fp32 weights, optimizer and aggregation; on a CPU "
        "only where it has avx512_bf16 or amx_bf16, checked on the machine that trains, and "
        "channels-last there); changes float bits, so it is part of the result hash",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device")
    workers: int = Field(1, ge=1, description="Ray client-worker actors per trial (sweeper)")
    threads: int = Field(
        1,
        ge=1,
        le=256,
        description="torch intra-op CPU threads per client worker; fixed by the config because "
        "CPU float reductions (and so bit-exact results) depend on it",
    )
    vectorized_chunk: int | Literal["auto"] = Field(
        "auto",
        description="vectorized backend: train the benign cohort in chunks of at most this many "
        "clients (bounds device memory; auto sizes it from the device's free memory, 64 on a "
        "CPU); execution only: changes no result",
    )
    checkpoint_every: int = Field(10, ge=1, description="checkpoint every N rounds (and the last)")
    init: str = Field(
        "random",
        min_length=1,
        description="where round 0's weights come from: random (the CNN's seeded init), or a "
        "finished run to warm-start from (a `fl-sweep simulate --out` directory or its state.pt); "
        "rounds continue from its round, so attack.start_round keeps its meaning",
    )

    @field_validator("vectorized_chunk", mode="before")
    @classmethod
    def _chunk(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ConfigError("fl.vectorized_chunk", v, "auto, or an integer ≥ 1 (clients per vectorized chunk)")

    @model_validator(mode="after")
    def _precision_on_cpu(self) -> "FLConfig":
        # tf32 never runs on a CPU. bf16 on a CPU needs the CPU's native bf16, which only the
        # machine that trains can tell (a sweep's driver may not be one of its workers), and
        # device auto resolves there too: fl_core.backends.check_precision, at run start.
        if self.device == "cpu" and self.precision == "tf32":
            raise ConfigError("fl.precision", self.precision, "fp32 or bf16 when fl.device = cpu (tf32 is CUDA-only)")
        return self


class AttackConfig(_Frozen):
    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and "pgd_pass" in raw:
            raise UnknownKeyError(
                "attack.pgd_pass", raw["pgd_pass"],
                "nothing: the key was replaced by `attack.params.recipe` (reference | union | mixed | project-boost); "
                "pgd_pass: original → recipe: reference (now fl.local_epochs epochs per pass, as the "
                "reference code), pgd_pass: union → recipe: union",
            )
        return raw

    kind: str = Field(
        "none", min_length=1,
        description="attack plug-in name: a module of fl_core/attacks/ registers it (none, "
        "model-replacement, pgd, ...; docs/ROBUSTNESS.md); an unknown name lists them all",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the attack's own parameters, its params model's (e.g. {pgd_iterations: 5, recipe: "
        "reference} for pgd, {top_k: 0.01} for neurotoxin); missing ones take their defaults, filled in "
        "here so that equal settings hash equally",
    )

    backdoor: str | None = Field(
        None,
        description="backdoor task plug-in (fl_core/backdoors/): semantic (the paper's: target "
        "writers' 7s → 1) or trigger (a pixel pattern on any image → target label); null = the "
        "attack's own (trigger for dba, semantic otherwise)",
    )
    backdoor_params: dict[str, Any] = Field(
        default_factory=dict,
        description="the backdoor task's own parameters (e.g. {row: 0, col: 0, value: 0} for "
        "trigger); missing ones take their defaults",
    )

    @model_validator(mode="before")
    @classmethod
    def _attack_plugins(cls, raw: Any) -> Any:
        return plugin_hooks().attack(raw) if isinstance(raw, Mapping) else raw

    schedule: Literal["fixed-frequency", "random-sampling", "every-round"] = Field(
        "fixed-frequency",
        description="when attackers are in the cohort: fixed-frequency (one attacker every f rounds, "
        "the paper's), random-sampling (pool members the cohort draws attack), every-round (exactly "
        "round(ε·C·K) pool members in every round, the Byzantine literature's f of n)",
    )
    fraction: float | None = Field(
        None, gt=0, lt=1, description="ε: share of the K writers compromised, 0 < ε < 1"
    )
    frequency: int | None = Field(
        None,
        ge=1,
        description="fixed-frequency: attack every f rounds; null derives f = 1/(ε·C·K)",
    )
    start_round: int = Field(0, ge=0, description="first (0-based) round in which attackers act")
    stop_round: int | None = Field(
        None, ge=1,
        description="first (0-based) round in which attackers no longer act; null = attack to the "
        "end. The report's backdoor lifespan counts the rounds after it",
    )
    num_tasks: int = Field(30, ge=1, description="N: number of target writers whose 7s are backdoored")
    source_label: int = Field(7, ge=0, le=9, description="label of the backdoored images")
    target_label: int = Field(1, ge=0, le=9, description="label the attacker wants them to get")
    # Deprecated flat keys: they belong to the attacks that take them (`attack.params`); a
    # config in the old shape moves them there. A value the attack ignores stays here, so
    # that the config keeps the trial key it had (see `LEGACY_ATTACK_KEYS`).
    pgd_iterations: int | None = Field(
        None, ge=1, description="deprecated: attack.params.pgd_iterations of the attacks that take it"
    )
    recipe: str | None = Field(
        None, min_length=1, description="deprecated: attack.params.recipe of the attacks that take it"
    )
    poison_fraction: float | None = Field(
        None, gt=0, lt=1, description="deprecated: attack.params.poison_fraction of the attacks that take it"
    )
    @model_serializer(mode="wrap")
    def _without_unset_legacy(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A config in the new shape dumps without the deprecated keys (null there)."""
        out = handler(self)
        return {k: v for k, v in out.items() if not (k in LEGACY_ATTACK_KEYS and v is None)}

    max_tasks: int = Field(
        50, ge=1,
        description="the largest N any compared cell uses: the first max_tasks writers of the target "
        "order are never attackers, so the attacker pool is the same for every N ≤ max_tasks",
    )
    boost: float | None = Field(
        None, gt=0, description="β override; null = Σn/(η·m·n_a) under the weighting in force"
    )
    pool_rule: Literal["unbiased", "legacy-eligible"] = Field(
        "unbiased",
        description="how the attacker pool avoids the reserved target writers: unbiased (a uniform "
        "draw of round(ε·K) writers from the whole population; a reserved writer drawn is replaced "
        "by the next eligible one) or legacy-eligible (drawn among the unreserved writers, so biased "
        "toward writers without a source-label image: the engine before issue 25, whose trial keys "
        "it keeps)",
    )


DEFAULT_AGGREGATOR = "fedavg"
DEFAULT_CLIP_LR = 0.2  # η_C: Andrew et al. 2021, TF-Privacy, Flower
#: `defense.preaggregation` joins its step names with this: one scalar that a grid sweeps
#: (`defense.preaggregation: [null, bucketing, nnm+bucketing]`), MLflow logs and a report groups by.
PREAGGREGATION_SEPARATOR = "+"


#: CRFL's keys with their defaults (the authors' MNIST settings): neutral while CRFL is off
#: (`defense.crfl_sigma` null), when they must stay at these values (`check_crfl`).
CRFL_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "crfl_rho_slope": 0.1, "crfl_rho_offset": 2.0, "crfl_rho_max": 15.0, "crfl_certify_every": None,
    "crfl_certify_models": 1000, "crfl_certify_alpha": 0.001, "crfl_certify_sigma": None,
    "crfl_certify_radii": (0.0, 0.5, 1.0, 2.0), "crfl_certify_gamma": 100.0,
    "crfl_certify_poison_share": 0.05, "crfl_certify_local_iters": 30.0, "crfl_certify_rho_adv": 3.0,
})


class DefenseConfig(_Frozen):
    norm_bound: float | None = Field(
        None, gt=0, description="M: global L2 bound per client update; null = no clipping"
    )
    noise_sigma: float = Field(
        0.0,
        ge=0,
        description="σ: Gaussian noise std per coordinate (see noise_placement); 0 = off",
    )
    noise_placement: Literal["sum", "mean"] = Field(
        "sum",
        description="sum: σ on the sum of the C·K clipped updates, i.e. σ/(C·K) on the "
        "mean (reference code, default); mean: σ on the mean update",
    )
    weighting: Literal["auto", "weighted", "uniform"] = Field(
        "auto",
        description="aggregate weights: weighted by n_k, or uniform; auto = uniform when a "
        "defense is on (reference code), weighted otherwise",
    )
    aggregator: str = Field(
        DEFAULT_AGGREGATOR,
        min_length=1,
        description="server aggregation rule: a name registered in fl_core/aggregators/ (fedavg, "
        "median, krum, ...; docs/ROBUSTNESS.md); runs after the per-client clipping and before "
        "the noise",
    )
    aggregator_params: dict[str, Any] = Field(
        default_factory=dict,
        description="the aggregator's own parameters (e.g. {f: 3} for krum); missing ones take "
        "their defaults, which are filled in here so that equal settings hash equally",
    )

    preaggregation: str | None = Field(
        None,
        min_length=1,
        description="pre-aggregation steps applied in order to the clipped updates before the "
        "aggregator, names registered in fl_core/preaggregators/ joined by '+' (bucketing, nnm, "
        "nnm+bucketing); a YAML list of names is taken too; null = none",
    )
    preaggregation_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each pre-aggregation step's own parameters by step name (e.g. {bucketing: {s: 2}, "
        "nnm: {f: 3}}); missing ones take their defaults, filled in here so that equal settings hash equally",
    )

    @model_validator(mode="before")
    @classmethod
    def _aggregator(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            return raw
        return plugin_hooks().defense(raw)

    # Adaptive clipping (Andrew et al. 2021, fl_core/defenses/adaptive_clipping.py); the
    # defaults are TF-Privacy's and the paper's.
    clip_quantile: float | None = Field(
        None, ge=0, le=1,
        description="γ: adaptive clipping's target share of unclipped updates (0.5 = the median "
        "norm); the bound starts at defense.norm_bound and follows this quantile; null = the "
        "fixed bound M",
    )
    clip_lr: float = Field(
        DEFAULT_CLIP_LR, gt=0, le=10,
        description="η_C: adaptive clipping's geometric learning rate, C ← C·exp(−η_C (b̄ − γ)); "
        "the bound moves by at most a factor e^η_C per round",
    )
    clip_count_noise: float | None = Field(
        None, ge=0,
        description="σ_b: std of the Gaussian noise on adaptive clipping's count of unclipped "
        "updates; null = C·K/20 with weak DP on (defense.noise_sigma > 0), 0 without",
    )

    # CRFL (Xie et al. ICML'21, fl_core/defenses/crfl.py, fl_core/certify.py); the defaults are the
    # authors' MNIST settings (AI-secure/CRFL configs/mnist_params.yaml, mnist_smooth_params.yaml).
    crfl_sigma: float | None = Field(
        None, gt=0,
        description="σ: CRFL's Gaussian noise std per parameter of the clipped global model, each "
        "round (authors' MNIST: 0.01); null = CRFL off",
    )
    crfl_rho_slope: float = Field(
        CRFL_DEFAULTS["crfl_rho_slope"], gt=0,
        description="CRFL's global-model norm bound ρ_t = min(slope·t + offset, max), t the 1-based round: the slope",
    )
    crfl_rho_offset: float = Field(CRFL_DEFAULTS["crfl_rho_offset"], gt=0, description="ρ_t's offset (see crfl_rho_slope)")
    crfl_rho_max: float = Field(CRFL_DEFAULTS["crfl_rho_max"], gt=0, description="ρ_t's cap (see crfl_rho_slope)")
    crfl_certify_every: int | None = Field(
        None, ge=1,
        description="CRFL certification (N_m noisy copies vote) every N rounds, at evaluated rounds; "
        "null = the final round only",
    )
    crfl_certify_models: int = Field(
        CRFL_DEFAULTS["crfl_certify_models"], ge=2, le=100_000,
        description="N_m: noisy copies of the global model in the smoothed model's vote",
    )
    crfl_certify_alpha: float = Field(
        CRFL_DEFAULTS["crfl_certify_alpha"], gt=0, lt=1,
        description="α: the certificate fails with probability at most α (Hoeffding bound on p_A, p_B)",
    )
    crfl_certify_sigma: float | None = Field(
        None, gt=0, description="σ_T: the smoothing noise std at test time; null = defense.crfl_sigma",
    )
    crfl_certify_radii: list[float] = Field(
        default_factory=lambda: list(CRFL_DEFAULTS["crfl_certify_radii"]), min_length=1,
        description="radii (backdoor pattern magnitude ‖δ‖, the theorem's unit) at which certified "
        "accuracy is reported as certified_acc_r<radius>",
    )
    crfl_certify_gamma: float = Field(
        CRFL_DEFAULTS["crfl_certify_gamma"], gt=0,
        description="threat model of the certificate: γ, the attackers' scale factor (authors' MNIST: 100)",
    )
    crfl_certify_poison_share: float = Field(
        CRFL_DEFAULTS["crfl_certify_poison_share"], gt=0, le=1,
        description="threat model: q_B/n_B, the poisoned share of an attacker's batch (authors' MNIST: 5/100)",
    )
    crfl_certify_local_iters: float = Field(
        CRFL_DEFAULTS["crfl_certify_local_iters"], gt=0,
        description="threat model: τ, an attacker's local SGD iterations per round (authors' MNIST: "
        "60000/20/100 = 30)",
    )
    crfl_certify_rho_adv: float = Field(
        CRFL_DEFAULTS["crfl_certify_rho_adv"], gt=0,
        description="threat model: ρ at the attack round in the Lipschitz constant L_z = √(2+2ρ+ρ²) "
        "(the authors' code fixes 3)",
    )

    @property
    def preaggregation_steps(self) -> tuple[str, ...]:
        """The pre-aggregation step names in the order they run (() when none)."""
        return tuple(self.preaggregation.split(PREAGGREGATION_SEPARATOR)) if self.preaggregation else ()


def update_noise_multiplier(z: float, count_noise: float) -> float:
    """z_Δ of adaptive clipping (Andrew et al. 2021, Thm 1): the noise multiplier of the
    update sum such that it and the count query (sensitivity ½, noise σ_b: multiplier 2σ_b)
    together are one Gaussian mechanism of multiplier z, z⁻² = z_Δ⁻² + (2σ_b)⁻²; 0 when
    z = 0. Raises ValueError when 2σ_b ≤ z (the count alone would spend the budget)."""
    if z == 0:
        return 0.0
    if not 2 * count_noise > z:
        raise ValueError(f"2σ_b = {2 * count_noise:g} must exceed the noise multiplier z = {z:g}")
    return (z ** -2 - (2 * count_noise) ** -2) ** -0.5


def configured_noise_multiplier(noise_sigma: float, norm_bound: float, clients_per_round: int,
                                placement: str) -> float:
    """z: the noise multiplier σ gives at bound M (σ/M on the sum, σ·C·K/M on the mean); under
    adaptive clipping M is the initial bound C₀, and z the total of update and count noise."""
    return noise_sigma / norm_bound * (clients_per_round if placement == "mean" else 1)


def check_adaptive_clipping(config: "SimulationConfig") -> None:
    """The cross-field rules of adaptive clipping (in `SimulationConfig`, not `DefenseConfig`:
    a grid checks each axis value on its own model first). Its other keys do nothing without
    `defense.clip_quantile`, so they must stay at their defaults (and out of the trial key);
    with it, C₀ = `defense.norm_bound` is required and σ_b must leave room for z."""
    d = config.defense
    if d.clip_quantile is None:
        for key, default in (("clip_lr", DEFAULT_CLIP_LR), ("clip_count_noise", None)):
            if getattr(d, key) != default:
                raise ConfigError(f"defense.{key}", getattr(d, key),
                                  f"{default} (its default) when defense.clip_quantile is null")
        return
    if d.norm_bound is None:
        raise ConfigError("defense.norm_bound", None, "a positive number, the initial bound C₀, "
                          "when defense.clip_quantile is set (adaptive clipping starts there)")
    adaptive_clip_noise(config)


def check_crfl(config: "SimulationConfig") -> None:
    """CRFL's other keys do nothing without `defense.crfl_sigma`, so they must stay at their
    defaults (and out of the trial key); the ρ_t cap must not be below its offset."""
    d = config.defense
    if d.crfl_sigma is None:
        for key, default in CRFL_DEFAULTS.items():
            if getattr(d, key) != (list(default) if isinstance(default, tuple) else default):
                raise ConfigError(f"defense.{key}", getattr(d, key),
                                  f"{default} (its default) when defense.crfl_sigma is null (CRFL off)")
        return
    if d.crfl_rho_max < d.crfl_rho_offset:
        raise ConfigError("defense.crfl_rho_max", d.crfl_rho_max,
                          f"a bound of at least defense.crfl_rho_offset = {d.crfl_rho_offset}")
    if any(r < 0 for r in d.crfl_certify_radii):
        raise ConfigError("defense.crfl_certify_radii", list(d.crfl_certify_radii), "radii ≥ 0")


def adaptive_clip_noise(config: "SimulationConfig") -> tuple[float, float]:
    """(σ_b, z_Δ) of adaptive clipping in `config` (TFF's `adaptive_clip_noise_params`, Flower's
    `compute_adaptive_noise_params`): σ_b = defense.clip_count_noise, null = C·K/20 with weak DP
    and 0 without; z_Δ from the configured z (`update_noise_multiplier`). Raises ConfigError
    when σ_b leaves no room for z."""
    d, m = config.defense, config.fl.clients_per_round
    count_noise = d.clip_count_noise
    if count_noise is None:
        count_noise = m / 20 if d.noise_sigma > 0 else 0.0
    z = configured_noise_multiplier(d.noise_sigma, d.norm_bound, m, d.noise_placement) if d.noise_sigma > 0 else 0.0
    try:
        return count_noise, update_noise_multiplier(z, count_noise)
    except ValueError:
        raise ConfigError(
            "defense.clip_count_noise", d.clip_count_noise,
            f"a number above z/2 = {z / 2:g} (null: C·K/20 = {m / 20:g}), where z = {z:g} is the noise "
            "multiplier of defense.noise_sigma at the initial bound defense.norm_bound; the count's "
            "noise shares that budget, z⁻² = z_Δ⁻² + (2σ_b)⁻² (or lower defense.noise_sigma)",
        ) from None


class SimulationConfig(_Frozen):
    seed: int = Field(0, ge=0, lt=2**63, description="the one seed every random stream derives from")
    data: DataConfig = Field(default_factory=DataConfig)
    fl: FLConfig = FLConfig()
    # factories: the plug-in hooks that validate these are installed after this module loads
    attack: AttackConfig = Field(default_factory=AttackConfig)
    defense: DefenseConfig = Field(default_factory=DefenseConfig)

    @model_validator(mode="after")
    def _cross_field(self) -> "SimulationConfig":
        a, d = self.attack, self.defense
        if a.kind != "none" and a.fraction is None:
            raise ConfigError("attack.fraction", None, "a number in (0, 1) when attack.kind != none")
        plugin_hooks().check_attack(self)
        if a.kind != "none" and a.schedule == "every-round" and round(a.fraction * self.fl.clients_per_round) < 1:
            raise ConfigError(
                "attack.fraction", a.fraction,
                f"at least {0.5 / self.fl.clients_per_round:.4g} with attack.schedule = every-round, so that "
                f"round(ε·C·K) ≥ 1 attacker in each round of fl.clients_per_round = {self.fl.clients_per_round}",
            )
        if d.noise_sigma > 0 and d.norm_bound is None:
            raise ConfigError(
                "defense.norm_bound", None,
                "a positive number M when defense.noise_sigma > 0 (weak DP clips first)",
            )
        if a.kind != "none" and a.num_tasks > a.max_tasks:
            raise ConfigError(
                "attack.num_tasks", a.num_tasks,
                f"at most attack.max_tasks = {a.max_tasks} (raise attack.max_tasks for larger N)",
            )
        if a.stop_round is not None and a.stop_round <= a.start_round:
            raise ConfigError(
                "attack.stop_round", a.stop_round, f"null or a round after attack.start_round = {a.start_round}"
            )
        if a.source_label == a.target_label:
            raise ConfigError(
                "attack.target_label", a.target_label, f"a label other than source_label={a.source_label}"
            )
        plugin_hooks().check_defense(self)
        check_adaptive_clipping(self)
        check_crfl(self)
        plugin_hooks().check_data(self)
        return self

    # -- derived quantities the engine uses ---------------------------------------------
    @property
    def defense_on(self) -> bool:
        return defense_on(self.defense.norm_bound, self.defense.noise_sigma)

    @property
    def uniform_weighting(self) -> bool:
        """Reference code: unweighted mean when clipping/DP is on, n_k-weighted otherwise."""
        return uniform_weighting(self.defense.weighting, self.defense.norm_bound, self.defense.noise_sigma)


def defense_on(norm_bound: float | None, noise_sigma: float) -> bool:
    """Clipping or noise is in force."""
    return norm_bound is not None or noise_sigma > 0


def uniform_weighting(weighting: str, norm_bound: float | None, noise_sigma: float) -> bool:
    """How `defense.weighting` resolves: `auto` is the unweighted mean when a defense is on
    (the reference code), n_k-weighted otherwise. Also used on flat configs read back by the
    report, which may come from other engine versions."""
    return weighting == "uniform" or (weighting == "auto" and defense_on(norm_bound, noise_sigma))


# What changes results and what only says how a run executes. THE list of execution-only keys:
# they change no bit of any result (how many workers, how often to checkpoint or evaluate, how
# the vectorized cohort is cut into chunks; tests/fl_core/test_determinism.py, test_chunking.py),
# so a checkpoint resumes, a warm-up is reused and a report cell pools across their values.
# `fl.backend`, `fl.device`, `fl.precision` and `fl.threads` are NOT here although they say how
# a run executes: they pick kernels, reduction orders or dropout streams, so they change float
# bits (CPU reductions split by thread; vectorized draws its own dropout masks; bf16 rounds),
# and a resume that mixed them would not be exact; the report pools backend and device only.
EXECUTION_ONLY_KEYS = ("fl.workers", "fl.checkpoint_every", "fl.eval_every", "fl.vectorized_chunk")

# A checkpoint may also be resumed with a longer horizon: `result_hash` leaves out these too.
RESUMABLE_KEYS = (*EXECUTION_ONLY_KEYS, "fl.rounds")

# Execution-only keys added after sweeps existed: left out of every hash, the trial key too
# (the older ones stay in the trial key, which identifies existing sweeps' trials).
NEVER_HASHED = ("fl.vectorized_chunk",)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


#: The attack settings that were top-level `attack` keys before the attacks owned them, with
#: the value every config had for them when an attack did not take one. The flat view keeps
#: them where they were (`attack.recipe`, never `attack.params.recipe`), so MLflow params, the
#: report's columns and every trial key stay what they were.
LEGACY_ATTACK_KEYS: Mapping[str, Any] = MappingProxyType(
    {"pgd_iterations": 5, "recipe": "reference", "poison_fraction": 0.3125}
)


def flatten(config: SimulationConfig) -> dict[str, Any]:
    """Dotted key → value (e.g. for MLflow params), in the canonical flat view: an attack's
    `params.<legacy key>` shows as `attack.<legacy key>`, which every attack has (its old
    default where the attack does not take it); see `LEGACY_ATTACK_KEYS`."""
    flat = _flatten(config.model_dump(mode="json"))
    for key, default in LEGACY_ATTACK_KEYS.items():
        kept = flat.pop(f"attack.{key}", None)
        own = flat.pop(f"attack.params.{key}", None)
        flat[f"attack.{key}"] = own if own is not None else kept if kept is not None else default
    return flat


# Keys added after sweeps already existed, with the default that means "as before": left out
# of `config_hash` while at that default, so every config that does not use them keeps its
# trial key, its warm-up key and its checkpoints' result hash. A new key goes here. (An empty
# `attack.params`, `defense.aggregator_params` or `defense.preaggregation_params` flattens to
# no key at all.)
HASH_NEUTRAL_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"attack.stop_round": None, "defense.aggregator": DEFAULT_AGGREGATOR, "attack.backdoor": "semantic",
     "defense.clip_quantile": None, "defense.clip_lr": DEFAULT_CLIP_LR, "defense.clip_count_noise": None,
     "defense.preaggregation": None, "attack.pool_rule": "legacy-eligible", "data.min_examples": 0, "defense.crfl_sigma": None,
     **{f"defense.{k}": list(v) if isinstance(v, tuple) else v for k, v in CRFL_DEFAULTS.items()}}
)

#: Keys that change no result without an attack: left out of `config_hash` when
#: `attack.kind` is none, so unattacked trials (baselines, warm-ups) keep their keys.
ATTACK_ONLY_KEYS = ("attack.pool_rule",)

#: Keys added after results existed whose default changed results (issue 25), with the value
#: that reproduces the engine before them: a config the tool WROTE without the key (a trial
#: spec, a run's config.yaml, logged params) was made by that engine and reads back with
#: this value, never with today's default (`parse_flat`, `read_back`).
READ_BACK_DEFAULTS: Mapping[str, Any] = MappingProxyType({"attack.pool_rule": "legacy-eligible"})


def config_hash(config: SimulationConfig, exclude: tuple[str, ...] = ()) -> str:
    """sha256 of the canonical sorted-key JSON of the resolved config, minus `exclude`, the
    `NEVER_HASHED` keys, the `HASH_NEUTRAL_DEFAULTS` keys that are at their neutral default and,
    without an attack, the `ATTACK_ONLY_KEYS`."""
    attacked = config.attack.kind != "none"
    flat = {
        k: v for k, v in flatten(config).items()
        if k not in exclude and k not in NEVER_HASHED and not (k in HASH_NEUTRAL_DEFAULTS and v == HASH_NEUTRAL_DEFAULTS[k])
        and (attacked or k not in ATTACK_ONLY_KEYS)
    }
    blob = json.dumps(flat, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def result_hash(config: SimulationConfig) -> str:
    """Hash of what determines results: guards checkpoints against a changed config."""
    return config_hash(config, RESUMABLE_KEYS)


#: Dotted prefixes of the plug-ins' own parameters: `attack.params.<p>` (the attack's model),
#: `attack.backdoor_params.<p>` (the backdoor task's) and `defense.aggregator_params.<p>` (the
#: aggregator's). A grid may vary them; each trial's config then checks the name against the
#: chosen plug-in (with a did-you-mean). A pre-aggregation step's are one level deeper, under
#: its name: `defense.preaggregation_params.<step>.<p>`.
PLUGIN_PARAM_PREFIXES = ("attack.params.", "attack.backdoor_params.", "defense.aggregator_params.")
PREAGGREGATION_PARAMS_PREFIX = "defense.preaggregation_params."


def is_plugin_param(key: str) -> bool:
    if key.startswith(PREAGGREGATION_PARAMS_PREFIX):
        return key.count(".") == 3
    return key.startswith(PLUGIN_PARAM_PREFIXES) and key.count(".") == 2


def all_keys(plugins: bool = False) -> list[str]:
    """Every valid dotted key; with `plugins`, every registered plug-in's parameters too
    (imports the plug-ins, and with the aggregators torch: grid validation does without,
    accepting any `is_plugin_param` key and leaving the name to the trial's check)."""
    keys = set(flatten(SimulationConfig()).keys())
    if plugins:
        keys |= set(plugin_hooks().keys())
    return sorted(keys)


def _field_info(path: str) -> str:
    model: type[BaseModel] = SimulationConfig
    parts = path.split(".")
    for p in parts[:-1]:
        f = model.model_fields.get(p)
        if f is None or not isinstance(f.annotation, type):
            return ""
        model = f.annotation  # type: ignore[assignment]
    f = model.model_fields.get(parts[-1])
    return f.description or "" if f else ""


def _allowed(err: Mapping[str, Any], path: str) -> str:
    ctx = err.get("ctx") or {}
    desc = _field_info(path)
    typ = err.get("type", "")
    if typ == "literal_error":
        allowed = ctx.get("expected", "")
    elif typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        allowed = err.get("msg", "")
    else:
        allowed = err.get("msg", "")
    return f"{allowed} ({desc})" if desc else str(allowed)


def parse_config(raw: Mapping[str, Any] | None, source: str | None = None) -> SimulationConfig:
    """Validate a (nested) mapping into a SimulationConfig, or raise one ConfigError.

    Args:
        raw: nested dict as read from YAML/JSON; missing keys take their defaults.
        source: the file it came from, named in the error message.
    """
    try:
        return SimulationConfig.model_validate(dict(raw or {}))
    except ConfigError as e:  # the same class (UnknownKeyError stays one), now naming the file
        raise type(e)(e.path, e.value, e.allowed, source) from None
    except ValidationError as e:
        err = e.errors()[0]
        path = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            keys = all_keys()
            near = difflib.get_close_matches(path, keys, n=1, cutoff=0.6)
            hint = f"did you mean `{near[0]}`? " if near else ""
            raise UnknownKeyError(path, err.get("input"), f"{hint}known keys: {', '.join(keys)}", source) from None
        inner = err.get("ctx", {}).get("error")
        if isinstance(inner, ConfigError):
            raise type(inner)(inner.path, inner.value, inner.allowed, source) from None
        raise ConfigError(path, err.get("input"), _allowed(err, path), source) from None


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set `a.b.c = value` in a nested dict (in place; returns it). Unknown keys are
    left for `parse_config` to reject with a did-you-mean."""
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value
    return raw


def parse_flat(flat: Mapping[str, Any], source: str | None = None) -> SimulationConfig:
    """A config from its dotted view (what `flatten` gives: MLflow params, a report's frame).
    That view spells the attack settings the old flat way on purpose (it is what trial keys
    hash), so it is the tool's own form, not a user's old-shape file: no deprecation note, and
    a key it lacks that changed results reads back as the engine that wrote it had it (`read_back`)."""
    nested: dict[str, Any] = {}
    for k, v in flat.items():
        set_dotted(nested, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecatedConfigWarning)
        return read_back(nested, source)


def read_back(raw: Mapping[str, Any] | None, source: str | None = None) -> SimulationConfig:
    """`parse_config` for a config this tool wrote and reads back (a trial spec, a run's
    config.yaml, a flat view of logged params): a `READ_BACK_DEFAULTS` key it lacks was absent
    from the engine that wrote it, so it takes the value that reproduces that engine (e.g. an
    attacked config of before issue 25 gets `attack.pool_rule: legacy-eligible` and keeps its
    trial key and checkpoints), not today's default. A config a user writes goes through
    `parse_config`, where a missing key means today's default."""
    nested: dict[str, Any] = dict(raw or {})
    for key, old in READ_BACK_DEFAULTS.items():
        section, _, name = key.partition(".")
        part = nested.get(section)
        if isinstance(part, Mapping) and name not in part:
            nested[section] = {**part, name: old}
    return parse_config(nested, source)
