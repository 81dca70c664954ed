"""Grid files: expansion, trial keys, and the table of bad files (each: its own clear
error naming the file, the key and what is allowed; exit 2; nothing launched or written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fl_core.config import config_hash
from sweeper.errors import GridError
from sweeper.grid import bundles, load_grid, trial_rows

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
name: tiny
description: a test grid
base:
  data: {source: synthetic, num_writers: 12}
  fl: {rounds: 2, clients_per_round: 4}
  attack: {kind: model-replacement, num_tasks: 3}
grid:
  attack.fraction: [0.1, 0.2]
  defense.norm_bound: [3, 5, 10]
seeds: 2
resources: {workers: 2, cpus_per_worker: 0.5}
max_concurrent_trials: 2
"""


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_expansion_is_the_cartesian_product_in_declared_order(tmp_path):
    g = load_grid(write(tmp_path, GOOD))
    assert g.varied_keys == ("attack.fraction", "defense.norm_bound", "seed")
    assert len(g.trials) == 2 * 3 * 2
    got = [tuple(t.overrides.values()) for t in g.trials]
    want = [(f, m, s) for f in (0.1, 0.2) for m in (3, 5, 10) for s in (0, 1)]
    assert got == want
    t = g.trials[7]  # (0.2, 3, 1)
    assert (t.config.attack.fraction, t.config.defense.norm_bound, t.config.seed) == (0.2, 3, 1)
    assert t.config.fl.workers == 2  # resources.workers sets fl.workers
    assert t.trial_key == config_hash(t.config)
    assert len({t.trial_key for t in g.trials}) == 12


def test_reordering_yaml_keys_changes_no_trial_key(tmp_path):
    a = load_grid(write(tmp_path, GOOD, "a.yaml"))
    reordered = """\
    seeds: [0, 1]
    grid:
      defense.norm_bound: [3, 5, 10]
      attack.fraction: [0.1, 0.2]
    resources: {cpus_per_worker: 0.5, workers: 2}
    max_concurrent_trials: 2
    base:
      attack: {num_tasks: 3, kind: model-replacement}
      fl: {clients_per_round: 4, rounds: 2}
      data: {num_writers: 12, source: synthetic}
    name: tiny
    """
    b = load_grid(write(tmp_path, reordered, "b.yaml"))
    assert {t.trial_key for t in a.trials} == {t.trial_key for t in b.trials}
    # declared order is respected: norm_bound now varies slowest
    assert [t.overrides["defense.norm_bound"] for t in b.trials[:4]] == [3, 3, 3, 3]


def test_seed_list_resources_and_trial_rows(tmp_path):
    g = load_grid(write(tmp_path, GOOD.replace("seeds: 2", "seeds: [7, 3]")))
    assert [t.config.seed for t in g.trials[:2]] == [7, 3]
    b = bundles(g.trials[0].config, g.spec.resources)
    assert b == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]
    gpu = g.spec.resources.model_copy(update={"gpus_per_trial": 0.3})
    gb = bundles(g.trials[0].config, gpu)
    assert 0.299 <= sum(x["GPU"] for x in gb) <= 0.3  # shares rounded down to 1e-4
    assert all("GPU" not in x for x in bundles(g.trials[0].config, gpu, gpus_available=False))
    rows = trial_rows(g)
    assert rows[0]["cpus"] == 2.0 and rows[0]["workers"] == 2 and rows[-1]["index"] == 11


def test_in_process_executor_reserves_one_bundle(tmp_path):
    g = load_grid(write(tmp_path, GOOD.replace("resources: {workers: 2, cpus_per_worker: 0.5}",
                                                "resources: {executor: in-process, cpus_per_trial: 2}")))
    assert bundles(g.trials[0].config, g.spec.resources) == [{"CPU": 2.0}]


# -- the table of bad grid files -----------------------------------------------------------

BASE_OK = "base: {data: {source: synthetic, num_writers: 12}, fl: {clients_per_round: 4}, attack: {num_tasks: 3}}"

