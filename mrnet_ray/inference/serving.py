"""The champion behind an HTTP endpoint: a Ray Serve application (``python -m mrnet_ray.serve``).

::

    POST /predict[?top_k=K]  body: the audio file (any format soundfile reads)
        200 {"label", "prob", "top_k": [{"label", "prob"}, ...], "segments",
             "model": {"name", "version", "sha256"}}
        400 bad audio or top_k, 413 a body over max_bytes, 415 a form or JSON body:
            {"error": "one line"}; the server goes on serving
    GET /healthz             200 once the replica has loaded its model
    GET /                    what is served: model, labels, features, batching, counters

One deployment, :class:`Classifier`, with N replicas that each load the model once. A
request's body is decoded and cut by the shared frontend in a worker thread (bounded by
``FeatureConfig.max_track_seconds``); its segments then wait up to ``batch_wait_ms`` for other
requests' (``@serve.batch``, at most ``max_batch`` requests), one forward pass scores them all
and each request gets its own track prediction back
(:func:`~mrnet_ray.inference.predict.predict_batch`), so an answer equals ``predict``'s.

Following an alias (:func:`serve_forever`): replicas always load a pinned version
(``models:/NAME/V``, so a replica restarted later loads the same weights), and the driver
re-resolves the alias every ``poll_s``. When it moves, the driver loads and checks the new
version itself, then redeploys; Serve replaces the replicas in a rolling update with
``max_surge_percent=100``: new replicas load before the old ones stop, so no request is
dropped. Without room for the extra replicas, Serve replaces them one at a time; requests
then wait while a replica loads, and none is dropped either.
"""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import ray
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mrnet_ray.errors import UserError
from mrnet_ray.features import AudioError
from mrnet_ray.inference.predict import (
    REGISTRY,
    ModelInfo,
    Prediction,
    absolute_store,
    answer,
    file_segments,
    open_model_info,
    pinned,
    predict_batch,
    registered_version,
)

APP = "mrnet"
DEFAULT_TOP_K = 3
REFUSED_TYPES = ("multipart/", "application/json", "text/")
"""Bodies that are no audio file: a form upload or JSON (send the file itself)."""


@dataclass(frozen=True)
class ServeOptions:
    """What ``serve`` serves and how (the command's flags)."""

    model: str
    """A bundle directory or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``."""
    mlflow_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch: int = 8
    """Most requests whose segments go through the model in one forward pass."""
    batch_wait_ms: float = 10.0
    """How long a request waits for others to batch with."""
    max_bytes: int = 64 << 20
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    follow_alias: bool = False
    poll_s: float = 30.0

    def __post_init__(self) -> None:
        for flag, value, low in [
            ("--port", self.port, 1), ("--replicas", self.replicas, 1),
            ("--max-batch", self.max_batch, 1), ("--max-bytes", self.max_bytes, 1),
            ("--batch-wait-ms", self.batch_wait_ms, 0), ("--poll-seconds", self.poll_s, 0.1),
            ("--cpus-per-replica", self.cpus_per_replica, 0.01),
            ("--gpus-per-replica", self.gpus_per_replica, 0),
        ]:  # fmt: skip
            if value < low:
                raise UserError(f"{flag} {value}: must be >= {low}")
        if self.follow_alias and not (self.model.startswith(REGISTRY) and "@" in self.model):
            raise UserError(
                f"--follow-alias needs a models:/NAME@ALIAS model to follow, not {self.model}"
            )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment(name="classifier")
