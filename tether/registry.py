"""The model registry: every candidate becomes a version; ``@champion`` moves by compare-and-set.

Versions and aliases of ``cfg.registry.name`` (default ``tether-recommender``) in the MLflow
model registry. Stages are deprecated in MLflow: state lives in aliases and tags only.

Registration (:func:`register_candidate`)
    The adapter is logged into the candidate's MLflow run as a models-from-code pyfunc
    (:class:`tether.serving.TetherRecommender`) that carries its code (the ``tether`` package)
    and exact pins (:mod:`tether.serving_package`), so it serves where Tether is not installed:
    adapter directory, model record (a base-model reference that resolves on another machine +
    the weights hash, :mod:`tether.serving_base`; a local base directory only when it is logged
    with the version or reachable), examples config and the full gate report as artifacts.
    The stored adapter is downloaded back and its bytes compared with the source before a version
    exists. The version is then created *with* its description (the gate report Markdown) and
    every tag (verdicts, lineage, primary metric, idempotency key) in one call, and marked
    complete (``tether.registration=complete``) last. Any failure after the version exists
    deletes it; an incomplete version found later (a crashed process) is deleted on the next
    registration with its key, is never promoted and is skipped by :func:`registry_status`.
    Re-calling with the same ``idempotency_key`` (e.g. the Prefect flow-run id) returns the
    existing version and registers nothing.

Promotion (:func:`promote`, :func:`manual_promote`)
    ``@challenger`` always points at the newest promoted-or-blocked candidate (never moved back
    to an older version). ``@champion`` moves only when every blocking gate passed and the
    candidate beats the champion's ``primary_metric_value`` tag by
    ``gates.min_margin_vs_champion`` (:func:`tether.eval.gates.beats_reference_gate`, so a tie
    passes at margin 0); otherwise the version is tagged ``blocked=true`` with ``blocked_reason``.
    Tags are written first and aliases last, so an alias never points at a version whose record
    is not complete.

Comparing with the champion across protocol changes
    Every version registered with its evaluation protocol records its fingerprint
    (``eval_protocol_hash``, :func:`tether.eval.gating.protocol_fingerprint`) and settings
    (``eval_protocol``, JSON). The numbers of two versions are compared only when their
    fingerprints are equal: a champion measured under another protocol, or under an unknown one
    (registered before the fingerprint existed), blocks the candidate with the differing settings
    in ``blocked_reason``; :func:`manual_promote` is the way past it. The flow's gate makes this
    check against the champion it read (:func:`champion_for_gates`); :func:`promote` makes it
    again under the lock, against the champion of that moment. When neither version records a
    protocol (the registry API used without one) the numbers are compared as before.

Compare-and-set design
    MLflow has no transactions, so "read the champion, compare, move the alias" must not
    interleave between two promoters. Every promotion (and registration, for the idempotency
    check) runs inside a lock: for a local store (``sqlite:///...`` or a file store) an exclusive
    ``flock`` on ``<store>.tether-registry.lock`` beside it (exact, across threads and processes,
    released by the kernel if a process dies); for a remote tracking server, a lease held as a
    registered model named ``<name>.promotion-lock``: creating a registered model is atomic
    create-if-absent in every MLflow backend (a unique key), so exactly one promoter holds it; the
    lease records its owner and an expiry (``registry.lock_timeout_s``) after which a crashed
    holder's lease is broken. Inside the lock the champion is read, compared, tagged and moved;
    after the move it is read back, and a mismatch (someone moved it bypassing the lock, e.g. in
    the UI) raises :class:`RegistryConflictError` instead of reporting a promotion that did not
    hold.

Failure modes
    A tracking server that does not answer raises :class:`tether.tracking.TrackingUnavailableError`
    (one line: which server, password masked, and what state the registry is in) instead of
    MLflow's HTTP retry chain, so a Prefect retry log and the flow's final state stay readable.
    Everything stored (description, tags, ``tether_model.json``, ``gate_report.md``) passes
    through :func:`tether.secrets.redact`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

from tether.config import REPO_ROOT, TetherConfig
from tether.eval.gates import GateResult, beats_reference_gate, summarize
from tether.eval.metrics import as_float
from tether.secrets import redact, redact_tree
from tether.tracking import is_local_store as _is_local, lineage_tags, setup_tracking, tracking_errors, tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from tether.model.base import ResolvedModel

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "recommender"  # the logged model's name inside the run
TAG_COMPLETE = "tether.registration"
COMPLETE = "complete"
TAG_KEY = "idempotency_key"
TAG_PRIMARY = "primary_metric"
TAG_PRIMARY_VALUE = "primary_metric_value"
# The evaluation protocol a version was measured under: the names of tether.eval.gating's
# PROTOCOL_HASH_KEY / PROTOCOL_KEY (not imported here: that module loads the evaluation stack).
TAG_PROTOCOL_HASH = "eval_protocol_hash"
TAG_PROTOCOL = "eval_protocol"
# The model_versions.description and tag value columns are VARCHAR(5000) in MLflow's SQL schema.
MAX_TEXT = 5000
_ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed; the message says what to do."""


