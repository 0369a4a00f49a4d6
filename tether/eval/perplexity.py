"""Perplexity on a general-text reference corpus: the number the drift gate compares.

The method is Hugging Face's sliding window ("Perplexity of fixed-length models"), done
exactly and per document:

* Each document is tokenized on its own with ``tokenizer(text, add_special_tokens=False)``:
  **no BOS is added** by default (SmolLM2 has none; pass ``add_bos=True`` for a model that
  was trained with one). Documents are never concatenated, so no token is predicted from
  another document's text. The same function tokenizes for base and candidate, so both
  are scored on identical token ids.
* Windows of ``window`` tokens start every ``stride`` tokens. The first window scores all
  its tokens except the document's first one, which has no context to be predicted from
  (so a document of ``n`` tokens contributes ``n - 1`` scored tokens). Each later window
  scores only the tokens the previous window did not reach, so every token is scored
  exactly once, with at least ``window - stride`` tokens of context (fewer only at the
  start of the document). ``stride == window`` is plain non-overlapping chunking, where
  the first token of every chunk goes unscored.
* Perplexity = exp(summed token NLL / scored tokens) over the whole corpus (a token-weighted
  mean, not a mean of per-document perplexities); ``per_doc`` holds each document's sum and
  count so the total can be re-derived or broken down.

For throughput, windows of equal length (and equal scored span) from all documents are
batched together without padding, and only the positions that predict scored tokens go
through the vocabulary projection where the model supports ``logits_to_keep``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.data.errors import DataError
from tether.eval.scoring import eval_mode
from tether.model.device import base_of as _base_of
from tether.model.device import input_device as _input_device
from tether.model.device import supports_logits_to_keep

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Files a corpus directory contributes; anything else (README, .DS_Store) is ignored.
CORPUS_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity over a corpus.

    Attributes:
        ppl: exp(nll_sum / n_tokens).
        nll_sum: summed negative log-likelihood (nats) of every scored token.
        n_tokens: scored tokens (each document's first token is never scored).
        per_doc: ``(nll_sum, n_tokens)`` per document, in input order.
        window: the window length used.
        stride: the stride used.
    """

    ppl: float
    nll_sum: float
    n_tokens: int
    per_doc: list[tuple[float, int]] = field(default_factory=list)
    window: int = 0
    stride: int = 0

    @property
    def mean_nll(self) -> float:
        """Mean NLL per scored token (nats); ``ln(ppl)``."""
        return self.nll_sum / self.n_tokens


@dataclass(frozen=True)
class _Window:
    doc: int
    begin: int  # absolute token index of the window's first token
    end: int  # absolute index one past its last token
    first_scored: int  # index within the window of the first scored token (>= 1)


