"""Forgetting protection rows: general text (and the base's own chat answers) mixed into training.

Two kinds of rows join the recommendation examples, ``train.replay.ratio`` of all rows:

* **text chunks** of the replay corpus (``train.replay.corpus_dir``), ``chunk_tokens`` long;
* **chat rows** (``train.replay.chat_samples``, distill mode only): the base model's own sampled
  answers to general prompts of the ``train`` split of the self-sample prompts, which neither
  the gate nor guarded selection reads (:mod:`tether.eval.selfsamples`).

``train.replay.mode`` says how they are learned. ``tokens``: cross-entropy on their own tokens
(language modelling; it also teaches the replay text's style). ``distill``: every token is
learned towards the base model's next-token distribution (Learning without Forgetting, the loss
in :mod:`tether.model.loss`), so the rows hold the model where the base was, in raw text and in
chat mode, without teaching it any text. A row is marked by ``distill_mask`` (1 = learn this
token by KL); with ``distill_prompts`` the recommendation prompts' own tokens are distilled too.

Replay text must never overlap what the drift gate measures: :func:`check_replay_disjoint` and
:func:`check_replay_vs_panel` refuse it.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.model.errors import TrainDataError
from tether.model.loss import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tether.eval.selfsamples import SampleRow
    from tether.eval.sources import TextSource

log = logging.getLogger(__name__)

Row = dict[str, list[int]]
_WS = re.compile(r"\s+")


def _paragraphs(text: str, min_chars: int = 40) -> set[str]:
    """Whitespace-normalised paragraphs (blank-line separated), skipping short ones such as headings."""
    paras = (_WS.sub(" ", p).strip() for p in re.split(r"\n\s*\n", text))
    return {p for p in paras if len(p) >= min_chars}


def _text_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).rglob("*.txt") if p.is_file())


def _shared_paragraph(replay_dir: Path, documents: Iterable[tuple[str, str]]) -> tuple[Path, str, str] | None:
    """The first replay paragraph that also occurs in ``documents``: ``(replay file, document, paragraph)``."""
    seen: dict[str, str] = {}
    for name, text in documents:
        for para in _paragraphs(text):
            seen.setdefault(para, name)
    for rp in _text_files(replay_dir):
        for para in _paragraphs(rp.read_text(encoding="utf-8", errors="replace")):
            if para in seen:
                return rp, seen[para], para
    return None


def check_replay_disjoint(replay_dir: Path, heldout_dir: Path) -> None:
    """Refuse a replay corpus that overlaps a folder the drift gate measures.

    Training on the text perplexity is measured on would hide exactly the damage the drift gate
    exists to catch. Overlap means: the same directory (or one inside the other), the same file
    (by path or identical content), or any identical paragraph.

    Raises:
        TrainDataError: naming the overlapping files / paragraph.
    """
    replay_dir, heldout_dir = Path(replay_dir).resolve(), Path(heldout_dir).resolve()
    if not heldout_dir.exists():
        return
    if replay_dir == heldout_dir or heldout_dir in replay_dir.parents or replay_dir in heldout_dir.parents:
        raise TrainDataError(
            f"replay corpus {replay_dir} overlaps the held-out corpus {heldout_dir}: replay text must never "
            "include the text perplexity is measured on; point train.replay.corpus_dir at a separate folder"
        )
    held_files = _text_files(heldout_dir) if heldout_dir.is_dir() else [heldout_dir]
    held_text = {p: p.read_text(encoding="utf-8", errors="replace") for p in held_files}
    held_by_content = {text.strip(): p for p, text in held_text.items() if text.strip()}
    for rp in _text_files(replay_dir):
        text = rp.read_text(encoding="utf-8", errors="replace")
        if rp.resolve() in {h.resolve() for h in held_files} or text.strip() in held_by_content:
            other = held_by_content.get(text.strip(), rp)
            raise TrainDataError(
                f"replay file {rp} is the same file as held-out {other}: remove it from the replay corpus "
                "(held-out text is for perplexity only, never for training)"
            )
    shared = _shared_paragraph(replay_dir, ((str(p), t) for p, t in held_text.items()))
    if shared:
        rp, other, para = shared
        raise TrainDataError(
            f"replay file {rp} shares a paragraph with held-out file {other} "
            f"({para[:80]!r}...): remove it from one of them (held-out text is for perplexity only)"
        )


def check_replay_vs_panel(replay_dir: Path, sources: Sequence[TextSource], folders: Sequence[Path] = ()) -> None:
    """Refuse a replay corpus that shares a folder or a paragraph with any drift-panel source (either half).

    Args:
        replay_dir: ``train.replay.corpus_dir``.
        sources: the panel's text sources, as loaded (:func:`tether.eval.sources.load_text_source`).
        folders: the panel's folder and file sources, checked like :func:`check_replay_disjoint`.

    Raises:
        TrainDataError: naming the source, the files and the paragraph.
    """
    for folder in folders:
        check_replay_disjoint(replay_dir, folder)
    for src in sources:
        shared = _shared_paragraph(replay_dir, ((d.name, d.text) for d in (*src.gate, *src.selection)))
        if shared:
            rp, doc, para = shared
            raise TrainDataError(
                f"replay file {rp} shares a paragraph with drift-panel source {src.name!r} ({doc}: {para[:80]!r}...): "
                "the gate would measure text the model was trained on; remove it from train.replay.corpus_dir"
            )


def _read_replay_text(path: Path) -> str:
    """A replay file's text; bytes that are not UTF-8 are refused, never silently replaced."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TrainDataError(
            f"replay file {path}: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} (line {line}) is not "
            "valid UTF-8: re-save the file as UTF-8"
        ) from None


