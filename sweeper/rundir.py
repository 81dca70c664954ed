"""The files of one run directory: what `fl-sweep simulate --out` writes, what `fl-sweep
export` writes per trial and what `fl-sweep report` reads. Torch-free, so that the report
and the export can name them without importing the simulation."""

STATE, METRICS, CONFIG, STATUS = "state.pt", "metrics.jsonl", "config.yaml", "status.json"