class Classifier:
    """One replica: the model, loaded once, behind the routes of the module docstring."""

    def __init__(self, model: str, mlflow_uri: str | None, opts: dict) -> None:
        torch.set_num_threads(max(1, int(opts["cpus"])))
        self.bundle, self.info = open_model_info(model, mlflow_uri)
        if opts["gpus"] > 0:
            self.bundle.model.to("cuda")
        self.opts = opts
        self._score.set_max_batch_size(opts["max_batch"])
        self._score.set_batch_wait_timeout_s(opts["batch_wait_ms"] / 1000)
        self.requests = 0
        self.batches: Counter[int] = Counter()
        """Batch size -> forward passes of that many requests: batching as it happened."""

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _score(self, batch: list[np.ndarray]) -> list[Prediction]:
        self.batches[len(batch)] += 1
        names = [""] * len(batch)
        return await asyncio.to_thread(predict_batch, self.bundle.model, batch, names)

    def stats(self) -> dict:
        """This replica's counters: requests answered and forward passes by batch size."""
        return {"requests": self.requests, "batches": dict(sorted(self.batches.items()))}

    def describe(self) -> dict:
        return {
            "service": "mrnet_ray",
            "model": self.info.to_json(),
            "labels": list(self.bundle.labels),
            "feature": self.bundle.feature.to_dict(),
            "routes": {"POST /predict[?top_k=K]": "classify the audio file in the body",
                       "GET /healthz": "200 once the model is loaded"},
            "max_bytes": self.opts["max_bytes"],
            "batching": {"max_batch": self.opts["max_batch"],
                         "batch_wait_ms": self.opts["batch_wait_ms"]},
            "replica": self.stats(),
        }  # fmt: skip

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        get = request.method in ("GET", "HEAD")
        if path == "/healthz" and get:
            return JSONResponse({"status": "ok", "model": self.info.to_json()})
        if path == "/" and get:
            return JSONResponse(self.describe())
        if path == "/predict" and request.method == "POST":
            return await self._predict(request)
        if path in ("/", "/healthz", "/predict"):
            return _error(
                405, f"{request.method} {path}: not allowed (POST /predict, GET /healthz)"
            )
        return _error(404, f"{path}: no such route (POST /predict, GET /healthz, GET /)")

    async def _predict(self, request: Request) -> Response:
        labels = self.bundle.labels
        try:
            k = int(request.query_params.get("top_k", DEFAULT_TOP_K))
        except ValueError:
            k = 0
        if k < 1:
            return _error(400, f"top_k={request.query_params['top_k']}: must be an integer >= 1")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind.startswith(REFUSED_TYPES):
            return _error(
                415,
                f"Content-Type {kind}: send the audio file itself as the body, with "
                "Content-Type audio/* or application/octet-stream",
            )
        body = await self._read_body(request)
        if isinstance(body, Response):
            return body
        try:
            segments = await asyncio.to_thread(
                file_segments, io.BytesIO(body), self.bundle.feature, "request body"
            )
        except AudioError as e:
            return _error(400, str(e))
        prediction = await self._score(segments)
        self.requests += 1
        out = answer(prediction, labels, min(k, len(labels)))
        return JSONResponse({**out, "model": self.info.to_json()})

    async def _read_body(self, request: Request) -> bytes | Response:
        """The body, or 413 as soon as it is known to exceed ``max_bytes``."""
        limit = self.opts["max_bytes"]
        too_large = _error(413, f"request body over the server's limit of {limit:,} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return too_large
        chunks, total = [], 0
        async for chunk in request.stream():  # a chunked upload declares no length
            total += len(chunk)
            if total > limit:
                return too_large
            chunks.append(chunk)
        if total == 0:
            return _error(400, "request body: empty; send the audio file as the body")
        return b"".join(chunks)


def _needs(opts: ServeOptions) -> dict[str, float]:
    return {
        "CPU": opts.replicas * opts.cpus_per_replica,
        "GPU": opts.replicas * opts.gpus_per_replica,
    }


def check_fits(opts: ServeOptions) -> None:
    """One line if the cluster cannot hold the replicas at all (Serve would wait forever)."""
    total = ray.cluster_resources()
    short = {k: v for k, v in _needs(opts).items() if v > total.get(k, 0.0) + 1e-9}
    if short:
        have = ", ".join(f"{total.get(k, 0.0):g} {k}" for k in short)
        need = ", ".join(f"{v:g} {k}" for k, v in short.items())
        raise UserError(
            f"--replicas {opts.replicas} x --cpus-per-replica {opts.cpus_per_replica:g} / "
            f"--gpus-per-replica {opts.gpus_per_replica:g} need {need}; the cluster has {have}"
        )


def room_to_surge(opts: ServeOptions) -> bool:
    """Whether a new set of replicas fits beside the running one."""
    free = ray.available_resources()
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in _needs(opts).items() if v > 0)