class RegistryConflictError(RegistryError):
    """The champion alias moved under a promotion (someone bypassed the promotion lock)."""


@dataclass(frozen=True)
class PromotionDecision:
    """What a promotion did.

    Attributes:
        name: the registered model.
        version: the candidate version.
        decision: ``champion`` (moved to it), ``already_champion``, or ``blocked``.
        champion_before: the champion version before (None = there was none).
        champion_after: the champion version after.
        candidate_metric: the candidate's primary metric.
        champion_metric: the previous champion's primary metric (None without a champion).
        reasons: why (gate failures, the comparison with the champion, a manual reason).
        manual: a manual override (:func:`manual_promote`).
    """

    name: str
    version: str
    decision: Literal["champion", "already_champion", "blocked"]
    champion_before: str | None
    champion_after: str | None
    candidate_metric: float
    champion_metric: float | None
    reasons: tuple[str, ...] = ()
    manual: bool = False

    @property
    def promoted(self) -> bool:
        """Whether the candidate is the champion after the call."""
        return self.decision in ("champion", "already_champion")


# --------------------------------------------------------------------------- store access


def _reports_unreachable(action: str, advice: str):
    """Decorate a registry function taking ``cfg`` and ``root``: an unreachable tracking server
    becomes one :class:`~tether.tracking.TrackingUnavailableError` saying what state is left."""

    def decorate(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any):
            bound = sig.bind_partial(*args, **kwargs)
            cfg, root = bound.arguments["cfg"], bound.arguments.get("root")
            uri = tracking_uri(cfg, Path(root) if root is not None else REPO_ROOT)
            with tracking_errors(uri, action, advice):
                return fn(*args, **kwargs)

        return wrapper

    return decorate



def _client(cfg: TetherConfig, root: Path | None) -> tuple[MlflowClient, str]:
    from mlflow import MlflowClient

    uri = tracking_uri(cfg, Path(root) if root is not None else REPO_ROOT)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _lock_path(uri: str) -> Path:
    """``<db>.tether-registry.lock`` beside a sqlite file, or inside a file store's directory."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else unquote(parsed.path)
        return Path(str(Path(db).resolve()) + ".tether-registry.lock")
    store = Path(unquote(parsed.path) if parsed.scheme == "file" else uri).resolve()
    return store / ".tether-registry.lock"


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """Exclusive ``flock``; each acquisition opens its own descriptor, so threads exclude each other too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path}: another promotion held the registry lock for over {timeout_s:.0f} s "
                        "(registry.lock_timeout_s); is a tether process stuck?"
                    ) from None
                time.sleep(0.02 + random.random() * 0.03)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


@contextlib.contextmanager
def _registry_lease(client: MlflowClient, name: str, timeout_s: float) -> Iterator[None]:
    """A lease held as a registered model: creation is atomic create-if-absent in every backend."""
    from mlflow.exceptions import MlflowException

    lock_name = f"{name}.promotion-lock"
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(
                lock_name,
                tags={"tether.lease_owner": token},
                description=f"Promotion lease for {name} (tether.registry); deleted when the promotion ends.",
            )
            break
        except MlflowException as exc:
            # "already exists": someone holds the lease. "not found": a sqlite store can report
            # this when the holder deletes the lease while our create is writing its tags. Both
            # mean "contended": wait and try again; anything else is a real error.
            if _error_code(exc) not in _ALREADY_EXISTS and _error_code(exc) not in _NOT_FOUND:
                raise
        with contextlib.suppress(MlflowException):
            # The server's creation time, not a tag: tags may land after the model row exists.
            held = client.get_registered_model(lock_name)
            if held.creation_timestamp / 1000 + timeout_s < time.time():
                log.warning("breaking the expired promotion lease %s (owner %s)", lock_name, held.tags.get("tether.lease_owner"))
                client.delete_registered_model(lock_name)
                continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"registered model {lock_name!r}: another promotion held the lease for over {timeout_s:.0f} s")
        time.sleep(0.05 + random.random() * 0.2)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            if client.get_registered_model(lock_name).tags.get("tether.lease_owner") == token:
                client.delete_registered_model(lock_name)