def build_replay_chunks(
    tokenizer: PreTrainedTokenizerBase, corpus_dir: Path, chunk_tokens: int, *, distill: bool = False
) -> list[Row]:
    """Cut the ``*.txt`` files of ``corpus_dir`` into chunks of ``chunk_tokens`` tokens (every token learned).

    Each file is tokenized as a whole and cut into consecutive windows; a tail shorter than a
    quarter chunk is dropped (too little context to be worth a row). ``distill`` marks every
    token for distillation (``distill_mask``) instead of cross-entropy.
    """
    if not Path(corpus_dir).is_dir():
        raise TrainDataError(
            f"train.replay.corpus_dir {corpus_dir} does not exist: point it at a folder of UTF-8 *.txt files "
            "or set train.replay.ratio: 0"
        )
    files = _text_files(corpus_dir)
    if not files:
        raise TrainDataError(
            f"train.replay.ratio > 0 but {corpus_dir} has no *.txt files: add general text there or set ratio: 0"
        )
    chunks = []
    for path in files:
        ids = tokenizer(_read_replay_text(path), add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), chunk_tokens):
            piece = ids[start : start + chunk_tokens]
            if len(piece) >= max(2, chunk_tokens // 4):
                row = {"input_ids": piece, "labels": list(piece)}
                if distill:
                    row["distill_mask"] = [1] * len(piece)
                chunks.append(row)
    if not chunks:
        raise TrainDataError(f"{corpus_dir}: the replay text is shorter than a quarter of chunk_tokens={chunk_tokens}")
    return chunks


def chat_rows(samples: Sequence[SampleRow], max_length: int) -> list[Row]:
    """The base's chat answers as distilled rows: prompt and answer tokens all learned by KL."""
    rows = []
    for s in samples:
        ids = (s.prompt_ids + s.completion_ids)[-max_length:]
        rows.append({"input_ids": ids, "labels": list(ids), "distill_mask": [1] * len(ids)})
    return rows


def distill_prompt_tokens(rows: Sequence[Row]) -> list[Row]:
    """Recommendation rows with their prompt tokens distilled too (``train.replay.distill_prompts``)."""
    out = []
    for r in rows:
        labels, ids = r["labels"], r["input_ids"]
        mask = [int(label == IGNORE_INDEX) for label in labels]
        out.append({"input_ids": ids, "labels": [t if m else label for t, m, label in zip(ids, mask, labels)],
                    "distill_mask": mask})
    return out


def mix_replay(task: list[Row], replay: list[Row], ratio: float, seed: int) -> list[Row]:
    """Add replay rows so they make up ``ratio`` of the returned rows (rounded to whole rows).

    When there are fewer replay rows than needed they are reused as evenly as possible (each
    appears ``floor`` or ``ceil`` times); the result is shuffled with ``seed``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"replay ratio must be in [0, 1), got {ratio}")
    n_replay = round(len(task) * ratio / (1.0 - ratio)) if ratio > 0 else 0
    if n_replay == 0 or not replay:
        return list(task)
    rng = random.Random(seed)
    order = list(range(len(replay)))
    picked: list[int] = []
    while len(picked) < n_replay:
        rng.shuffle(order)
        picked += order[: n_replay - len(picked)]
    rows = list(task) + [replay[i] for i in picked]
    rng.shuffle(rows)
    return rows


def is_replay(row: dict[str, Any]) -> bool:
    """A replay row (text chunk or chat row) rather than a recommendation example."""
    if "distill_mask" in row:  # distilled: a replay row distils every token, a recommendation row its prompt only
        return all(row["distill_mask"])
    return row["labels"][0] != IGNORE_INDEX