def plan_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The sliding windows over one document of ``n_tokens`` tokens.

    Args:
        n_tokens: the document's length in tokens.
        window: tokens per window.
        stride: tokens between window starts (``1 <= stride <= window``).

    Returns:
        ``(begin, end, first_scored)`` per window: the window is ``ids[begin:end]`` and it
        scores the tokens at window positions ``first_scored .. end - begin - 1``. Every
        token except the first is scored by exactly one window.
    """
    out = []
    prev_end = 0
    if n_tokens < 2:
        return out
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        first = max(prev_end, begin + 1) - begin
        if first < end - begin:
            out.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return out


def tokenize_corpus(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, add_bos: bool = False
) -> list[list[int]]:
    """Token ids of each document, exactly as :func:`perplexity` scores them.

    Args:
        tokenizer: the model's tokenizer.
        texts: one string per document.
        add_bos: prepend ``tokenizer.bos_token_id`` to every document (then its first real
            token is scored too).

    Returns:
        One id list per document.
    """
    bos: list[int] = []
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError(f"add_bos=True but tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no BOS token")
        bos = [int(tokenizer.bos_token_id)]
    # verbose=False: documents longer than model_max_length are fine here, they are windowed.
    return [bos + list(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]) for t in texts]


def _texts(texts: Sequence[str | tuple[str, str]]) -> list[str]:
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, tuple) and len(t) == 2:
            t = t[1]
        if not isinstance(t, str):
            raise TypeError(f"document {i}: expected a string or a (name, text) pair, got {type(t).__name__}")
        out.append(t)
    return out


def perplexity(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str | tuple[str, str]],
    window: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    *,
    add_bos: bool = False,
    progress: bool = False,
) -> PerplexityResult:
    """Sliding-window perplexity of ``model`` on ``texts`` (see the module docstring).

    Args:
        model: a causal LM (transformers or peft; inside ``disable_adapter()`` for the base);
            put in eval mode for the call.
        tokenizer: its tokenizer; the same one must be used for base and candidate.
        texts: documents, as strings or ``(name, text)`` pairs from :func:`load_corpus`.
        window: tokens per forward pass (at most the model's ``max_position_embeddings``).
        stride: tokens between window starts; each scored token gets at least
            ``window - stride`` tokens of context. ``stride == window``: plain chunking.
        batch_size: windows per forward pass (windows of equal length are batched).
        add_bos: prepend the BOS token to each document (off: SmolLM2 has no BOS).
        progress: show a tqdm progress bar over windows.

    Returns:
        The corpus perplexity with its NLL sum, token count and per-document breakdown.

    Raises:
        ValueError: bad window/stride, or no document has two tokens to score.
    """
    docs = tokenize_corpus(tokenizer, _texts(texts), add_bos=add_bos)
    return perplexity_of_ids(model, docs, window=window, stride=stride, batch_size=batch_size, progress=progress)


def perplexity_of_ids(
    model: Any,
    docs: Sequence[Sequence[int]],
    window: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    *,
    progress: bool = False,
) -> PerplexityResult:
    """:func:`perplexity` on documents that are already token ids (e.g. capped to a token budget).

    Raises:
        ValueError: bad window/stride, or no document has two tokens to score.
    """
    import torch
    import torch.nn.functional as F
    from tether.console import progress_bar  # a bar on a terminal, else a summary line now and then

    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and window ({window}), got {stride}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = getattr(_base_of(model), "config", None)
    max_positions = getattr(config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and window > max_positions:
        raise ValueError(f"window ({window}) is longer than the model's max_position_embeddings ({max_positions})")
    docs = [list(d) for d in docs]
    windows = [_Window(d, b, e, f) for d, ids in enumerate(docs) for b, e, f in plan_windows(len(ids), window, stride)]
    if not windows:
        raise ValueError(f"nothing to score: none of the {len(docs)} documents has at least 2 tokens")

    # Same length and same scored span -> one batch, no padding, one logits_to_keep.
    groups: dict[tuple[int, int], list[_Window]] = defaultdict(list)
    for w in windows:
        groups[(w.end - w.begin, w.first_scored)].append(w)
    device = _input_device(model)
    keep = supports_logits_to_keep(model)
    nll = [0.0] * len(docs)
    count = [0] * len(docs)
    bar = progress_bar(total=len(windows), desc="perplexity", unit="window", disable=not progress)
    with eval_mode(model), torch.inference_mode():
        for (length, first), group in sorted(groups.items(), reverse=True):
            n_logits = length - first + 1  # positions first-1 .. length-1 (the last is dropped)
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                ids = torch.tensor([docs[w.doc][w.begin : w.end] for w in batch], dtype=torch.long, device=device)
                # No attention mask: every position is a real token (no padding), causal attention.
                if keep:
                    logits = model(input_ids=ids, use_cache=False, logits_to_keep=n_logits).logits
                else:
                    logits = model(input_ids=ids, use_cache=False).logits[:, -n_logits:]
                logits = logits[:, :-1]
                targets = ids[:, first:]
                token_nll = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
                ).view(len(batch), -1)
                sums = token_nll.double().sum(dim=1).tolist()
                for w, s in zip(batch, sums):
                    nll[w.doc] += s
                    count[w.doc] += length - first
                bar.update(len(batch))
    bar.close()
    total_nll = math.fsum(nll)
    total = sum(count)
    ppl = math.exp(total_nll / total)
    logger.info(
        "perplexity %.3f over %d tokens in %d documents (window %d, stride %d, %d windows)",
        ppl, total, len(docs), window, stride, len(windows),
    )
    return PerplexityResult(
        ppl=ppl,
        nll_sum=total_nll,
        n_tokens=total,
        per_doc=list(zip(nll, count)),
        window=window,
        stride=stride,
    )


# --------------------------------------------------------------------------- corpus


def _read_document(path: Path) -> str:
    """One corpus file's text (BOM and surrounding whitespace removed); DataError when unusable."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(path, "file_readable", f"cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            path,
            "utf8_encoding",
            f"not valid UTF-8: {exc.reason} at byte offset {exc.start} (line {line}, "
            f"bytes {raw[exc.start : exc.start + 4]!r}); re-save the file as UTF-8",
        ) from None
    if "\x00" in text:
        # NUL never occurs in prose: this is a binary file with a text suffix.
        offset = raw.index(b"\x00")
        raise DataError(path, "text_not_binary",
                        f"holds a NUL byte at byte offset {offset}: a binary file, not text; remove it from the corpus")
    text = text.removeprefix("\ufeff").strip()
    if not text:
        raise DataError(path, "file_not_empty", "the corpus file is empty (or only whitespace)")
    return text


def _corpus_files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
        if not files:
            raise DataError(
                source,
                "corpus_not_empty",
                f"the corpus directory holds no {' or '.join(CORPUS_SUFFIXES)} files; add UTF-8 text documents",
            )
        return files
    if source.is_file():
        return [source]
    raise DataError(
        source, "corpus_exists",
        f"no such file or directory: point the corpus setting (eval.perplexity.corpus_dir) at a folder of "
        f"UTF-8 {' or '.join(CORPUS_SUFFIXES)} files",
    )


def load_corpus(dir_or_files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[tuple[str, str]]:
    """Read a general-text corpus: one document per UTF-8 text file.

    Args:
        dir_or_files: a directory (its ``*.txt`` and ``*.md`` files, sorted by name, not
            recursive), a single file, or a list of files and directories.

    Returns:
        ``(name, text)`` per document, where ``name`` is the file name and ``text`` its
        content with leading and trailing whitespace stripped (a trailing newline is not
        text worth scoring).

    Raises:
        DataError: naming the file or directory and the rule: a missing path
            (``corpus_exists``), a directory without text files (``corpus_not_empty``), an
            unreadable file (``file_readable``), bytes that are not UTF-8 (``utf8_encoding``,
            with the byte offset and line), a binary file (``text_not_binary``), or an empty
            (or whitespace-only) file (``file_not_empty``).
    """
    sources = [dir_or_files] if isinstance(dir_or_files, (str, os.PathLike)) else list(dir_or_files)
    if not sources:
        raise DataError("(no paths)", "corpus_not_empty", "load_corpus got an empty list of files")
    docs: list[tuple[str, str]] = []
    for source in sources:
        for path in _corpus_files(Path(source)):
            docs.append((path.name, _read_document(path)))
    return docs