@contextlib.contextmanager
def promotion_lock(cfg: TetherConfig, client: MlflowClient, uri: str) -> Iterator[None]:
    """The lock every registry write of Tether runs under (see the module docstring)."""
    kind = cfg.registry.lock
    if kind == "auto":
        kind = "file" if _is_local(uri) else "registry"
    if kind == "file":
        if not _is_local(uri):
            raise RegistryError("registry.lock=file needs a local store, but the tracking URI is remote; use auto or registry")
        with _file_lock(_lock_path(uri), cfg.registry.lock_timeout_s):
            yield
    else:
        with _registry_lease(client, cfg.registry.name, cfg.registry.lock_timeout_s):
            yield


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _error_code(exc) in _NOT_FOUND or "alias" in str(exc).lower() and "not" in str(exc).lower():
            return None
        raise


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    s = str(value)
    return s if len(s) <= limit else s[: limit - 15] + " [... cut]"


def _version_str(version: Any) -> str:
    v = getattr(version, "version", version)
    s = str(v).strip()
    if not s.isdigit():
        raise ValueError(f"model version {version!r}: expected a version number or a ModelVersion")
    return s


def _require_complete(client: MlflowClient, name: str, version: str) -> ModelVersion:
    mv = client.get_model_version(name, version)
    if mv.tags.get(TAG_COMPLETE) != COMPLETE:
        raise RegistryError(
            f"{name} version {version} is not a complete registration (tag {TAG_COMPLETE} missing): "
            "it was left by a failed register_candidate and is never promoted; register the candidate again"
        )
    return mv


# --------------------------------------------------------------------------- registration