BAD = {
    # id: (yaml text, key named in the error, phrase of the explanation)
    "unknown-top-level-key": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [1]}}\nworkers: 3\n",
        "`workers`", "allowed keys here: name, description, base, grid"),
    "typo-top-level": (
        f"name: x\n{BASE_OK}\ngird: {{fl.rounds: [1]}}\n",
        "`gird`", "did you mean `grid`?"),
    "typo-grid-key": (
        f"name: x\n{BASE_OK}\ngrid: {{attack.fractoin: [0.1]}}\n",
        "`grid.attack.fractoin`", "did you mean `attack.fraction`?"),
    "typo-base-key": (
        "name: x\nbase: {fl: {roundz: 3}}\ngrid: {fl.rounds: [1]}\n",
        "`base.fl.roundz`", "did you mean `fl.rounds`?"),
    "typo-resources-key": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [1]}}\nresources: {{cpus_per_trail: 2}}\n",
        "`resources.cpus_per_trail`", "did you mean `resources.cpus_per_trial`?"),
    "wrong-type": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [ten]}}\n",
        "`grid.fl.rounds`", "valid integer"),
    "wrong-type-top-level": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [1]}}\nmax_concurrent_trials: lots\n",
        "`max_concurrent_trials`", "valid integer"),
    "scalar-instead-of-list": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: 3}}\n",
        "`grid.fl.rounds`", "valid list"),
    "epsilon-above-1": (
        f"name: x\n{BASE_OK}\ngrid: {{attack.fraction: [0.1, 1.5]}}\n",
        "`grid.attack.fraction`", "less than 1"),
    "epsilon-zero": (
        f"name: x\n{BASE_OK}\ngrid: {{attack.fraction: [0]}}\n",
        "`grid.attack.fraction`", "greater than 0"),
    "negative-sigma": (
        f"name: x\n{BASE_OK}\ngrid: {{defense.noise_sigma: [0.01, -0.5]}}\n",
        "`grid.defense.noise_sigma`", "greater than or equal to 0"),
    "M-zero": (
        f"name: x\n{BASE_OK}\ngrid: {{defense.norm_bound: [0]}}\n",
        "`grid.defense.norm_bound`", "greater than 0"),
    "M-negative-in-base": (
        "name: x\nbase: {defense: {norm_bound: -3}}\ngrid: {fl.rounds: [1]}\n",
        "`base.defense.norm_bound`", "greater than 0"),
    "more-tasks-than-writers": (
        "name: x\nbase: {data: {source: synthetic, num_writers: 12}, fl: {clients_per_round: 4}}\n"
        "grid: {attack.num_tasks: [5, 20]}\n",
        "`grid.attack.num_tasks`", "K = 12 writers"),
    "more-tasks-than-max-writers": (
        "name: x\nbase: {data: {source: synthetic, max_writers: 6}, fl: {clients_per_round: 4},"
        " attack: {num_tasks: 8}}\ngrid: {seed: [0, 1]}\n",
        "`base.attack.num_tasks`", "K = 6 writers"),
    "seeds-wrong-type": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [1]}}\nseeds: abc\n",
        "`seeds`", "list of integer seeds"),
    "seeds-zero-count": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [1]}}\nseeds: 0\n",
        "`seeds`", "count ≥ 1"),
    "more-tasks-than-embedded-writers": (
        "name: x\nbase: {data: {source: embedded, max_writers: 5}, fl: {clients_per_round: 2}}\n"
        "grid: {attack.num_tasks: [6]}\n",
        "`grid.attack.num_tasks`", "K = 5 writers (data.source = embedded, data.max_writers = 5)"),
    "epsilon-too-small-for-K": (
        f"name: x\n{BASE_OK}\ngrid: {{attack.kind: [model-replacement], attack.fraction: [0.2, 0.01]}}\n",
        "`grid.attack.fraction`", "ε·K ≥ 1 attacker with K = 12 writers"),
    "empty-grid": (
        f"name: x\n{BASE_OK}\ngrid: {{}}\n",
        "`grid`", "the grid is empty"),
    "empty-axis": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: []}}\n",
        "`grid.fl.rounds`", "empty list"),
    "cross-field-rule": (
        f"name: x\n{BASE_OK}\ngrid: {{attack.kind: [pgd]}}\n",
        "`base.attack.fraction`", "a number in (0, 1)"),
    "duplicate-yaml-key": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [1]}}\ngrid: {{fl.rounds: [2]}}\n",
        "`(yaml)`", "duplicate key 'grid'"),
    "unreadable-yaml": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [1, 2}}\n",
        "`(yaml)`", "not valid YAML at line 3"),
    "unsafe-yaml-tag": (
        "name: !!python/object/apply:os.system ['touch PWNED']\ngrid: {fl.rounds: [1]}\n",
        "`(yaml)`", "python/object/apply:os.system"),
    "not-a-mapping": (
        "- just\n- a list\n", "`(top level)`", "expected a mapping"),
    "bad-name": (
        f"name: ../escape\n{BASE_OK}\ngrid: {{fl.rounds: [1]}}\n",
        "`name`", "invalid sweep name '../escape'; allowed: 1 to 80 characters out of letters, digits"),
    "data-path-missing": (
        "name: x\nbase: {data: {source: tff-h5, path: /nonexistent/fl-sweep-data}}\nseeds: 1\n",
        "`base.data.path`", "dataset at /nonexistent/fl-sweep-data: directory does not exist; run `fl-sweep data download`"),
    "data-path-missing-on-an-axis": (
        "name: x\nbase: {data: {source: leaf}}\ngrid: {data.path: [/nonexistent/leaf]}\n",
        "`grid.data.path`", "dataset at /nonexistent/leaf: no train/*.json"),
    "name-with-newline": (
        f"name: \"a\\n\"\n{BASE_OK}\ngrid: {{fl.rounds: [1]}}\n",
        "`name`", "invalid sweep name 'a\\n'; allowed: 1 to 80 characters"),
    "name-too-long": (
        f"name: {'a' * 81}\n{BASE_OK}\ngrid: {{fl.rounds: [1]}}\n",
        "`name`", "invalid sweep name"),
    "duplicate-trials": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [2, 2]}}\n",
        "`grid`", "have the same config"),
    "threads-exceed-cpus": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.threads: [1, 2]}}\nresources: {{cpus_per_worker: 1}}\n",
        "`resources.cpus_per_trial`", "1 CPUs for fl.threads = 2 torch threads"),
    "cuda-without-gpu-share": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.device: [cuda]}}\n",
        "`resources.gpus_per_trial`", "needs a GPU share"),
    # strict types: YAML's true is not 1, a quoted "1" is not a number
    "rounds-true": (
        "name: x\nbase: {fl: {rounds: true}}\nseeds: 1\n",
        "`base.fl.rounds`", "invalid value True; allowed: Input should be a valid integer"),
    "warmup-rounds-true": (
        "name: x\nbase: {fl: {rounds: 4}}\nseeds: 1\nwarmup: {rounds: true}\n",
        "`warmup.rounds`", "valid integer"),
    "seeds-true": (
        f"name: x\n{BASE_OK}\nseeds: true\n",
        "`seeds`", "invalid value True: expected a list of integer seeds"),
    "seed-axis-true": (
        f"name: x\n{BASE_OK}\ngrid: {{seed: [0, true]}}\n",
        "`grid.seed`", "Input should be a valid integer"),
    "rounds-axis-true": (
        f"name: x\n{BASE_OK}\ngrid: {{fl.rounds: [2, true]}}\n",
        "`grid.fl.rounds`", "invalid value True: Input should be a valid integer"),
    "krum-f-true": (
        "name: x\nbase: {defense: {aggregator: krum, aggregator_params: {f: true}}}\nseeds: 1\n",
        "`base.defense.aggregator_params.f`", "invalid value True; allowed: Input should be a valid integer"),
    "krum-f-string": (
        "name: x\nbase: {defense: {aggregator: krum, aggregator_params: {f: '1'}}}\nseeds: 1\n",
        "`base.defense.aggregator_params.f`", "invalid value '1'; allowed: Input should be a valid integer"),
    "trimmed-mean-beta-string": (
        "name: x\nbase: {defense: {aggregator: trimmed-mean}}\ngrid: {defense.aggregator_params.beta: ['0.2']}\n",
        "`grid.defense.aggregator_params.beta`", "Input should be a valid number"),
    "workers-true": (
        f"name: x\n{BASE_OK}\nseeds: 1\nresources: {{workers: true}}\n",
        "`resources.workers`", "Input should be a valid integer"),
    # .inf in a plug-in's parameters is a bad value, not an unknown key
    "inf-in-attack-params": (
        "name: x\nbase: {attack: {kind: neurotoxin, fraction: 0.1, params: {top_k: .inf}}}\nseeds: 1\n",
        "`base.attack.params.top_k`", "invalid value inf; allowed: Input should be a finite number"),
    "misspelt-attack-param": (
        "name: x\nbase: {attack: {kind: neurotoxin, fraction: 0.1, params: {top_kk: 0.1}}}\nseeds: 1\n",
        "`base.attack.params.top_kk`", "unknown key; did you mean `top_k`?"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_grid_raises_grid_error_naming_file_and_key(tmp_path, case):
    text, key, phrase = BAD[case]
    p = write(tmp_path, text)
    with pytest.raises(GridError) as ei:
        load_grid(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: {key}:"), msg
    assert phrase in msg, msg
    assert sorted(os.listdir(tmp_path)) == ["grid.yaml"]  # nothing written (no PWNED either)


def test_missing_file(tmp_path):
    with pytest.raises(GridError, match="no such file"):
        load_grid(tmp_path / "nope.yaml")


def test_cli_bad_grids_exit_2_launch_and_write_nothing(tmp_path):
    """Through the real CLI, in one fresh interpreter: for every bad file, `validate` and
    `run` exit 2 with one line on stderr; afterwards neither Ray nor MLflow was imported
    and the storage root does not exist."""
    files = {}
    for case, (text, _, _) in BAD.items():
        files[case] = str(write(tmp_path, text, f"{case}.yaml"))
    storage = tmp_path / "sweeps"
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from sweeper.cli import main
        files = json.loads({json.dumps(json.dumps(files))})
        out = {{}}
        for case, path in files.items():
            for argv in (["validate", path], ["run", path, "--storage", {str(storage)!r}],
                         ["run", path, "--dry-run"]):
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = main(argv)
                out.setdefault(case, []).append([rc, err.getvalue()])
        out["_modules"] = [m for m in ("ray", "mlflow") if m in sys.modules]
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("_modules") == []
    for case, runs in out.items():
        _, key, phrase = BAD[case]
        for rc, err in runs:
            assert rc == 2, (case, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"fl-sweep: error: {files[case]}: {key}:"), (case, err)
            assert phrase in err, (case, err)
    assert not storage.exists()
    assert not (tmp_path / "PWNED").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{c}.yaml" for c in BAD)


def test_cli_validate_and_dry_run_print_the_trial_table(tmp_path):
    p = write(tmp_path, GOOD)
    script = textwrap.dedent(f"""
        import sys
        from sweeper.cli import main
        rc1 = main(["validate", {str(p)!r}])
        rc2 = main(["run", {str(p)!r}, "--dry-run", "--storage", {str(tmp_path / 'sweeps')!r}])
        print("RC", rc1, rc2, "ray" in sys.modules, "mlflow" in sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "RC 0 0 False False" in out
    assert "12 trials" in out and "dry run: 12 trials, nothing launched" in out
    assert "attack.fraction" in out and "defense.norm_bound" in out
    assert "1 CPU (trial) + 2 worker(s) × 0.5 CPU = 2 CPU" in out
    g = load_grid(p)
    assert all(t.short_key in out for t in g.trials)
    assert not (tmp_path / "sweeps").exists()


TFF_DIGITS_WRITERS = 3383  # writers of TFF's fed_emnist_digitsonly pair (the paper's K)


def write_tff_pair(directory: Path, writers: int, pixel_value: float = 1.0, per_writer: int = 2) -> Path:
    """A TFF-layout h5 pair (examples/<writer>/{label, pixels}): each writer owns a 7 and
    other digits, float32 pixels all `pixel_value` (2.0 is out of range: reading the pixels
    raises a DatasetError, so a check that passes has not read them)."""
    import h5py
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with h5py.File(directory / f"fed_emnist_digitsonly_{split}.h5", "w") as f:
            ex = f.create_group("examples")
            for k in range(writers):
                g = ex.create_group(f"f{k:04d}")
                g.create_dataset("label", data=np.asarray([7, 1, 3, 5][:per_writer], np.int32))
                g.create_dataset("pixels", data=np.full((per_writer, 28, 28), pixel_value, np.float32))
    return directory


@pytest.fixture(scope="module")
def download_dir(tmp_path_factory):
    """A directory where `data/fed_emnist_digitsonly` (the paper grids' relative data.path,
    where `fl-sweep data download --dest data` unpacks) holds a stand-in pair with the real
    pair's number of writers: the grids are checked against their data's metadata."""
    root = tmp_path_factory.mktemp("launch")
    write_tff_pair(root / "data" / "fed_emnist_digitsonly", TFF_DIGITS_WRITERS, per_writer=1)
    return root


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "grids").rglob("*.yaml")))
def test_shipped_grids_are_valid(path, download_dir, monkeypatch):
    monkeypatch.chdir(download_dir)  # relative data paths resolve where the sweep is launched
    g = load_grid(REPO / path)
    assert g.trials and len({t.trial_key for t in g.trials}) == len(g.trials)


DOC_CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("config.yaml"))


def test_committed_run_configs_still_parse_to_their_trial_keys():
    """Every config.yaml committed under docs/ (exported runs the reports are built from)
    parses under today's schema (strict types included) and still hashes to the trial key
    its status.json records: no committed result silently changes cell or replicate."""
    from fl_core.config import read_back
    from sweeper.yamlio import read_yaml

    assert len(DOC_CONFIGS) > 100
    for rel in DOC_CONFIGS:
        raw, _ = read_yaml(REPO / rel)
        cfg = read_back(raw, source=rel)  # written by the tool: a key it lacks is its engine's
        status = json.loads((REPO / rel).with_name("status.json").read_text())
        assert config_hash(cfg) == status["trial_key"], rel


# -- the data source, from its metadata ------------------------------------------------------

DATA_GRID = """\
name: {name}
base:
  data: {{source: tff-h5, path: {path}}}
  fl: {{rounds: 2, clients_per_round: {cohort}}}
  attack: {{kind: model-replacement, fraction: 0.4, num_tasks: 1, max_tasks: 1}}
seeds: 1
"""


def test_validate_and_run_check_the_data_from_metadata_without_torch(tmp_path):
    """`validate` used to say ok for a data.path that does not exist, and `run` then started
    Ray. Now both check the source and the fit (K = 5 writers here) from the h5 layout and
    labels: the pixels are out of range (reading them would fail), yet the fitting grid is
    ok, so they were not read; torch, Ray and MLflow are never imported."""
    data = write_tff_pair(tmp_path / "digits", 5, pixel_value=2.0)
    grids = {
        "fits": DATA_GRID.format(name="fits", path=data, cohort=5),
        "cohort": DATA_GRID.format(name="cohort", path=data, cohort=6),
        "missing": DATA_GRID.format(name="missing", path=tmp_path / "gone", cohort=2),
    }
    files = {k: str(write(tmp_path, v, f"{k}.yaml")) for k, v in grids.items()}
    storage = tmp_path / "sweeps"
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from sweeper.cli import main
        files = json.loads({json.dumps(json.dumps(files))})
        out = {{}}
        for case, path in files.items():
            for argv in (["validate", path], ["run", path, "--storage", {str(storage)!r}]):
                if case == "fits" and argv[0] == "run":
                    continue  # it would launch
                so, se = io.StringIO(), io.StringIO()
                with contextlib.redirect_stderr(se), contextlib.redirect_stdout(so):
                    rc = main(argv)
                out[f"{{case}} {{argv[0]}}"] = [rc, so.getvalue(), se.getvalue()]
        out["_modules"] = [m for m in ("torch", "ray", "mlflow") if m in sys.modules]
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("_modules") == []
    rc, so, se = out.pop("fits validate")
    assert rc == 0 and "ok: 1 trials" in so, se
    for cmd in ("validate", "run"):
        rc, _, se = out[f"cohort {cmd}"]
        assert rc == 2 and se.count("\n") == 1, se
        assert (f"{files['cohort']}: `base.fl.clients_per_round`: 6 clients per round drawn without "
                "replacement from K = 5 writers (data.source = tff-h5)") in se
        rc, _, se = out[f"missing {cmd}"]
        assert rc == 2 and se.count("\n") == 1, se
        assert f"{files['missing']}: `base.data.path`: dataset at {tmp_path / 'gone'}: directory does not exist" in se
    assert not storage.exists()


@pytest.mark.parametrize("data", [
    {"source": "embedded"}, {"source": "embedded", "max_writers": 7},
    {"source": "synthetic", "num_writers": 30, "examples_per_writer": 20},
    {"source": "synthetic", "num_writers": 30, "examples_per_writer": 20, "max_writers": 9},
], ids=["embedded", "embedded-max", "synthetic", "synthetic-max"])
def test_describe_data_says_what_load_data_returns(data, tmp_path):
    """The metadata answer the grid checks against equals the loaded data: writers, image
    counts and every label in the same order (so the population checks agree)."""
    import numpy as np

    from fl_core.config import DataConfig
    from fl_core.data import describe_data, load_data

    from fl_core.data import DESCRIBERS, SOURCES

    assert set(DESCRIBERS) == set(SOURCES)  # every source answers from its metadata
    cfg = DataConfig(**data)
    s, d = describe_data(cfg, 3), load_data(cfg, 3)
    assert (s.num_writers, s.num_train, s.num_test, s.lazy) == (d.num_writers, len(d.train_labels),
                                                                len(d.test_labels), False)
    assert s.labels.writer_ids == d.writer_ids
    for a in ("train_labels", "train_offsets", "test_labels", "test_offsets"):
        assert np.array_equal(getattr(s.labels, a), getattr(d, a)), a


def test_describe_data_of_an_h5_pair_reads_no_pixels(tmp_path):
    from fl_core.config import DataConfig
    from fl_core.data import describe_data, load_data
    from fl_core.errors import DatasetError

    cfg = DataConfig(source="tff-h5", path=str(write_tff_pair(tmp_path / "d", 4, pixel_value=2.0, per_writer=3)))
    s = describe_data(cfg)
    assert (s.num_writers, s.num_train, s.num_test) == (4, 12, 12)
    assert s.labels.train_labels.tolist() == [7, 1, 3] * 4
    with pytest.raises(DatasetError, match="pixel values outside"):
        load_data(cfg, 0)  # the pixels themselves are checked when a trial loads them


def test_smoke_grid_is_small():
    g = load_grid(REPO / "grids" / "smoke.yaml")
    assert len(g.trials) == 4
    # a few minutes on 2 cores: ≤ 30 rounds of ≤ 10 clients × ≤ 2 epochs, the first 20 of
    # them one shared warm-up
    assert all(t.config.fl.rounds <= 30 and t.config.fl.clients_per_round <= 10
               and t.config.fl.local_epochs <= 2 and t.config.data.source == "embedded" for t in g.trials)
    assert len(g.warmups) == 1 and g.spec.warmup.rounds == 20


def test_readme_grid_example_is_valid(tmp_path):
    """The grid file a user copies from the README must load as written."""
    import re

    text = (REPO / "README.md").read_text()
    block = re.search(r"## A grid file\n\n```yaml\n(.*?)```", text, re.S)
    assert block, "README lost its grid-file example"
    g = load_grid(write(tmp_path, block.group(1)))
    assert len(g.trials) == 3 * 2 * 3
    assert {t.config.defense.norm_bound for t in g.trials} == {3.0, 5.0, 10.0}


def test_readme_plugin_params_example_is_valid(tmp_path):
    """The README's `plugin_params` snippet, under a base of its own, loads, and each
    plug-in's settings reach only its trials."""
    import re

    import yaml

    text = (REPO / "README.md").read_text()
    block = re.search(r"own settings in `plugin_params`.*?```yaml\n(.*?)```", text, re.S)
    assert block, "README lost its plugin_params example"
    grid = {"name": "readme-plugins", "seeds": 1,
            "base": {"data": {"source": "embedded"}, "fl": {"rounds": 2},
                     "attack": {"fraction": 0.033, "backdoor": "trigger"}, "defense": {"norm_bound": 3.0}},
            **yaml.safe_load(block.group(1))}
    g = load_grid(write(tmp_path, yaml.safe_dump(grid, sort_keys=False)))
    assert len(g.trials) == 3 * 2
    for t in g.trials:
        assert (t.config.attack.params.get("trigger_epochs") == 10) == (t.config.attack.kind == "a3fl")
        agg, params = t.config.defense.aggregator, t.config.defense.aggregator_params
        assert params.get("start_round") == (30 if agg == "fldetector" else None)
        assert params.get("num_samples") == (200 if agg == "deepsight" else None)
