"""MLflow layout of a sweep: one parent run per sweep, one nested child run per trial.

We do not use Ray's `MLflowLoggerCallback`/`setup_mlflow`: they create flat runs, keep
the trial → run map in driver memory and open a *new* run after a restart (the bug of
Lightning #6205 and ludwig #1990). Here the sweeper owns run identity:

- the parent run is created once on the driver; its id lives in the sweep manifest and
  in every trial's config;
- a trial's child run is found again by its tags (`mlflow.parentRunId` +
  `fl_sweep.trial_key`) or by the run id stored in its checkpoint, and re-opened;
- metrics are logged with `step = round`, all of one round in one `log_batch` call (one
  sqlite transaction, so a round is either fully logged or not at all), and a resumed
  trial logs only rounds after the last one already in the store: each step appears
  exactly once however often the trial is restarted.

sqlite under concurrent writers answers "database is locked"; every store call here is
retried with capped exponential backoff and jitter (see `_retry`). The layout is the one
in docs/DESIGN.md ("MLflow layout").

This is the one module that talks to MLflow (a test keeps every other sweeper module from
importing it): the tag names below, retries, paging, parent/child runs, artifacts and
reading a sweep back all go through `Tracker`. Commands that only read (report, export,
status) use `Tracker(uri, read_only=True)`, which bounds MLflow's own HTTP retries so a
server that is down is one line after seconds, not minutes.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from sweeper.errors import SweeperError, TrackingError

T = TypeVar("T")

# -- tag names: every tag the sweeper writes or filters on is named here, nowhere else
ROLE, SWEEP, TRIAL_KEY, STATUS = (
    "fl_sweep.role", "fl_sweep.sweep", "fl_sweep.trial_key", "fl_sweep.status"
)
TRIAL_INDEX = "fl_sweep.trial_index"      # the trial's index in the grid (trials.csv)
TORCH, DEVICE, NODE, GPU_IDS = "fl_sweep.torch", "fl_sweep.device", "fl_sweep.node", "fl_sweep.gpu_ids"
WORKER_NODES = "fl_sweep.worker_nodes"    # Ray nodes of a trial's client actors
ERROR = "fl_sweep.error"                  # a failed trial's exception, one line
DIVERGED_ROUND = "fl_sweep.diverged_round"
GRID_FILE, TRIALS, SWEEP_DIR = "fl_sweep.grid_file", "fl_sweep.trials", "fl_sweep.dir"  # parent's
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"              # the description MLflow shows (Markdown)
EXPERIMENT_KIND = "mlflow.experimentKind"  # which of its two UIs MLflow shows for an experiment
# a run's resolved config, as `fl-sweep simulate` writes it (sweeper.configio.dump_config)
CONFIG_ARTIFACT = "config.yaml"
STATUSES = ("running", "finished", "diverged", "failed")
# the metric that every evaluated round carries: its last step is "the last logged round"
PROGRESS_METRIC = "main_acc"

_TRANSIENT = ("database is locked", "database table is locked", "database is busy",
              "unable to open database file")
RETRY_SECONDS = 120.0
RETRIES = 0  # transient errors retried in this process (diagnostics and tests)


class ArtifactError(SweeperError):
    """An artifact read back from the store is not what the sweeper writes there."""


def _is_transient(e: BaseException) -> bool:
    text = str(e).lower()
    return any(t in text for t in _TRANSIENT)


def _retry(fn: Callable[..., T], *args: Any, deadline_s: float = RETRY_SECONDS, **kw: Any) -> T:
    """Call `fn`, retrying while sqlite reports a lock. A failed sqlite transaction is
    rolled back, so retrying a write never duplicates it."""
    t0 = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn(*args, **kw)
        except Exception as e:  # MlflowException wraps sqlalchemy's OperationalError
            if not _is_transient(e) or time.monotonic() - t0 > deadline_s:
                raise
            attempt += 1
            global RETRIES
            RETRIES += 1
            # full jitter: concurrent trials that collided do not retry in lockstep
            time.sleep(random.uniform(0, min(2.0, 0.02 * 2**attempt)))


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a sqlite file (the backup API, not a byte copy)."""
    with closing(sqlite3.connect(src, timeout=30)) as a, closing(sqlite3.connect(dst, timeout=30)) as b:
        a.backup(b)