def _candidate_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Accept ``{metric: value}`` or a GateReport-style ``{system: {metric: value}}`` (its candidate)."""
    if "candidate" in metrics and isinstance(metrics["candidate"], Mapping):
        metrics = metrics["candidate"]
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out


def verdict_tags(gate_results: Sequence[GateResult]) -> dict[str, str]:
    """``gate.<name>`` = passed/failed per gate (failed if any of its checks failed), ``gate.<name>.<metric>``
    per check, ``verdict`` (PROMOTE/BLOCKED) and ``gates.blocking_failures``."""
    tags: dict[str, str] = {}
    by_gate: dict[str, list[GateResult]] = {}
    for g in gate_results:
        by_gate.setdefault(g.gate, []).append(g)
        tags[f"gate.{g.gate}.{g.metric}"] = "passed" if g.passed else ("failed" if g.blocking else "failed (advisory)")
    for gate, results in by_gate.items():
        blocking_fail = any(r.blocking and not r.passed for r in results)
        tags[f"gate.{gate}"] = "failed" if blocking_fail else ("passed" if all(r.passed for r in results) else "passed (advisory failure)")
    passed, failures = summarize(gate_results)
    tags["verdict"] = "PROMOTE" if passed else "BLOCKED"
    tags["gates.blocking_failures"] = _text(", ".join(f"{g.gate}:{g.metric}" for g in failures) or "none")
    return tags


def _dir_digest(directory: Path) -> str:
    """sha256 over the sorted ``<sha256>  <relative path>`` listing of every file under ``directory``."""
    lines = []
    for p in sorted(q for q in Path(directory).rglob("*") if q.is_file()):
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        lines.append(f"{h.hexdigest()}  {p.relative_to(directory).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _find_by_key(client: MlflowClient, name: str, key: str) -> list[ModelVersion]:
    found = client.search_model_versions(f"name = '{name}' and tags.{TAG_KEY} = '{key}'")
    return sorted((mv for mv in found if mv.tags.get(TAG_KEY) == key), key=lambda mv: int(mv.version))


def _delete_version(client: MlflowClient, name: str, version: str) -> None:
    """Delete a half-made version, its idempotency tag first (MLflow soft-deletes versions and
    keeps their tags: a retry must never find the dead version by its key)."""
    with contextlib.suppress(Exception):
        client.delete_model_version_tag(name, version, TAG_KEY)
    client.delete_model_version(name, version)


@contextlib.contextmanager
def _in_run(run_id: str) -> Iterator[None]:
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        yield


def _catalog(cfg: TetherConfig, root: Path) -> dict[str, str] | None:
    """Title -> genres, when prompts carry genres and the processed catalog exists."""
    if not cfg.examples.include_genres:
        return None
    path = cfg.paths.resolved(root).processed_dir / "items.parquet"
    if not path.exists():
        log.warning("examples.include_genres is set but %s is missing: served prompts will lack genres", path)
        return None
    import pandas as pd

    items = pd.read_parquet(path, columns=["title", "genres"])
    return dict(zip(items["title"].astype(str), items["genres"].fillna("").astype(str)))


def _description(gate_report_md: str) -> str:
    if len(gate_report_md) <= MAX_TEXT:
        return gate_report_md
    note = "\n\n[... cut to fit the registry; the full report is the model artifact gate_report.md]"
    return gate_report_md[: MAX_TEXT - len(note)] + note


def _finalize(client: MlflowClient, name: str, version: str) -> None:
    """The last write of a registration: from here on the version may be promoted."""
    client.set_model_version_tag(name, version, TAG_COMPLETE, COMPLETE)


@_reports_unreachable(
    "register the candidate",
    "No complete version was registered and no alias moved (a half-made version is never promoted and is "
    "deleted when this flow run is retried). Re-run the flow once the server is back.",
)
def register_candidate(
    cfg: TetherConfig,
    root: Path,
    *,
    run_id: str,
    adapter_dir: Path,
    resolved_base: ResolvedModel,
    gate_report_md: str,
    gate_results: Sequence[GateResult],
    metrics: Mapping[str, Any],
    lineage: Mapping[str, str] | None = None,
    idempotency_key: str,
    eval_protocol: Mapping[str, Any] | None = None,
    base_model_delivery: str | None = None,
) -> ModelVersion:
    """Log a candidate adapter as a pyfunc into its run and register it as a version of ``registry.name``.

    Args:
        cfg: the config the candidate was trained and evaluated with.
        root: the project root (MLflow store, ``data.dvc``, git).
        run_id: the MLflow run the model is logged into (e.g. ``TrainResult.mlflow_run_id``).
        adapter_dir: the saved adapter (``TrainResult.adapter_dir``).
        resolved_base: the exact base model; logged as a reference (spec + weights hash).
        gate_report_md: the gate report (:func:`tether.eval.report.to_markdown`), the version's description.
        gate_results: the verdicts, as ``gate.<name>`` tags.
        metrics: the candidate's metrics (``{metric: value}`` or ``{"candidate": {...}, ...}``);
            ``gates.primary_metric`` becomes the ``primary_metric_value`` tag.
        lineage: lineage tags (:func:`tether.tracking.lineage_tags`); None = computed from ``root``.
        idempotency_key: e.g. the Prefect flow-run id; a second call with it returns the first version.
        eval_protocol: the protocol the metrics were measured under
            (:func:`tether.eval.gating.protocol_settings`): recorded as the ``eval_protocol_hash``
            tag (its fingerprint) and the ``eval_protocol`` tag (the settings as JSON). None = not
            recorded: the version's numbers are then comparable only with versions that record none.
        base_model_delivery: how the version carries its base model (:func:`tether.serving_base.plan_base`):
            ``auto`` (the embedded model by package and hash, a hub id at its revision, a local
            directory by path when the store is local, logged when small), ``log`` (its weights
            become an artifact of the version) or ``reference`` (a local path the caller declares
            reachable from every serving machine); None = ``$TETHER_BASE_MODEL_DELIVERY``, else auto.

    Returns:
        The complete model version (all tags set).

    Raises:
        FileNotFoundError: the adapter directory is not a saved adapter.
        ValueError: a bad idempotency key, or lineage for another base model.
        tether.serving_base.BaseModelUnreachableError: the base model would not resolve where the
            version is served (a local directory behind a remote store; the message says how to choose).
        tether.serving_package.PackagingError: this environment does not match pyproject.toml's pins.
        RegistryError: the stored adapter differs from the source (nothing is registered).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from tether.serving import (
        ADAPTER_ARTIFACT, CATALOG_ARTIFACT, RECORD_ARTIFACT, check_adapter_dir, default_model_config, input_example,
        model_record, signature,
    )
    from tether.serving_base import BASE_ARTIFACT, plan_base
    from tether.serving_package import ENTRY_FILE, serving_requirements, stage_code

    key = str(idempotency_key).strip()
    if not key or len(key) > 200 or any(c in key for c in "'\"\\\n"):
        raise ValueError(f"idempotency_key {idempotency_key!r}: a non-empty id of at most 200 characters without quotes")
    root = Path(root).resolve()
    name = cfg.registry.name
    adapter_dir = check_adapter_dir(Path(adapter_dir))
    tags = lineage_tags(cfg, root, resolved_base.content_hash)
    tags.update(dict(lineage or {}))
    # The protocol tags come from eval_protocol only, never from a lineage mapping that happens to hold them.
    tags.pop(TAG_PROTOCOL_HASH, None)
    tags.pop(TAG_PROTOCOL, None)
    tags.update(_protocol_tags(eval_protocol))
    if tags.get("base_model_hash") != resolved_base.content_hash:
        raise ValueError(
            f"lineage base_model_hash {tags.get('base_model_hash')!r} is not the resolved base model's "
            f"{resolved_base.content_hash!r}: the candidate was not trained on this base model"
        )
    cand = _candidate_metrics(metrics)
    primary = cfg.gates.primary_metric
    primary_value = cand.get(primary, float("nan"))
    if not math.isfinite(primary_value):
        log.warning("candidate has no finite %s: it is registered but can never become champion", primary)
    uri = setup_tracking(cfg, root)
    client, _ = _client(cfg, root)
    requirements = serving_requirements()  # before any write: an environment off its pins is refused

    with promotion_lock(cfg, client, uri):
        existing = _find_by_key(client, name, key)
        done = [mv for mv in existing if mv.tags.get(TAG_COMPLETE) == COMPLETE]
        for mv in existing:
            if mv not in done:
                log.warning("deleting %s version %s: an incomplete registration left by a failed attempt", name, mv.version)
                _delete_version(client, name, str(mv.version))
        if done:
            log.info("idempotency key %s already registered as %s version %s", key, name, done[0].version)
            return done[0]

        adapter_digest = _dir_digest(adapter_dir)
        with tempfile.TemporaryDirectory(prefix="tether-register-") as tmp:
            tmp_path = Path(tmp)
            base_plan = plan_base(resolved_base, base_model_delivery, client.get_run(run_id).info.artifact_uri, tmp_path)
            record = redact_tree(model_record(cfg, base_plan.entry))
            (tmp_path / "tether_model.json").write_text(json.dumps(record, indent=2))
            (tmp_path / "gate_report.md").write_text(redact(gate_report_md), encoding="utf-8")
            artifacts = {
                ADAPTER_ARTIFACT: str(adapter_dir),
                RECORD_ARTIFACT: str(tmp_path / "tether_model.json"),
                "gate_report": str(tmp_path / "gate_report.md"),
            }
            catalog = _catalog(cfg, root)
            if catalog is not None:
                (tmp_path / "catalog.json").write_text(json.dumps(catalog))
                artifacts[CATALOG_ARTIFACT] = str(tmp_path / "catalog.json")
            if base_plan.log_dir is not None:
                artifacts[BASE_ARTIFACT] = str(base_plan.log_dir)
            with _in_run(run_id):
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME_IN_RUN,
                    python_model=str(ENTRY_FILE),  # models-from-code: no pickle
                    code_paths=[str(stage_code(tmp_path / "code"))],
                    artifacts=artifacts,
                    signature=signature(),
                    input_example=input_example(),
                    pip_requirements=requirements,
                    model_config=default_model_config(),
                    metadata={
                        "base_model": resolved_base.name,
                        "base_model_hash": resolved_base.content_hash,
                        "base_model_delivery": base_plan.entry["delivery"],
                    },
                )
            try:
                _verify_stored_adapter(info.model_uri, adapter_digest, tmp_path / "check")
            except BaseException:
                with contextlib.suppress(Exception):
                    client.delete_logged_model(info.model_id)
                raise

        tags.update(verdict_tags(gate_results))
        tags.update(
            {
                TAG_KEY: key,
                TAG_PRIMARY: primary,
                TAG_PRIMARY_VALUE: repr(primary_value),
                "adapter_sha256": adapter_digest,
                "base_model": resolved_base.name,
                "base_model_delivery": base_plan.entry["delivery"],
                "registered_at": _now(),
            }
        )
        tags.update({f"metric.{k}": repr(v) for k, v in sorted(cand.items()) if len(k) < 200})
        with contextlib.suppress(MlflowException):
            client.create_registered_model(
                name, description="Tether recommender: a LoRA adapter per version (tether.registry)."
            )
        mv = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags={k: _text(redact(str(v))) for k, v in tags.items()},
            description=_description(redact(gate_report_md)),
            model_id=info.model_id,
        )
        try:
            _finalize(client, name, mv.version)
            mv = client.get_model_version(name, mv.version)
            if mv.tags.get(TAG_COMPLETE) != COMPLETE:
                raise RegistryError(f"{name} version {mv.version}: the completion tag did not persist")
        except BaseException:
            log.error("registration of %s version %s failed: deleting the half-made version", name, mv.version)
            with contextlib.suppress(Exception):
                _delete_version(client, name, str(mv.version))
            raise
    log.info("registered %s version %s (%s=%s, verdict %s)", name, mv.version, primary, primary_value, tags["verdict"])
    return mv