def deploy(opts: ServeOptions, model: str, surge: bool = True) -> None:
    """Deploy (or roll out) the application serving ``model``; returns once it is RUNNING.

    A rollout with ``surge`` starts the new replicas before stopping the old ones; without,
    Serve replaces them in turn and requests wait while a replica loads (none is dropped)."""
    settings = {
        "cpus": opts.cpus_per_replica, "gpus": opts.gpus_per_replica,
        "max_batch": opts.max_batch, "batch_wait_ms": opts.batch_wait_ms,
        "max_bytes": opts.max_bytes,
    }  # fmt: skip
    app = Classifier.options(
        num_replicas=opts.replicas,
        # a replica holds at most this many requests: it caps the batch, so leave room
        max_ongoing_requests=max(32, 4 * opts.max_batch),
        ray_actor_options={"num_cpus": opts.cpus_per_replica, "num_gpus": opts.gpus_per_replica},
        max_surge_percent=100 if surge else 0,
    ).bind(model, absolute_store(opts.mlflow_uri), settings)
    serve.run(app, name=APP, route_prefix="/")


def start_http(host: str, port: int) -> None:
    """Start Serve's HTTP proxy on ``host:port`` (fixed for the life of the Serve instance)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(
                f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                "pick another --port"
            ) from None
    serve.start(http_options={"host": host, "port": port})


def follow(opts: ServeOptions, serving: ModelInfo, say: Callable[[str], None]) -> ModelInfo:
    """Re-resolve the alias (one registry call); if it names another version, load and check
    that version, then roll it out. Returns what is served afterwards (``serving`` if nothing
    changed or the new version cannot be loaded, which is said and retried at the next poll)."""
    try:
        version = registered_version(opts.model, opts.mlflow_uri)
        if version == serving.version:
            return serving
        _, info = open_model_info(f"{REGISTRY}{serving.name}/{version}", opts.mlflow_uri)
    except UserError as e:
        say(f"error: {e}; still serving version {serving.version}")
        return serving
    surge = room_to_surge(opts)
    say(
        f"{opts.model}: version {serving.version} -> {info.version} "
        f"(sha256 {info.sha256[:12]}); rolling out"
        + ("" if surge else ", one replica at a time (no room for new ones beside the old)")
    )
    deploy(opts, pinned(opts.model, info), surge)
    say(f"{opts.model}: version {info.version} serving")
    return info


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_forever(opts: ServeOptions, say: Callable[[str], None] = print) -> None:
    """Serve until SIGINT or SIGTERM, then stop Serve (and the Ray it started) cleanly."""
    _, info = open_model_info(opts.model, opts.mlflow_uri)  # bad input: one line, no Ray
    opts = replace(opts, mlflow_uri=absolute_store(opts.mlflow_uri))
    started = not ray.is_initialized()
    if started:
        ray.init()  # RAY_ADDRESS joins a cluster
    try:
        check_fits(opts)
    except UserError:
        if started:
            ray.shutdown()
        raise
    # After ray.init, which installs its own SIGTERM handler; a process started in the
    # background may have inherited SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        start_http(opts.host, opts.port)
        deploy(opts, pinned(opts.model, info))
        version = f" version {info.version}" if info.version else ""
        say(
            f"serving {info.name}{version} (sha256 {info.sha256[:12]}) at "
            f"http://{opts.host}:{opts.port}: POST /predict, GET /healthz, GET /; "
            "Ctrl-C stops"
        )
        while True:
            time.sleep(opts.poll_s)
            if opts.follow_alias:
                info = follow(opts, info, say)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    say("stopped")