def default_uri(sweep_dir: str | Path) -> str:
    """The sweep's own sqlite store, as an absolute URI: trial working directories are
    temporary, so a relative `sqlite:///mlflow.db` would land in each trial's directory."""
    return "sqlite:///" + str(Path(sweep_dir).resolve() / "mlflow.db")


def normalize_uri(uri: str) -> str:
    """A tracking URI every trial can use from its own working directory: relative sqlite
    paths (and bare `*.db` paths) become absolute; MLflow's ./mlruns file store (which
    raises since MLflow 3.13) is refused."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        return "sqlite:///" + str(path.expanduser().resolve())
    if "://" not in uri and uri.endswith(".db"):
        return "sqlite:///" + str(Path(uri).expanduser().resolve())
    if uri.startswith("file:") or "://" not in uri:
        raise TrackingError(uri, "file stores are not supported; give a sqlite file "
                            "(sqlite:////abs/path/mlflow.db) or a server (http://host:5000)")
    return uri


# query parameters that carry a secret; MLflow reads a bearer token from this variable
_SECRET_PARAMS = ("token", "access_token", "api_key", "apikey", "key", "password", "secret",
                  "sig", "signature")
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """(the URI without credentials, the MLflow environment variables that carry them).

    A URI is printed, written into sweep.json and into Ray Tune's experiment state; a
    password in it would leak to every reader of the sweep directory and of the logs. For
    http(s) servers `user:password@` and a `token=` query parameter become
    MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN (which MLflow reads); other secret-looking
    query parameters are dropped. Other schemes (databases) cannot take credentials from
    MLflow's variables: a password there is refused (use the database's own mechanism,
    e.g. PGPASSWORD or ~/.pgpass, or an MLflow server).
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(uri)
    env: dict[str, str] = {}
    if parts.scheme not in ("http", "https"):
        if parts.password:
            raise TrackingError(redact_uri(uri), "a password in the tracking URI would be stored "
                                "in sweep.json and printed; give it through the database's own "
                                "means (e.g. PGPASSWORD, ~/.pgpass) or use an MLflow server")
        return uri, env
    from urllib.parse import unquote

    if parts.username:
        env["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    if parts.password:
        env["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    query = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k.lower() in _SECRET_PARAMS:
            if k.lower() in ("token", "access_token"):
                env["MLFLOW_TRACKING_TOKEN"] = v
            continue
        query.append((k, v))
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment)), env


def take_credentials(uri: str) -> tuple[str, list[str]]:
    """`uri` without its credentials, which move into MLflow's variables of this process
    (inherited by a local cluster; variables already set win), and the names of those
    variables. What every command that takes `--tracking-uri` does first (`split_credentials`)."""
    bare, secrets = split_credentials(uri)
    for k, v in secrets.items():
        os.environ.setdefault(k, v)
    return bare, sorted(secrets)


