"""Where runs go: the tracking URI, a reachable server that accepts us, the experiment,
provenance tags.

>>> resolve_tracking_uri(None, Path("/tmp/run"), env={})
'sqlite:////tmp/run/mlflow.db'
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mrnet_ray
from mrnet_ray.errors import UserError

logger = logging.getLogger(__name__)

TAG_TRIAL_ID = "trial_id"
TAG_ERROR = "error"
TAG_INFEASIBLE = "infeasible"
"""On runs of proposals over a space's limits, which were never trained: why."""
TAG_ROLE = "mrnet_ray.role"
"""``confirmation`` on the runs that retrain a search's top configurations with new seeds."""
TAG_CONFIRMS = "mrnet_ray.confirms"
"""On a confirmation run: the search trial whose configuration it retrains."""
TAG_PARENT = "mlflow.parentRunId"
TAG_SEARCH_KEY = "mrnet_ray.search_key"
TAG_DATA_HASH = "mrnet_ray.data_hash"
TAG_CODE_VERSION = "mrnet_ray.code_version"
ERROR_CHARS = 500


def resolve_tracking_uri(
    cli_uri: str | None, run_dir: Path, env: Mapping[str, str] = os.environ
) -> str:
    """``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else a sqlite store in ``run_dir``."""
    return cli_uri or env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.absolute()}/mlflow.db"


def is_remote(uri: str) -> bool:
    """Stores that keep artifacts themselves (a tracking server, Databricks); for the others
    (sqlite, a database, a path) artifacts go to the run directory, not ./mlruns."""
    return uri.startswith(("http://", "https://", "databricks"))


AUTH_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")
"""MLflow's error codes for a request refused for who sent it (HTTP 401) or what it asked (403)."""
CREDENTIALS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"


def is_auth_error(e: BaseException) -> bool:
    """Whether MLflow refused a request for its credentials (401) or its permissions (403)."""
    return isinstance(e, MlflowException) and e.error_code in AUTH_ERRORS


def check_uri(uri: str) -> None:
    """UserError for an http(s) tracking URI with credentials in it (``http://user:pw@host``).

    Refused rather than redacted: MLflow itself prints the tracking URI in its run links and
    error messages, and mrnet_ray records it (search.json, the bundle's lineage), so a
    password there would be written in places no redaction of ours reaches.
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        raise UserError(
            f"tracking URI {bare} (as given, with credentials, not shown): a user name or "
            f"password in the URI would be printed and recorded; use {bare} and set {CREDENTIALS}"
        )


def check_credentials(uri: str, timeout_s: float = 5.0) -> bool:
    """UserError if an http(s) tracking server refuses this process's credentials (MLflow's
    own: ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``, or
    ``~/.mlflow/credentials``); True if it accepted them or needs none, False if it did not
    answer (down: for the caller to decide)."""
    check_uri(uri)
    if not uri.startswith(("http://", "https://")):
        return True
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:  # searching experiments needs a known user and no permission on any one of them
        response = http_request(
            creds, "/api/2.0/mlflow/experiments/search", "POST", json={"max_results": 1},
            max_retries=0, timeout=timeout_s, raise_on_status=False,
        )  # fmt: skip
    except (MlflowException, OSError):
        return False
    who = f"user {creds.username!r}" if creds.username else "no user (none is set)"
    if response.status_code == 401:
        raise UserError(
            f"MLflow tracking server at {uri} refused the credentials of {who} (HTTP 401); "
            f"set {CREDENTIALS} to a user of that server and its current password"
        )
    if response.status_code == 403:
        raise UserError(
            f"MLflow tracking server at {uri} does not let {who} read experiments (HTTP 403); "
            "ask its admin for access or use another user"
        )
    return response.status_code < 500


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, before any trial starts, if an http(s) tracking server is down or
    refuses this process's credentials, or if the URI itself holds credentials."""
    check_uri(uri)
    if not uri.startswith(("http://", "https://")):
        return
    reason = ""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError as e:
        if e.code >= 500:  # below, it answered: up (maybe behind auth or a proxy)
            reason = f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        reason = str(getattr(e, "reason", None) or e)
    if reason:
        raise UserError(
            f"MLflow tracking server at {uri} is unreachable: {reason}; "
            "start it with `make ui` or check --mlflow-uri"
        )
    check_credentials(uri, timeout_s)


def ensure_experiment(uri: str, name: str, artifact_location: Path | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) if missing."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_location.absolute().as_uri() if artifact_location else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as e:  # created meanwhile by another process
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment {name!r} at {uri} is deleted; restore it in the MLflow UI "
            "or pick another experiment name"
        )
    return experiment.experiment_id


@dataclass(frozen=True)
class Tracking:
    """Where one command logs: a checked tracking URI and an experiment id."""

    uri: str
    experiment_id: str


def setup_tracking(cli_uri: str | None, run_dir: Path, experiment: str) -> Tracking:
    """Resolve the URI, check the server is up and ensure the experiment, before any trial."""
    uri = resolve_tracking_uri(cli_uri, run_dir)
    check_reachable(uri)
    if uri.startswith("sqlite:"):
        run_dir.mkdir(parents=True, exist_ok=True)
    artifacts = None if is_remote(uri) else run_dir / "mlartifacts"
    return Tracking(uri, ensure_experiment(uri, experiment, artifacts))


def code_version() -> str:
    """``git describe --always --dirty`` of this checkout, else the package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(mrnet_ray.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return f"mrnet_ray {mrnet_ray.__version__}"


def run_tags(data_hash: str) -> dict[str, str]:
    """Provenance tags for every run: the prepared data's content hash and the code version."""
    return {TAG_DATA_HASH: data_hash, TAG_CODE_VERSION: code_version()}


def missing_local_store(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store that does not exist (MLflow would create an empty
    store there rather than fail), else None."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            return db
    return None
