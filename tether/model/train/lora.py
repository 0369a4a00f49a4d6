"""LoRA adapters: which layers, which modules, a fresh peft model, and saving the adapter."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tether.config import TrainConfig

ADAPTER_SUBDIR = "adapter"  # <train.output_dir>/adapter: the adapter the stage hands on


def resolve_layers(spec: list[int] | str | None, num_layers: int) -> list[int] | None:
    """Layer indices for LoRA: ``"upper_half"`` -> the upper half, ``"all"``/None -> None (every layer).

    Raises:
        ValueError: an index outside ``0 .. num_layers - 1``.
    """
    if spec is None or spec == "all":
        return None
    if spec == "upper_half":
        return list(range(num_layers // 2, num_layers))
    bad = [i for i in spec if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"train.layers_to_transform: layers {bad} do not exist; the model has {num_layers} (0..{num_layers - 1})")
    return sorted(spec)


def build_lora_model(model: "PreTrainedModel", train_cfg: "TrainConfig", seed: int | None = None):
    """Wrap ``model`` with fresh LoRA adapters as configured; only LoRA weights require grad.

    Args:
        model: a Hugging Face causal LM.
        train_cfg: the ``train`` config section.
        seed: seeds the adapter initialisation (None: leave the RNG as it is).

    Returns:
        The ``peft`` model.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import set_seed

    num_layers = model.config.num_hidden_layers
    layers = resolve_layers(train_cfg.layers_to_transform, num_layers)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in train_cfg.target_modules if m not in present]
    if missing:
        raise ValueError(
            f"train.target_modules {missing} are not modules of {type(model).__name__}; "
            f"linear layers it has include: {sorted(n for n in present if n.endswith('proj'))[:12]}"
        )
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=train_cfg.lora_rank,
        lora_alpha=train_cfg.lora_alpha,
        lora_dropout=train_cfg.lora_dropout,
        target_modules=list(train_cfg.target_modules),
        layers_to_transform=layers,
        bias="none",
    )
    if seed is not None:
        set_seed(seed)
    peft_model = get_peft_model(model, lora)
    return peft_model


def save_adapter(peft_model: Any, tokenizer: "PreTrainedTokenizerBase", adapter_dir: Path) -> Path:
    """Save the adapter (``adapter_model.safetensors`` + ``adapter_config.json``) and the tokenizer."""
    adapter_dir = Path(adapter_dir)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    peft_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(adapter_dir))
    if not (adapter_dir / "adapter_model.safetensors").exists():
        raise RuntimeError(f"{adapter_dir}: peft did not write adapter_model.safetensors")
    return adapter_dir

