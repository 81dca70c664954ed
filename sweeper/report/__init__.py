"""`fl-sweep report`: paper-style figures, a summary page, the paper's claims as explicit
checks and the (ε, δ) that the "weak DP" defense really gives.

Reproduces the presentation of Sun et al. 2019 ("Can You Really Backdoor Federated
Learning?", figures 1–6): per round, main-task accuracy (dotted) and backdoor accuracy
(solid) with the cumulative mean of the backdoor accuracy, here as the mean over seeds
with a min–max band, one panel per grid cell.

Modules, in the order the report uses them:
- `load`: a sweep's runs (MLflow, by sweep name or storage directory; or plain
  `fl-sweep simulate` output directories) → `SweepData` (pandas frames).
- `figures`: matplotlib (Agg) panels and overlays.
- `claims`: the paper's six claims as PASS / FAIL / N.A. checks with their numbers.
- `privacy`: (ε, δ) of the noise in force, from `dp-accounting` (RDP and PLD).
- `page`: the Markdown/HTML page, and logging everything to the sweep's parent run.
"""

from sweeper.report.load import SweepData, load_sweeps

__all__ = ["SweepData", "load_sweeps"]
