"""fl_core: a pure-PyTorch federated simulation of backdoor attacks and defenses.

Reproduces Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated
Learning?" (2019): FedAvg over EMNIST writers, boosted model replacement
(Bagdasaryan et al. 2018; Bhagoji et al. 2019), norm-bounded PGD, norm clipping and
weak DP. Depends on torch, numpy, h5py and pydantic only: never on ray, mlflow,
yaml or sweeper, so it runs on a bare GPU machine.
"""

__version__ = "0.1.0"

# The plug-in families install their part of config validation into the schema
# (fl_core.config imports no plug-in; fl_core.plugin_config imports both).
from fl_core import plugin_config as _plugin_config  # noqa: E402,F401
