"""The model registry: every candidate becomes a version; ``@champion`` moves by compare-and-set.

Versions and aliases of ``cfg.registry.name`` (default ``tether-recommender``) in the MLflow
model registry. Stages are deprecated in MLflow: state lives in aliases and tags only.

Modules, one concern each:

:mod:`~tether.registry.store`
    the client, the tag names of a version, errors, small reads and writes.
:mod:`~tether.registry.locks`
    the promotion lock every registry write runs under: an exclusive file lock beside a local
    store, a lease held as a registered model on a remote server (:func:`promotion_lock`).
:mod:`~tether.registry.packaging`
    the self-contained served model logged into the candidate's run (models-from-code pyfunc,
    the ``tether`` code, pip requirements derived from pyproject.toml, the base-model record).
:mod:`~tether.registry.verify`
    what is registered is checked: the stored adapter's bytes, a complete record, the champion
    read back after a move.
:mod:`~tether.registry.register`
    :func:`register_candidate`: one complete version per idempotency key, verdict tags.
:mod:`~tether.registry.policy`
    the promotion policy as a pure function, :func:`decide`.
:mod:`~tether.registry.promotion`
    :func:`promote` and :func:`manual_promote`: the lock and the MLflow writes around the policy.
:mod:`~tether.registry.status`
    :func:`registry_status`, :func:`champion_for_gates`, :func:`load_champion`.

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

Failure modes
    A tracking server that does not answer raises :class:`tether.tracking.TrackingUnavailableError`
    (one line: which server, password masked, and what state the registry is in) instead of
    MLflow's HTTP retry chain, so a Prefect retry log and the flow's final state stay readable.
    Everything stored (description, tags, ``tether_model.json``, ``gate_report.md``) passes
    through :func:`tether.secrets.redact`.
"""

from tether.registry.locks import promotion_lock
from tether.registry.packaging import MODEL_NAME_IN_RUN
from tether.registry.policy import GateSummary, PolicyDecision, VersionFacts, decide
from tether.registry.promotion import PromotionDecision, manual_promote, promote
from tether.registry.register import register_candidate, verdict_tags
from tether.registry.status import champion_for_gates, load_champion, registry_status
from tether.registry.store import (
    COMPLETE, MAX_TEXT, TAG_COMPLETE, TAG_KEY, TAG_PRIMARY, TAG_PRIMARY_VALUE, TAG_PROTOCOL, TAG_PROTOCOL_HASH,
    RegistryConflictError, RegistryError,
)

__all__ = [
    "COMPLETE", "MAX_TEXT", "MODEL_NAME_IN_RUN", "TAG_COMPLETE", "TAG_KEY", "TAG_PRIMARY", "TAG_PRIMARY_VALUE",
    "TAG_PROTOCOL", "TAG_PROTOCOL_HASH", "GateSummary", "PolicyDecision", "PromotionDecision", "RegistryConflictError",
    "RegistryError", "VersionFacts", "champion_for_gates", "decide", "load_champion", "manual_promote", "promote",
    "promotion_lock", "register_candidate", "registry_status", "verdict_tags",
]
