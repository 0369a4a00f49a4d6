"""The base model's own chat answers, and the per-token NLL of any chat continuation.

Self-samples are what the base model says, through its chat template, to general prompts
(``tether/resources/self_sample_prompts.jsonl``, original text): ancestral sampling at
temperature 1 with no top-k / top-p truncation and a fixed seed, so the sampled text is a draw
from the base's own distribution. Then, per token,

    mean NLL under the candidate - mean NLL under the base  ~=  KL(base || candidate),

an estimate that style cannot flatter: the text is the base's, not anyone's prose, and it is in
chat mode, where a recommender fine-tune changes the model most. The golden-prompt KL check
scores the base's greedy answers to the golden prompts the same way.

The prompts file assigns every prompt to one *split*: ``gate`` (the drift panel the gate reads),
``selection`` (guarded selection's panel) or ``train`` (chat rows for distillation during
training), so the three never share a prompt. Samples are cached on disk under
``<model cache>/self-samples/`` by a key of the base model's weights hash, the prompts, the
sampling settings, the device and the dtype: they are drawn once per base model.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SELF_SAMPLE_PROMPTS_PATH = Path(__file__).resolve().parent.parent / "resources" / "self_sample_prompts.jsonl"
SPLITS = ("gate", "selection", "train")
CACHE_SUBDIR = "self-samples"
Split = Literal["gate", "selection", "train"]


@dataclass(frozen=True)
class SampleRow:
    """One chat continuation as token ids: the rendered prompt, then the tokens to score."""

    id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt_ids": self.prompt_ids, "completion_ids": self.completion_ids, "text": self.text}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SampleRow:
        return cls(str(d["id"]), [int(i) for i in d["prompt_ids"]], [int(i) for i in d["completion_ids"]],
                   str(d.get("text", "")))


def load_prompts(split: Split, path: str | Path | None = None) -> list[tuple[str, str]]:
    """``(id, prompt)`` of one split of the self-sample prompts file, in file order.

    Raises:
        ValueError: naming the file and line, on bad JSON, a missing key, an unknown split or a
            repeated id; or when the split has no prompt.
    """
    path = Path(path) if path is not None else SELF_SAMPLE_PROMPTS_PATH
    out, seen = [], set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pid, row_split, prompt = str(row["id"]), row["split"], str(row["prompt"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}, line {lineno}: expected {{id, split, prompt}} ({exc})") from None
        if row_split not in SPLITS or not prompt.strip() or pid in seen:
            raise ValueError(f"{path}, line {lineno}: split must be one of {SPLITS}, prompt non-empty, id unique")
        seen.add(pid)
        if row_split == split:
            out.append((pid, prompt))
    if not out:
        raise ValueError(f"{path}: no prompt in split {split!r}")
    return out


def _sampling_config(model: Any, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> Any:
    from tether.eval.generation import _greedy_config

    cfg = copy.deepcopy(_greedy_config(model, tokenizer, max_new_tokens, 1.0, 0))
    # Pure ancestral sampling: the text is a draw from the model's own distribution, which is
    # what makes NLL(candidate) - NLL(base) an estimate of KL(base || candidate).
    cfg.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0,
               no_repeat_ngram_size=0)
    return cfg


def sample(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[tuple[str, str]],
    n_samples: int,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 16,
) -> list[SampleRow]:
    """Draw ``n_samples`` chat answers from ``model`` (prompt ``i % len(prompts)`` for sample ``i``).

    Each batch reseeds torch's generator with ``seed + batch index`` (inside a forked RNG state,
    so the caller's stream is untouched). A completion ends with the end-of-turn token when the
    model produced it within ``max_new_tokens``.
    """
    import torch

    from tether.eval.generation import _input_device, _padding_side
    from tether.eval.scoring import encode_prompt, eval_mode

    gen_cfg = _sampling_config(model, tokenizer, max_new_tokens)
    eos = set(gen_cfg.eos_token_id or [])
    jobs = [(f"{prompts[i % len(prompts)][0]}-{i // len(prompts)}", prompts[i % len(prompts)][1]) for i in range(n_samples)]
    encoded = [encode_prompt(tokenizer, [{"role": "user", "content": p}]) for _, p in jobs]
    device = _input_device(model)
    rows: list[SampleRow] = []
    with _padding_side(tokenizer, "left"), eval_mode(model), torch.inference_mode(), torch.random.fork_rng(devices=[]):
        for b, start in enumerate(range(0, len(jobs), batch_size)):
            torch.manual_seed(seed + b)
            batch = encoded[start : start + batch_size]
            padded = tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
            out = model.generate(input_ids=padded["input_ids"].to(device),
                                 attention_mask=padded["attention_mask"].to(device), generation_config=gen_cfg)
            for j, new in enumerate(out[:, padded["input_ids"].shape[1] :].tolist()):
                cut = next((k + 1 for k, t in enumerate(new) if t in eos), len(new))
                completion = new[:cut] or new[:1]
                rows.append(SampleRow(jobs[start + j][0], list(batch[j]), completion,
                                      tokenizer.decode(completion, skip_special_tokens=True).strip()))
    return rows


def cache_key(base_hash: str, prompts: Sequence[tuple[str, str]], n_samples: int, max_new_tokens: int, seed: int,
              device: str, dtype: str) -> str:
    """What a set of self-samples depends on: base weights, prompts, sampling settings, device, dtype."""
    blob = json.dumps({"base": base_hash, "prompts": list(prompts), "n": n_samples, "max_new_tokens": max_new_tokens,
                       "seed": seed, "device": str(device).split(":")[0], "dtype": str(dtype).removeprefix("torch."),
                       "sampler": "ancestral-t1"}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cached_samples(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    split: Split,
    n_samples: int,
    max_new_tokens: int,
    seed: int,
    base_hash: str,
    cache_dir: Path,
    device: str = "cpu",
    dtype: str = "float32",
    prompts_file: str | Path | None = None,
) -> tuple[list[SampleRow], bool]:
    """Self-samples of the base model for one split, from ``cache_dir`` or drawn (and cached).

    Call it with the base model (or the peft model inside ``disable_adapter()``).

    Returns:
        ``(rows, cache_hit)``.
    """
    from tether.io import atomic_write_text

    prompts = load_prompts(split, prompts_file)
    key = cache_key(base_hash, prompts, n_samples, max_new_tokens, seed, device, dtype)
    path = Path(cache_dir) / CACHE_SUBDIR / f"{split}-{key[:24]}.json"
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") == key:
            logger.info("self-samples (%s): %d cached in %s", split, len(data["rows"]), path)
            return [SampleRow.from_dict(r) for r in data["rows"]], True
    rows = sample(model, tokenizer, prompts, n_samples, max_new_tokens, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, "rows": [r.to_dict() for r in rows]}))
    except OSError as exc:  # a read-only cache must not fail the run
        logger.warning("could not cache self-samples in %s: %s", path, exc)
    logger.info("self-samples (%s): drew %d answers of up to %d tokens from the base model", split, len(rows),
                max_new_tokens)
    return rows, False


def sequence_nll(model: Any, rows: Sequence[SampleRow], batch_size: int = 8) -> list[tuple[float, int]]:
    """``(summed NLL in nats, tokens)`` of each row's completion tokens given its prompt.

    Rows are batched by length with left padding and explicit position ids (a padded row is
    computed exactly like the unpadded one); only positions that predict a completion token go
    through the output layer. Works on a plain, a peft and an adapter-disabled peft model.
    """
    import torch

    from tether.eval.scoring import eval_mode
    from tether.model.train import IGNORE_INDEX, CompletionCollator, completion_token_nll

    if not rows:
        return []
    pad = 0
    collate = CompletionCollator(pad)
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt_ids) + len(rows[i].completion_ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feats = [{"input_ids": rows[i].prompt_ids + rows[i].completion_ids,
                      "labels": [IGNORE_INDEX] * len(rows[i].prompt_ids) + rows[i].completion_ids} for i in idx]
            batch = {k: v.to(device) for k, v in collate(feats).items()}
            sums, counts = completion_token_nll(model, batch)
            for i, s, n in zip(idx, sums.tolist(), counts.tolist()):
                out[i] = (float(s), int(n))
    return out


def golden_rows(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Any], answer_ids: Sequence[Sequence[int]]) -> list[SampleRow]:
    """The base's greedy golden-prompt answers as rows to score (prompt rendered like generation renders it)."""
    from tether.eval.scoring import encode_prompt

    rows = []
    for p, ids in zip(prompts, answer_ids):
        if ids:
            rows.append(SampleRow(p.id, encode_prompt(tokenizer, p.messages), list(ids)))
    return rows