def _protocol_tags(eval_protocol: Mapping[str, Any] | None) -> dict[str, str]:
    """``eval_protocol_hash`` and ``eval_protocol`` (sorted JSON) for a version; the settings only
    when they fit a tag value (a cut JSON could not be read back), the hash always."""
    if eval_protocol is None:
        return {}
    from tether.eval.gating import protocol_hash

    tags = {TAG_PROTOCOL_HASH: protocol_hash(eval_protocol)}
    text = json.dumps(dict(eval_protocol), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    if len(text) <= MAX_TEXT:
        tags[TAG_PROTOCOL] = text
    else:
        log.warning("the evaluation protocol (%d characters) does not fit a tag: only its hash is recorded", len(text))
    return tags


def _protocol_of(mv: ModelVersion) -> dict[str, Any] | None:
    """The ``eval_protocol`` settings recorded on a version (None when absent or unreadable)."""
    text = mv.tags.get(TAG_PROTOCOL)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _protocol_mismatch(mv: ModelVersion, champion: ModelVersion, metric: str) -> str | None:
    """Why the champion's numbers are not comparable with the candidate's (see the module docstring), or None."""
    cand_hash, champ_hash = mv.tags.get(TAG_PROTOCOL_HASH), champion.tags.get(TAG_PROTOCOL_HASH)
    if cand_hash is None and champ_hash is None:
        return None  # neither records a protocol (the API used without one): compared as before
    from tether.eval.gating import champion_protocol_mismatch

    return champion_protocol_mismatch(
        {TAG_PROTOCOL_HASH: champ_hash, TAG_PROTOCOL: _protocol_of(champion), "version": str(champion.version)},
        _protocol_of(mv), metric, candidate_hash=cand_hash, candidate_version=str(mv.version),
    )


def _verify_stored_adapter(model_uri: str, expected: str, dst: Path) -> None:
    """Download the stored adapter back and compare its bytes with the source."""
    import mlflow

    from tether.serving import ADAPTER_FILES

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    found = [p.parent for p in local.rglob(ADAPTER_FILES[1]) if (p.parent / ADAPTER_FILES[0]).is_file()]
    if len(found) != 1:
        raise RegistryError(f"{model_uri}: expected one adapter in the logged model, found {len(found)}")
    got = _dir_digest(found[0])
    if got != expected:
        raise RegistryError(f"{model_uri}: the stored adapter differs from the source (sha256 {got[:12]} != {expected[:12]})")


# --------------------------------------------------------------------------- promotion


def _set_tags(client: MlflowClient, name: str, version: str, tags: Mapping[str, str]) -> None:
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, _text(redact(str(v))))


