"""``tether model fetch``: materialize the base model."""

from __future__ import annotations

from tether.cli.app import ParamsOpt, ProfileOpt, _fail, _setup
from tether.cli.show import print_summary


def model_fetch(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Materialize the base model: convert the embedded GGUF once into the model cache.

    Later runs load the cached safetensors directory (seconds instead of ~30 s).
    """
    from tether.model.base import resolve_base_model

    cfg, _ = _setup(params, profile)
    try:
        resolved = resolve_base_model(cfg.model)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    print_summary("model", resolved)
