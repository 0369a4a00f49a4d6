"""Registration: every candidate becomes a complete version of ``registry.name``, once per idempotency key.

:func:`register_candidate` logs the served model into the candidate's run
(:func:`tether.registry.packaging.log_served_model`, which checks the stored adapter's bytes),
then creates the version *with* its description (the gate report Markdown) and every tag
(verdicts, lineage, primary metric, evaluation protocol, idempotency key) in one call, and marks
it complete (``tether.registration=complete``) last. Any failure after the version exists
deletes it; an incomplete version found later (a crashed process) is deleted on the next
registration with its key, is never promoted and is skipped by
:func:`tether.registry.registry_status`. Re-calling with the same ``idempotency_key`` (e.g. the
Prefect flow-run id) returns the existing version and registers nothing. Everything stored
passes through :func:`tether.secrets.redact`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.config import TetherConfig
from tether.eval.gates import GateResult, summarize
from tether.eval.verdicts import check_tag, gate_tag
from tether.registry.locks import promotion_lock
from tether.registry.packaging import log_served_model
from tether.registry.store import (
    COMPLETE, MAX_TEXT, TAG_COMPLETE, TAG_KEY, TAG_PRIMARY, TAG_PRIMARY_VALUE, TAG_PROTOCOL, TAG_PROTOCOL_HASH,
    RegistryError, client as store_client, now, reports_unreachable, text,
)
from tether.registry.verify import dir_digest
from tether.secrets import redact
from tether.tracking import lineage_tags, setup_tracking

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from tether.model.base import ResolvedModel

log = logging.getLogger(__name__)


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
    """The verdict tags of a version.

    Args:
        gate_results: every gate's result.

    Returns:
        ``gate.<gate>.<metric>`` per check (:func:`tether.eval.verdicts.check_tag`), ``gate.<gate>``
        per gate (:func:`tether.eval.verdicts.gate_tag`), ``verdict`` (PROMOTE/BLOCKED) and
        ``gates.blocking_failures`` (``gate:metric, ...`` or ``none``).
    """
    tags: dict[str, str] = {}
    by_gate: dict[str, list[GateResult]] = {}
    for g in gate_results:
        by_gate.setdefault(g.gate, []).append(g)
        tags[f"gate.{g.gate}.{g.metric}"] = check_tag(g)
    for gate, results in by_gate.items():
        tags[f"gate.{gate}"] = gate_tag(results)
    passed, failures = summarize(gate_results)
    tags["verdict"] = "PROMOTE" if passed else "BLOCKED"
    tags["gates.blocking_failures"] = text(", ".join(f"{g.gate}:{g.metric}" for g in failures) or "none")
    return tags


def _protocol_tags(eval_protocol: Mapping[str, Any] | None) -> dict[str, str]:
    """``eval_protocol_hash`` and ``eval_protocol`` (sorted JSON) for a version; the settings only
    when they fit a tag value (a cut JSON could not be read back), the hash always."""
    if eval_protocol is None:
        return {}
    from tether.eval.gating import protocol_hash

    tags = {TAG_PROTOCOL_HASH: protocol_hash(eval_protocol)}
    settings = json.dumps(dict(eval_protocol), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    if len(settings) <= MAX_TEXT:
        tags[TAG_PROTOCOL] = settings
    else:
        log.warning("the evaluation protocol (%d characters) does not fit a tag: only its hash is recorded", len(settings))
    return tags


def _find_by_key(client: MlflowClient, name: str, key: str) -> list[ModelVersion]:
    found = client.search_model_versions(f"name = '{name}' and tags.{TAG_KEY} = '{key}'")
    return sorted((mv for mv in found if mv.tags.get(TAG_KEY) == key), key=lambda mv: int(mv.version))


def _delete_version(client: MlflowClient, name: str, version: str) -> None:
    """Delete a half-made version, its idempotency tag first (MLflow soft-deletes versions and
    keeps their tags: a retry must never find the dead version by its key)."""
    with contextlib.suppress(Exception):
        client.delete_model_version_tag(name, version, TAG_KEY)
    client.delete_model_version(name, version)


def _description(gate_report_md: str) -> str:
    if len(gate_report_md) <= MAX_TEXT:
        return gate_report_md
    note = "\n\n[... cut to fit the registry; the full report is the model artifact gate_report.md]"
    return gate_report_md[: MAX_TEXT - len(note)] + note


def _finalize(client: MlflowClient, name: str, version: str) -> None:
    """The last write of a registration: from here on the version may be promoted."""
    client.set_model_version_tag(name, version, TAG_COMPLETE, COMPLETE)


@reports_unreachable(
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
    from mlflow.exceptions import MlflowException

    from tether.serving import check_adapter_dir
    from tether.serving_package import serving_requirements

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
    client, _ = store_client(cfg, root)
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

        adapter_digest = dir_digest(adapter_dir)
        logged = log_served_model(
            cfg, root, client, run_id=run_id, adapter_dir=adapter_dir, adapter_digest=adapter_digest,
            resolved_base=resolved_base, gate_report_md=gate_report_md, requirements=requirements,
            base_model_delivery=base_model_delivery,
        )
        tags.update(verdict_tags(gate_results))
        tags.update(
            {
                TAG_KEY: key,
                TAG_PRIMARY: primary,
                TAG_PRIMARY_VALUE: repr(primary_value),
                "adapter_sha256": adapter_digest,
                "base_model": resolved_base.name,
                "base_model_delivery": logged.base_model_delivery,
                "registered_at": now(),
            }
        )
        tags.update({f"metric.{k}": repr(v) for k, v in sorted(cand.items()) if len(k) < 200})
        with contextlib.suppress(MlflowException):
            client.create_registered_model(
                name, description="Tether recommender: a LoRA adapter per version (tether.registry)."
            )
        mv = client.create_model_version(
            name,
            source=logged.model_uri,
            run_id=run_id,
            tags={k: text(redact(str(v))) for k, v in tags.items()},
            description=_description(redact(gate_report_md)),
            model_id=logged.model_id,
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