def _verify_champion(client: MlflowClient, name: str, alias: str, expected: str | None) -> None:
    after = _alias_version(client, name, alias)
    got = str(after.version) if after is not None else None
    if got != expected:
        raise RegistryConflictError(
            f"{name}@{alias} is version {got} right after this promotion set it to {expected}: something "
            "moved it without the promotion lock (the UI, another tool). Check registry_status() and fix it "
            "with tether.registry.manual_promote."
        )


@_reports_unreachable(
    "promote the candidate",
    "@champion is moved last, so it moved completely or not at all: check `tether status` and re-run the flow "
    "once the server is back (registration and promotion are idempotent for a flow run).",
)
def promote(
    cfg: TetherConfig,
    version: Any,
    *,
    all_gates_passed: bool,
    candidate_metric: float,
    reasons: Sequence[str] = (),
    root: Path | None = None,
) -> PromotionDecision:
    """Set ``@challenger`` to the version; move ``@champion`` only if it passed every gate and beats the champion.

    The champion is compared only when both versions were measured under the same evaluation
    protocol (equal ``eval_protocol_hash`` tags; see the module docstring); otherwise the
    candidate is blocked with the settings that differ.

    Args:
        cfg: the config (``registry``, ``gates.primary_metric``, ``gates.min_margin_vs_champion``).
        version: a version number or the ``ModelVersion`` from :func:`register_candidate`.
        all_gates_passed: every blocking gate passed (:func:`tether.eval.gates.summarize`).
        candidate_metric: the candidate's primary metric (must equal its ``primary_metric_value`` tag).
        reasons: why gates failed (the blocking failures' reasons), recorded in ``blocked_reason``.
        root: the project root of a local store (None = the repository).

    Returns:
        The decision.

    Raises:
        RegistryError: the version is an incomplete registration, or its recorded metric differs.
        RegistryConflictError: the champion moved under the promotion (bypassing the lock).
    """
    client, uri = _client(cfg, root)
    name, rc = cfg.registry.name, cfg.registry
    v = _version_str(version)
    primary = cfg.gates.primary_metric
    candidate_metric = as_float(candidate_metric)
    with promotion_lock(cfg, client, uri):
        mv = _require_complete(client, name, v)
        recorded = as_float(mv.tags.get(TAG_PRIMARY_VALUE))
        if math.isfinite(recorded) and not math.isclose(recorded, candidate_metric, rel_tol=1e-9, abs_tol=1e-12):
            raise RegistryError(
                f"{name} version {v} was registered with {primary}={recorded!r} but promote() got {candidate_metric!r}"
            )
        champion = _alias_version(client, name, rc.champion_alias)
        before = str(champion.version) if champion is not None else None
        champion_metric = as_float(champion.tags.get(TAG_PRIMARY_VALUE)) if champion is not None else None
        why = [str(r) for r in reasons if str(r).strip()]
        if before == v:
            decision = "already_champion"
            why.append(f"version {v} is already @{rc.champion_alias}")
        elif not all_gates_passed:
            decision = "blocked"
            why = why or ["a blocking gate failed"]
        elif not math.isfinite(candidate_metric):
            decision = "blocked"
            why.append(f"{primary} is {candidate_metric}: a candidate without a finite primary metric is never champion")
        elif champion is None:
            decision = "champion"
            why.append(f"first champion ({primary} {candidate_metric:.4g})")
        elif champion.tags.get(TAG_PRIMARY) != primary:
            decision = "blocked"
            why.append(
                f"champion version {before} records {champion.tags.get(TAG_PRIMARY)!r}, not {primary!r}: not comparable; "
                "use manual_promote after a review"
            )
        elif (mismatch := _protocol_mismatch(mv, champion, primary)) is not None:
            decision = "blocked"
            why.append(mismatch)
        else:
            gate = beats_reference_gate(primary, candidate_metric, champion_metric, "champion", cfg.gates.min_margin_vs_champion)
            decision = "champion" if gate.passed else "blocked"
            why.append(f"champion version {before}: {gate.reason}")

        tags = {
            "promotion.decision": decision,
            "promotion.at": _now(),
            "promotion.champion_before": before or "none",
            "blocked": "true" if decision == "blocked" else "false",
        }
        if decision == "blocked":
            tags["blocked_reason"] = "; ".join(why)
        _set_tags(client, name, v, tags)
        if decision != "blocked":
            with contextlib.suppress(Exception):
                client.delete_model_version_tag(name, v, "blocked_reason")
        if decision == "champion" and before is not None:
            _set_tags(client, name, before, {"superseded_by": v, "superseded_at": _now()})
        # Aliases last: every tag above exists before an alias points here.
        challenger = _alias_version(client, name, rc.challenger_alias)
        if challenger is None or int(challenger.version) <= int(v):
            client.set_registered_model_alias(name, rc.challenger_alias, v)
        if decision == "champion":
            client.set_registered_model_alias(name, rc.champion_alias, v)
        after = v if decision != "blocked" else before
        _verify_champion(client, name, rc.champion_alias, after)
    result = PromotionDecision(name, v, decision, before, after, candidate_metric, champion_metric, tuple(why))
    log.info("%s version %s: %s (%s)", name, v, decision, "; ".join(why))
    return result


