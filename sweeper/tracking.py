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

ROLE, SWEEP, TRIAL_KEY, STATUS = (
    "fl_sweep.role", "fl_sweep.sweep", "fl_sweep.trial_key", "fl_sweep.status"
)
PARENT = "mlflow.parentRunId"
STATUSES = ("running", "finished", "diverged", "failed")
# the metric that every evaluated round carries: its last step is "the last logged round"
PROGRESS_METRIC = "main_acc"

_TRANSIENT = ("database is locked", "database table is locked", "database is busy",
              "unable to open database file")
RETRY_SECONDS = 120.0
RETRIES = 0  # transient errors retried in this process (diagnostics and tests)


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


class Tracker:
    """A thin, retrying wrapper around `MlflowClient` with the sweep's run layout."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None

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
            t["mlflow.note.content"] = description
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
                    tags: Mapping[str, str] | None = None, pending: bool = False) -> str:
        """A new child run; `pending`: created ahead of its trial (by the driver), shown
        as SCHEDULED until the trial re-opens it."""
        from mlflow.entities import Param

        t = {PARENT: parent_run_id, ROLE: "trial", SWEEP: sweep, TRIAL_KEY: trial_key,
             STATUS: "pending" if pending else "running"}
        t.update(tags or {})
        run = _retry(self.client.create_run, experiment_id, tags=t, run_name=run_name)
        run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            _retry(self.client.log_batch, run_id, params=items[i:i + 100])
        if pending:
            _retry(self.client.update_run, run_id, status="SCHEDULED")
        return run_id

    def get_or_create_child(self, experiment_id: str, parent_run_id: str, sweep: str,
                            trial_key: str, run_name: str, params: Mapping[str, Any],
                            tags: Mapping[str, str] | None = None,
                            known_run_id: str | None = None) -> str:
        """The trial's one child run: the checkpoint's run id if given, else the run
        tagged with this trial key under this parent, else a new run. Re-opened runs are
        set back to RUNNING."""
        run_id = known_run_id or self.find_child(experiment_id, parent_run_id, trial_key)
        if run_id is None:
            return self.start_child(experiment_id, parent_run_id, sweep, trial_key, run_name,
                                    params, tags)
        self.reopen(run_id)
        for k, v in (tags or {}).items():
            _retry(self.client.set_tag, run_id, k, v)
        return run_id

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

    def log_table(self, run_id: str, df: Any, artifact_file: str) -> None:
        """A pandas DataFrame as an MLflow table artifact (the artifact view renders it)."""
        _retry(self.client.log_table, run_id, df, artifact_file)

    def set_experiment_note(self, experiment_id: str, text: str) -> None:
        """The experiment's description (Markdown) in the MLflow UI."""
        _retry(self.client.set_experiment_tag, experiment_id, "mlflow.note.content", text)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            _retry(self.client.log_batch, run_id, tags=items)

    # -- reading (status, tests) -------------------------------------------------------
    def child_runs(self, experiment_id: str, parent_run_id: str) -> list[Any]:
        return search_all(self.client, [experiment_id], f"tags.`{PARENT}` = '{parent_run_id}'")

    def get_run(self, run_id: str) -> Any:
        return _retry(self.client.get_run, run_id)

    def metric_steps(self, run_id: str, key: str) -> list[int]:
        return sorted(m.step for m in _retry(self.client.get_metric_history, run_id, key))