def redact_uri(uri: str) -> str:
    """The URI as it may be printed: credentials and secret query parameters removed."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
        if parts.scheme in ("http", "https"):
            return split_credentials(uri)[0]
        if parts.password or parts.username:
            netloc = parts.netloc.rsplit("@", 1)[1]
            return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:  # unparsable (bad port...): print nothing of it that could be secret
        return "<unparsable URI>"
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def require_store(manifest: Mapping[str, Any], command: str) -> None:
    """Refuse a sweep whose sqlite store is missing: opening it (an `mlflow server`, a
    client) would create an empty one. `command` is who refuses, for the message.

    Raises:
        SweeperError: the store file named in the manifest does not exist.
    """
    db = sqlite_path(manifest["tracking_uri"])
    if db is not None and not db.is_file():
        raise SweeperError(
            f"sweep {manifest.get('name')}: its MLflow store {db} is missing (deleted or moved?); "
            f"{command} reads it and will not create an empty one. Restore the file, or start "
            "the sweep again with `fl-sweep run GRID --name NEW`"
        )


def _metric_items(metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    out = []
    for k, v in metrics.items():
        if v is None or isinstance(v, str):
            continue
        if isinstance(v, bool):
            v = float(v)
        try:
            out.append((k, float(v)))
        except (TypeError, ValueError):
            continue
    return out


def search_all(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    """Every run matching `filter_string`, page by page (MLflow returns at most 1,000 per
    call), each call retried like every store call here."""
    out: list[Any] = []
    token = None
    while True:
        page = _retry(client.search_runs, experiment_ids, filter_string=filter_string,
                      max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def tag_equals(key: str, value: str) -> str:
    """An MLflow filter clause selecting runs whose tag `key` is `value`, whatever `value`
    holds. MLflow's grammar has no escapes: a string constant is the text between its
    quotes, single or double (and in single quotes a backslash still ends it early). So
    `value` goes in double quotes when it has no `"`, in single quotes when it has neither
    `'` nor a backslash; otherwise the clause is a LIKE with `_` (any one character) in
    place of those, which matches a superset: callers keep only runs whose tag equals
    `value` exactly (`keep_tag_equal`)."""
    if '"' not in value:
        return f'tags.`{key}` = "{value}"'
    if "'" not in value and "\\" not in value:
        return f"tags.`{key}` = '{value}'"
    pattern = value.replace("'", "_").replace("\\", "_")
    return f"tags.`{key}` LIKE '{pattern}'"


def keep_tag_equal(runs: list, key: str, value: str) -> list:
    """The runs whose tag `key` is exactly `value` (after a `tag_equals` search)."""
    return [r for r in runs if r.data.tags.get(key) == value]


def trial_filter(sweep: str) -> str:
    """The filter of a sweep's trial runs (the dashboard's landing page, `sweeper.ui`)."""
    return f"{tag_equals(SWEEP, sweep)} and {tag_equals(ROLE, 'trial')}"


def store_error(e: BaseException) -> str | None:
    """MLflow's own message when `e` is an MLflow error (a server that does not answer, a
    store it cannot read), else None: callers turn it into their one line. MLflow is not
    imported for this: if it never was, `e` cannot be one of its errors."""
    import sys

    if "mlflow" not in sys.modules:
        return None
    from mlflow.exceptions import MlflowException

    return e.message if isinstance(e, MlflowException) else None


# MLflow's HTTP client retries a request 7 times with backoff (minutes) and waits 120 s per
# try: right for trials logging through a blip, wrong for a command that only reads and
# should say "server down" at once. A user's own setting of these variables wins.
READ_ONLY_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class Tracker:
    """A thin, retrying wrapper around `MlflowClient` with the sweep's run layout.

    `read_only`: for commands that only read (report, export, status): MLflow's HTTP
    retries and timeout are bounded (READ_ONLY_HTTP_ENV, set once for the process unless
    the user set them).
    """

    def __init__(self, uri: str, read_only: bool = False):
        self.uri = uri
        self._client = None
        if read_only:
            for k, v in READ_ONLY_HTTP_ENV.items():
                os.environ.setdefault(k, v)

    @property
    def client(self):
        """The MlflowClient, made on first use (it opens, and may create, the store)."""
        if self._client is None:
            from mlflow import MlflowClient  # lazily: `validate` never loads mlflow

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # -- store and experiment (driver) -----------------------------------------------
    def init_store(self, template_dir: Path | None = None) -> None:
        """Create the store's schema once, on the driver, before any trial starts:
        concurrent first-time creation from several trials races.

        Creating MLflow's sqlite schema runs its migrations (~8 s). With `template_dir`,
        a fresh store is copied from an empty one kept there per MLflow version, and the
        first creation leaves that template behind.
        """
        path = sqlite_path(self.uri)
        template = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if template_dir is not None and not path.exists():
                import mlflow

                template = Path(template_dir) / f".mlflow-schema-{mlflow.__version__}.db"
                if template.is_file():
                    _sqlite_copy(template, path)
        try:
            _retry(self.client.search_experiments, max_results=1)
        except Exception as e:
            raise TrackingError(self.uri, f"cannot open or create the store: {e}") from None
        if path is not None:
            if template is not None and not template.is_file():
                tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
                _sqlite_copy(path, tmp)
                os.replace(tmp, template)
            # WAL lets status/ui read while trials write; the mode persists in the file.
            with closing(sqlite3.connect(path, timeout=30)) as con:
                con.execute("PRAGMA journal_mode=WAL")

    def experiment(self, name: str, artifact_location: str | None = None) -> str:
        """Get or create the experiment; returns its id."""
        exp = _retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage != "active":
                raise TrackingError(
                    self.uri, f"experiment {name!r} is deleted; restore it in the MLflow UI "
                    "or set tracking.experiment to another name",
                )
            return exp.experiment_id
        try:
            return _retry(self.client.create_experiment, name, artifact_location=artifact_location)
        except Exception:
            exp = _retry(self.client.get_experiment_by_name, name)  # created concurrently
            if exp is None:
                raise
            return exp.experiment_id

    # -- runs ------------------------------------------------------------------------
    def start_parent(self, experiment_id: str, sweep: str, description: str = "",
                     tags: Mapping[str, str] | None = None) -> str:
        t = {ROLE: "parent", SWEEP: sweep, STATUS: "running"}
        if description:
            t[NOTE] = description
        t.update(tags or {})
        run = _retry(self.client.create_run, experiment_id, tags=t, run_name=sweep)
        return run.info.run_id

    def find_child(self, experiment_id: str, parent_run_id: str, trial_key: str) -> str | None:
        runs = _retry(
            self.client.search_runs, [experiment_id],
            filter_string=f"tags.`{PARENT}` = '{parent_run_id}' and tags.`{TRIAL_KEY}` = '{trial_key}'",
            max_results=10, order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def start_child(self, experiment_id: str, parent_run_id: str, sweep: str, trial_key: str,
                    run_name: str, params: Mapping[str, Any],
                    tags: Mapping[str, str] | None = None, pending: bool = False,
                    config: Any = None) -> str:
        """A new child run; `pending`: created ahead of its trial (by the driver), shown
        as SCHEDULED until the trial re-opens it. `config` (a SimulationConfig): logged as
        the run's config.yaml (`log_config`), which the report reads back typed."""
        from mlflow.entities import Param

        t = {PARENT: parent_run_id, ROLE: "trial", SWEEP: sweep, TRIAL_KEY: trial_key,
             STATUS: "pending" if pending else "running"}
        t.update(tags or {})
        run = _retry(self.client.create_run, experiment_id, tags=t, run_name=run_name)
        run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            _retry(self.client.log_batch, run_id, params=items[i:i + 100])
        if config is not None:
            self.log_config(run_id, config)
        if pending:
            _retry(self.client.update_run, run_id, status="SCHEDULED")
        return run_id

    def get_or_create_child(self, experiment_id: str, parent_run_id: str, sweep: str,
                            trial_key: str, run_name: str, params: Mapping[str, Any],
                            tags: Mapping[str, str] | None = None,
                            known_run_id: str | None = None, config: Any = None) -> str:
        """The trial's one child run: the checkpoint's run id if given, else the run
        tagged with this trial key under this parent, else a new run. Re-opened runs are
        set back to RUNNING."""
        run_id = known_run_id or self.find_child(experiment_id, parent_run_id, trial_key)
        if run_id is None:
            return self.start_child(experiment_id, parent_run_id, sweep, trial_key, run_name,
                                    params, tags, config=config)
        self.reopen(run_id)
        for k, v in (tags or {}).items():
            _retry(self.client.set_tag, run_id, k, v)
        if config is not None and not self._has_artifact(run_id, CONFIG_ARTIFACT):
            self.log_config(run_id, config)  # a run an older sweeper created has none
        return run_id

    def _has_artifact(self, run_id: str, name: str) -> bool:
        return any(a.path == name for a in _retry(self.client.list_artifacts, run_id))

    def reopen(self, run_id: str) -> None:
        _retry(self.client.update_run, run_id, status="RUNNING")
        _retry(self.client.set_tag, run_id, STATUS, "running")

    def finish(self, run_id: str, status: str) -> None:
        """Close a run; `status` is one of STATUSES (finished → FINISHED, else FAILED)."""
        if status not in STATUSES:
            raise ValueError(status)
        _retry(self.client.set_tag, run_id, STATUS, status)
        _retry(self.client.set_terminated, run_id, "FINISHED" if status == "finished" else "FAILED")

    # -- metrics and artifacts ---------------------------------------------------------
    def last_step(self, run_id: str, key: str = PROGRESS_METRIC) -> int:
        """The highest step logged for `key` (0 if none): rounds ≤ this are in the store."""
        hist = _retry(self.client.get_metric_history, run_id, key)
        return max((m.step for m in hist), default=0)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        """Log one round's numeric metrics (None values skipped) in one transaction."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, step) for k, v in _metric_items(metrics)]
        if items:
            _retry(self.client.log_batch, run_id, metrics=items)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        _retry(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        _retry(self.client.log_artifacts, run_id, str(local_dir), artifact_path)

    def log_config(self, run_id: str, config: Any) -> None:
        """The run's resolved config (a SimulationConfig) as its `config.yaml` artifact, in
        the form `fl-sweep simulate` writes (`dump_config`): the report reads it back with
        its types, instead of re-typing the flattened params from strings."""
        import tempfile

        from sweeper.configio import dump_config

        with tempfile.TemporaryDirectory(prefix="fl-sweep-cfg-") as d:
            path = Path(d) / CONFIG_ARTIFACT
            path.write_text(dump_config(config))
            self.log_artifact(run_id, path)

    def log_metric(self, run_id: str, key: str, value: float, step: int = 0) -> None:
        _retry(self.client.log_metric, run_id, key, float(value), step=step)

    def log_param_once(self, run_id: str, key: str, value: str) -> bool:
        """Log a param; False when it is already set to another value (MLflow params are
        immutable), True when logged or already equal."""
        from mlflow.exceptions import MlflowException

        try:
            _retry(self.client.log_param, run_id, key, value)
            return True
        except MlflowException as e:
            if e.error_code == "INVALID_PARAMETER_VALUE":
                return False
            raise

    def log_table(self, run_id: str, df: Any, artifact_file: str) -> None:
        """A pandas DataFrame as an MLflow table artifact (the artifact view renders it)."""
        _retry(self.client.log_table, run_id, df, artifact_file)

    def set_experiment_note(self, experiment_id: str, text: str) -> None:
        """The experiment's description (Markdown) in the MLflow UI."""
        self.set_experiment_tag(experiment_id, NOTE, text)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        _retry(self.client.set_experiment_tag, experiment_id, key, value)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            _retry(self.client.log_batch, run_id, tags=items)

    # -- reading (status, report, export, tests) ----------------------------------------
    def child_runs(self, experiment_id: str, parent_run_id: str) -> list[Any]:
        """Every child run of the parent (trials and warm-ups), all pages."""
        return keep_tag_equal(self.search_runs([experiment_id], tag_equals(PARENT, parent_run_id)),
                              PARENT, parent_run_id)

    def experiment_ids(self) -> list[str]:
        """The ids of every active experiment in the store, all pages."""
        out: list[str] = []
        token = None
        while True:
            page = _retry(self.client.search_experiments, max_results=1000, page_token=token)
            out.extend(e.experiment_id for e in page)
            token = page.token
            if not token:
                return out

    def search_runs(self, experiment_ids: list[str], filter_string: str) -> list[Any]:
        """Every run matching `filter_string` (all pages, each call retried)."""
        return search_all(self.client, experiment_ids, filter_string)

    def parent_runs(self, sweep: str | None = None) -> list[Any]:
        """Parent runs (tag ROLE = parent) in the whole store, optionally of one sweep name,
        newest first."""
        exp_ids = self.experiment_ids()
        if not exp_ids:
            return []
        filt = tag_equals(ROLE, "parent")
        if sweep is not None:
            filt += " and " + tag_equals(SWEEP, sweep)
        runs = self.search_runs(exp_ids, filt)
        if sweep is not None:
            runs = keep_tag_equal(runs, SWEEP, sweep)
        return sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged point of one metric."""
        return [(int(m.step), m.value) for m in _retry(self.client.get_metric_history, run_id, key)]

    def read_artifact(self, run_id: str, name: str, max_bytes: int) -> bytes | None:
        """The bytes of a run's top-level artifact `name` (None: the run has none).

        Raises:
            ArtifactError: it is larger than `max_bytes` (the store is untrusted input).
        """
        import tempfile

        listed = {a.path: a for a in _retry(self.client.list_artifacts, run_id)}
        art = listed.get(name)
        if art is None or art.is_dir:
            return None
        too_big = ArtifactError(f"MLflow store {redact_uri(self.uri)} run {run_id}: its artifact "
                                f"{name} is larger than {max_bytes} bytes; not read")
        if art.file_size is not None and art.file_size > max_bytes:
            raise too_big  # not even downloaded
        with tempfile.TemporaryDirectory(prefix="fl-sweep-art-") as d:
            local = _retry(self.client.download_artifacts, run_id, name, d)
            with open(local, "rb") as f:
                data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_big
        return data

    def get_run(self, run_id: str) -> Any:
        return _retry(self.client.get_run, run_id)

    def metric_steps(self, run_id: str, key: str) -> list[int]:
        return sorted(m.step for m in _retry(self.client.get_metric_history, run_id, key))