@_reports_unreachable("promote by hand", "Check `tether status` once the server is back, then run the command again.")
def manual_promote(cfg: TetherConfig, version: Any, reason: str, user: str, *, root: Path | None = None) -> PromotionDecision:
    """Move ``@champion`` to a version by hand, overriding the gates; the override is recorded in tags.

    Args:
        cfg: the config.
        version: a version number or ``ModelVersion``.
        reason: why (required; kept in ``manual_reason``).
        user: who (required; kept in ``promoted_manually_by``).
        root: the project root of a local store (None = the repository).

    Returns:
        The decision (``manual=True``).
    """
    if not str(reason).strip() or not str(user).strip():
        raise ValueError("manual_promote needs a reason and a user: the override is an audit record")
    client, uri = _client(cfg, root)
    name, alias = cfg.registry.name, cfg.registry.champion_alias
    v = _version_str(version)
    with promotion_lock(cfg, client, uri):
        mv = _require_complete(client, name, v)
        champion = _alias_version(client, name, alias)
        before = str(champion.version) if champion is not None else None
        now = _now()
        _set_tags(
            client, name, v,
            {
                "promoted_manually_by": user,
                "manual_reason": reason,
                "manual_promoted_at": now,
                "promotion.decision": "champion (manual)",
                "promotion.at": now,
                "promotion.champion_before": before or "none",
            },
        )
        if before is not None and before != v:
            _set_tags(client, name, before, {"superseded_by": v, "superseded_at": now})
        client.set_registered_model_alias(name, alias, v)
        _verify_champion(client, name, alias, v)
    log.warning("%s version %s made @%s by hand by %s: %s", name, v, alias, user, reason)
    return PromotionDecision(
        name, v, "champion" if before != v else "already_champion", before, v,
        as_float(mv.tags.get(TAG_PRIMARY_VALUE)),
        as_float(champion.tags.get(TAG_PRIMARY_VALUE)) if champion is not None else None,
        (f"manual: {reason} ({user})",), manual=True,
    )


# --------------------------------------------------------------------------- reading


