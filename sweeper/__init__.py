"""sweeper: YAML grids → Ray Tune trials → MLflow, around the fl_core engine."""
