"""What is read off a set of generations: the health metrics the gate checks, and report rows."""

from __future__ import annotations

from collections.abc import Sequence

from tether.chat import Messages
from tether.eval import metrics
from tether.eval.generation.golden import GoldenPrompt

def generation_health(texts: Sequence[str], base_texts: Sequence[str] | None = None) -> dict[str, float]:
    """Generation-health metrics of a set of generations (the keys ``generation_health_gate`` checks).

    Args:
        texts: the generations judged (e.g. the candidate's on the golden prompts).
        base_texts: the base model's generations for the same prompts, in the same order;
            when given, ``length_ratio`` (candidate tokens / base tokens) is added.

    Returns:
        ``n``, ``distinct_1``, ``distinct_2``, ``repeated_4gram_rate``, ``empty_rate``,
        ``mean_length`` (whitespace tokens per generation, as in the metrics), and
        ``length_ratio`` when ``base_texts`` is given (NaN if the base produced no token).

    Raises:
        ValueError: if ``texts`` is empty or ``base_texts`` has another length.
    """
    if len(texts) == 0:
        raise ValueError("generation_health: no generations")
    out: dict[str, float] = {
        "n": len(texts),
        "distinct_1": metrics.distinct_n(texts, 1),
        "distinct_2": metrics.distinct_n(texts, 2),
        "repeated_4gram_rate": metrics.repeated_ngram_rate(texts, 4),
        "empty_rate": metrics.empty_rate(texts),
        "mean_length": sum(len(t.split()) for t in texts) / len(texts),
    }
    if base_texts is not None:
        out["length_ratio"] = metrics.length_ratio(texts, base_texts)
    return out


def side_by_side(
    prompts: Sequence[GoldenPrompt | Messages | str],
    base_texts: Sequence[str],
    cand_texts: Sequence[str],
) -> list[dict[str, str]]:
    """Rows pairing each prompt with the base model's and the candidate's generation.

    Args:
        prompts: golden prompts, chat conversations (the last user message is shown) or strings.
        base_texts: base generations, aligned with ``prompts``.
        cand_texts: candidate generations, aligned with ``prompts``.

    Returns:
        One ``{"id", "category", "prompt", "base", "candidate"}`` dict per prompt (``id`` is the
        golden id or the 1-based position, ``category`` ``""`` when unknown).

    Raises:
        ValueError: if the three sequences differ in length.
    """
    if not (len(prompts) == len(base_texts) == len(cand_texts)):
        raise ValueError(
            f"side_by_side: {len(prompts)} prompts, {len(base_texts)} base and {len(cand_texts)} candidate texts"
        )
    rows = []
    for n, (p, b, c) in enumerate(zip(prompts, base_texts, cand_texts), start=1):
        if isinstance(p, GoldenPrompt):
            pid, category, text = p.id, p.category, p.prompt
        elif isinstance(p, str):
            pid, category, text = str(n), "", p
        else:
            users = [m["content"] for m in p if m.get("role") == "user"]
            pid, category, text = str(n), "", users[-1] if users else (p[-1]["content"] if p else "")
        rows.append({"id": pid, "category": category, "prompt": text, "base": b, "candidate": c})
    return rows