def _summary(mv: ModelVersion) -> dict[str, Any]:
    t = mv.tags
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
        "aliases": list(getattr(mv, "aliases", []) or []),
        "primary_metric": t.get(TAG_PRIMARY),
        "primary_metric_value": as_float(t.get(TAG_PRIMARY_VALUE)),
        "verdict": t.get("verdict"),
        "gates": {k.removeprefix("gate."): val for k, val in sorted(t.items()) if k.startswith("gate.") and k.count(".") == 1},
        "decision": t.get("promotion.decision"),
        "blocked": t.get("blocked") == "true",
        "blocked_reason": t.get("blocked_reason"),
        "promoted_manually_by": t.get("promoted_manually_by"),
        "manual_reason": t.get("manual_reason"),
        "lineage": {k: t.get(k) for k in ("git_commit", "data_hash", "config_hash", "base_model_hash")},
        TAG_PROTOCOL_HASH: t.get(TAG_PROTOCOL_HASH),
        TAG_PROTOCOL: _protocol_of(mv),
    }


@_reports_unreachable("read the registry", "Nothing was changed; run the command (or the flow) again once the server is back.")
def registry_status(cfg: TetherConfig, *, root: Path | None = None, recent: int = 5) -> dict[str, Any]:
    """Champion, challenger and the latest versions, with their metric, verdicts and blocked reasons.

    Args:
        cfg: the config.
        root: the project root of a local store (None = the repository).
        recent: how many of the newest complete versions to list.

    Returns:
        ``{"name", "primary_metric", "champion": {...} | None, "challenger": {...} | None,
        "recent": [{...}, ...]}``, each version as version, run, creation time, aliases,
        primary metric and value, verdict, per-gate verdicts, decision, blocked reason, manual
        override, lineage and evaluation protocol (``eval_protocol_hash``, ``eval_protocol``;
        None for a version registered without one).
    """
    client, _ = _client(cfg, root)
    name, rc = cfg.registry.name, cfg.registry
    out: dict[str, Any] = {"name": name, "primary_metric": cfg.gates.primary_metric}
    for role, alias in (("champion", rc.champion_alias), ("challenger", rc.challenger_alias)):
        mv = _alias_version(client, name, alias)
        out[role] = _summary(mv) if mv is not None else None
    try:
        versions = client.search_model_versions(f"name = '{name}'", max_results=max(recent * 4, 20), order_by=["version_number DESC"])
    except Exception:  # no such registered model yet
        versions = []
    complete = [mv for mv in versions if mv.tags.get(TAG_COMPLETE) == COMPLETE]
    out["recent"] = [_summary(mv) for mv in complete[:recent]]
    # search_model_versions leaves ModelVersion.aliases empty: take them from the registered model.
    if out["recent"]:
        held: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(name).aliases.items():
            held.setdefault(str(version), []).append(alias)
        for summary in out["recent"]:
            summary["aliases"] = sorted(held.get(summary["version"], []))
    return out


@_reports_unreachable("read the champion", "Nothing was changed; run the flow again once the server is back.")
def champion_for_gates(cfg: TetherConfig, *, root: Path | None = None) -> dict[str, Any] | None:
    """The current ``@champion`` as :func:`tether.eval.gating.build_gates` takes it.

    Args:
        cfg: the config (``gates.primary_metric``, ``registry``).
        root: the project root of a local store (None = the repository).

    Returns:
        None without a champion, else ``{<primary metric>: value, "name": "v<N>", "version": "<N>",
        "eval_protocol_hash": ..., "eval_protocol": {...}}`` (the protocol entries None for a
        version registered without one: its numbers are then never compared).
    """
    client, _ = _client(cfg, root)
    mv = _alias_version(client, cfg.registry.name, cfg.registry.champion_alias)
    if mv is None:
        return None
    summary = _summary(mv)
    return {
        cfg.gates.primary_metric: summary["primary_metric_value"],
        "name": f"v{summary['version']}",
        "version": summary["version"],
        TAG_PROTOCOL_HASH: summary[TAG_PROTOCOL_HASH],
        TAG_PROTOCOL: summary[TAG_PROTOCOL],
    }


def load_champion(cfg: TetherConfig, *, root: Path | None = None, model_config: Mapping[str, Any] | None = None):
    """``mlflow.pyfunc.load_model("models:/<name>@champion")`` on the configured store.

    Args:
        cfg: the config.
        root: the project root of a local store (None = the repository).
        model_config: load-time overrides (``base_model``, ``cache_dir``, ``device``, ``dtype``; see tether.serving).

    Returns:
        The loaded ``PyFuncModel``.
    """
    import mlflow

    _, uri = _client(cfg, root)
    before_tracking, before_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return mlflow.pyfunc.load_model(
            f"models:/{cfg.registry.name}@{cfg.registry.champion_alias}",
            model_config=dict(model_config) if model_config else None,
        )
    finally:
        mlflow.set_tracking_uri(before_tracking)
        mlflow.set_registry_uri(before_registry)
