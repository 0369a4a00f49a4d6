"""Sliding-window perplexity and the reference-corpus loader.

Reference numbers come from independent, plain computations (one forward pass per chunk and
``log_softmax``), not from the code under test. The context-use test needs a model that
really uses context, which a random tiny Llama does not do reliably; it uses a hand-written
"induction" model (predict the token that followed the previous occurrence of the current
token), a real computation whose NLL drops exactly when the window supplies more context.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny import build_tiny_model, build_tiny_tokenizer

from tether.data.errors import DataError
from tether.eval.perplexity import load_corpus, perplexity, plan_windows, tokenize_corpus

TEXT = (
    "The river ran quietly past the old mill, where children once gathered to watch the wheel turn. "
    "A good recipe begins with patience: the onions need time before the garlic joins them. "
    "In the spring the hills turn green and the farmers count the lambs born overnight. "
    "Libraries keep more than books; they keep the habits of a town and the questions of its people."
)
SHORT = "The train was late again, so the passengers shared their bread and told each other stories."


def _nll_of_chunk(model, ids: list[int]) -> float:
    """Summed NLL of tokens 1.. of ``ids`` from one plain forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return -sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids)))


def _pinned_model(vocab_size: int):
    """The stored value's model, configured here so changes to tests/tiny.py's model leave it alone.

    A 2-layer Llama, hidden 64, initializer_range 0.2 (a random model far from uniform, so the
    number is sensitive to which context each token gets), seeded with 0.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True, initializer_range=0.2,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


# Stored once (2026-11-23, torch 2.13.0 CPU, transformers 5.23.0) by running
#   perplexity(_pinned_model(len(tok)), tok, [TEXT], window=32, stride=16)   # tok = build_tiny_tokenizer()
# and printing n_tokens, repr(ppl) and repr(nll_sum); batch_size 1 and 3 give the same digits.
# Tolerances: 1e-4 on the mean NLL (ln ppl), i.e. 1e-4 relative on ppl, and 5e-3 on the NLL
# sum: float32 kernels on another CPU move the sum by ~1e-4, while a token scored with the
# wrong context or scored twice moves it by far more. If tests/tiny.py changes its tokenizer,
# the token count fails first: recompute the three numbers then.
STORED_N_TOKENS = 132
STORED_PPL = 1776.4368312248778
STORED_NLL_SUM = 987.6721611022949


def test_stored_value(tokenizer):
    """A fixed text under the fixed seeded tiny model gives the stored perplexity."""
    result = perplexity(_pinned_model(len(tokenizer)), tokenizer, [TEXT], window=32, stride=16, batch_size=3)
    assert result.n_tokens == STORED_N_TOKENS
    assert result.mean_nll == pytest.approx(math.log(STORED_PPL), abs=1e-4)
    assert result.ppl == pytest.approx(STORED_PPL, rel=1e-4)
    assert result.nll_sum == pytest.approx(STORED_NLL_SUM, abs=5e-3)
    assert (result.window, result.stride) == (32, 16)


@pytest.mark.parametrize("window", [8, 16, 33])
def test_stride_equal_window_is_chunking(model, tokenizer, window):
    ids = tokenize_corpus(tokenizer, [TEXT])[0]
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    expected = sum(_nll_of_chunk(model, c) for c in chunks)
    n_expected = sum(len(c) - 1 for c in chunks)
    result = perplexity(model, tokenizer, [TEXT], window=window, stride=window, batch_size=4)
    assert result.n_tokens == n_expected
    assert result.nll_sum == pytest.approx(expected, abs=1e-3)
    assert result.ppl == pytest.approx(math.exp(expected / n_expected), rel=1e-5)


@pytest.mark.parametrize("stride", [1, 7, 64])
def test_window_covering_the_document_is_full_context(model, tokenizer, stride):
    ids = tokenize_corpus(tokenizer, [SHORT])[0]
    assert len(ids) <= 64
    result = perplexity(model, tokenizer, [SHORT], window=64, stride=stride)
    assert result.n_tokens == len(ids) - 1
    assert result.nll_sum == pytest.approx(_nll_of_chunk(model, ids), abs=1e-3)


def test_sliding_window_by_hand(model, tokenizer):
    """window 16, stride 8: each later window scores its last 8 tokens with 8 tokens of context."""
    ids = tokenize_corpus(tokenizer, [TEXT])[0]
    expected, n = 0.0, 0
    with torch.no_grad():
        for begin, end, first in plan_windows(len(ids), 16, 8):
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids[begin:end]])).logits[0].double(), -1)
            expected -= sum(float(logp[i - 1, ids[begin + i]]) for i in range(first, end - begin))
            n += end - begin - first
    assert n == len(ids) - 1
    result = perplexity(model, tokenizer, [TEXT], window=16, stride=8, batch_size=5)
    assert result.n_tokens == n
    assert result.nll_sum == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(("n", "window", "stride"), [(1, 4, 2), (2, 4, 2), (10, 4, 4), (10, 4, 1), (100, 16, 5), (17, 16, 16)])
def test_plan_windows_scores_each_token_once_with_context(n, window, stride):
    scored: list[int] = []
    for begin, end, first in plan_windows(n, window, stride):
        assert 0 < end - begin <= window and 1 <= first < end - begin
        positions = list(range(begin + first, end))
        # Every scored token sees at least window - stride tokens of context (or all before it).
        assert all(p - begin >= min(window - stride, p) for p in positions)
        scored += positions
    # stride == window is plain chunking: each chunk's first token has no context and is skipped.
    assert scored == [p for p in range(1, n) if stride < window or p % window]


def test_batching_and_logits_path_do_not_change_the_result(model, tokenizer):
    texts = [TEXT, SHORT, TEXT[:150]]
    one = perplexity(model, tokenizer, texts, window=24, stride=10, batch_size=1)
    many = perplexity(model, tokenizer, texts, window=24, stride=10, batch_size=16)

    class FullLogits(torch.nn.Module):
        """Same model, but its forward does not take logits_to_keep (the fallback path)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    fallback = perplexity(FullLogits(model), tokenizer, texts, window=24, stride=10, batch_size=4)
    for other in (many, fallback):
        assert other.n_tokens == one.n_tokens
        assert other.nll_sum == pytest.approx(one.nll_sum, abs=1e-3)
        for (a, na), (b, nb) in zip(one.per_doc, other.per_doc):
            assert na == nb and a == pytest.approx(b, abs=1e-3)


def test_per_document_sums_and_no_cross_document_context(model, tokenizer):
    texts = [TEXT, SHORT, "x"]
    result = perplexity(model, tokenizer, texts, window=32, stride=16)
    assert len(result.per_doc) == 3
    assert sum(s for s, _ in result.per_doc) == pytest.approx(result.nll_sum, abs=1e-9)
    assert sum(n for _, n in result.per_doc) == result.n_tokens
    assert result.per_doc[2] == (0.0, 0)  # one token: nothing to predict it from
    # The second document is scored exactly as if it were alone: no context from the first.
    alone = perplexity(model, tokenizer, [SHORT], window=32, stride=16)
    assert result.per_doc[1][1] == alone.n_tokens
    assert result.per_doc[1][0] == pytest.approx(alone.nll_sum, abs=1e-4)
    # (name, text) pairs from load_corpus are accepted as they are.
    named = perplexity(model, tokenizer, [("a.txt", TEXT), ("b.txt", SHORT)], window=32, stride=16)
    assert named.nll_sum == pytest.approx(result.nll_sum, abs=1e-4)


class InductionLM(torch.nn.Module):
    """Predicts the token that followed the latest earlier occurrence of the current token.

    Logit 8 for that token, 0 elsewhere; uniform when the current token has not been seen in
    the window. Its NLL falls only when the window provides context, which is what the
    sliding window is for.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.config = SimpleNamespace(max_position_embeddings=4096)

    def forward(self, input_ids, logits_to_keep: int = 0, **kwargs):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.vocab_size)
        for b in range(batch):
            row = input_ids[b].tolist()
            last_seen: dict[int, int] = {}
            for t, tok in enumerate(row):
                if tok in last_seen:
                    logits[b, t, row[last_seen[tok] + 1]] = 8.0
                last_seen[tok] = t
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits)


def test_more_context_lowers_nll_on_repetitive_text(tokenizer):
    phrase = "Silent Harbor Part 3, Glass River Part 4, Hidden Garden Part 1."
    text = " ".join([phrase] * 12)
    ids = tokenize_corpus(tokenizer, [text])[0]
    period = len(tokenize_corpus(tokenizer, [phrase + " "])[0])
    window = 48
    assert 8 <= period < window // 2 < len(ids) // 3
    lm = InductionLM(len(tokenizer))
    chunked = perplexity(lm, tokenizer, [text], window=window, stride=window)
    sliding = perplexity(lm, tokenizer, [text], window=window, stride=window // 2)
    assert sliding.n_tokens == len(ids) - 1 > chunked.n_tokens
    # Chunking restarts every window without context; the sliding window keeps 24 tokens (> 1 period).
    assert sliding.mean_nll < chunked.mean_nll - 0.1
    assert sliding.ppl < chunked.ppl


def test_bos_handling(tokenizer, model):
    with pytest.raises(ValueError, match="no BOS"):
        perplexity(model, tokenizer, [SHORT], window=32, stride=16, add_bos=True)
    with_bos = build_tiny_tokenizer()
    with_bos.bos_token = "<|endoftext|>"
    plain = perplexity(model, with_bos, [SHORT], window=64, stride=32)
    bos = perplexity(model, with_bos, [SHORT], window=64, stride=32, add_bos=True)
    # With a BOS, the document's first real token is scored too.
    assert bos.n_tokens == plain.n_tokens + 1
    assert tokenize_corpus(with_bos, [SHORT], add_bos=True)[0][0] == with_bos.bos_token_id


def test_bad_arguments(model, tokenizer):
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tokenizer, [TEXT], window=16, stride=17)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tokenizer, [TEXT], window=16, stride=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        perplexity(model, tokenizer, [TEXT], window=4096, stride=16)
    with pytest.raises(ValueError, match="nothing to score"):
        perplexity(model, tokenizer, ["x", ""], window=16, stride=8)


def test_peft_adapter_changes_ppl_and_disable_adapter_restores_it(tokenizer):
    peft = pytest.importorskip("peft")
    base_ppl = perplexity(build_tiny_model(tokenizer, seed=0), tokenizer, [TEXT], window=32, stride=16)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    candidate = peft.get_peft_model(build_tiny_model(tokenizer, seed=0), cfg)
    tuned = perplexity(candidate, tokenizer, [TEXT], window=32, stride=16)
    with candidate.disable_adapter():
        as_base = perplexity(candidate, tokenizer, [TEXT], window=32, stride=16)
    assert as_base.nll_sum == pytest.approx(base_ppl.nll_sum, abs=1e-3)
    assert abs(tuned.nll_sum - base_ppl.nll_sum) > 1e-2


# --------------------------------------------------------------------------- corpus


def test_load_corpus_directory_and_files(tmp_path: Path):
    (tmp_path / "b.txt").write_text("\ufeffSecond document.\n\n", encoding="utf-8")
    (tmp_path / "a.md").write_text("  First document, in Markdown.\n", encoding="utf-8")
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")  # not a text document: ignored
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("Nested: not read.", encoding="utf-8")
    assert load_corpus(tmp_path) == [("a.md", "First document, in Markdown."), ("b.txt", "Second document.")]
    assert load_corpus([tmp_path / "b.txt", str(tmp_path / "sub")]) == [
        ("b.txt", "Second document."),
        ("c.txt", "Nested: not read."),
    ]


def test_load_corpus_shipped_heldout_corpus():
    heldout = Path(__file__).resolve().parents[2] / "tether" / "resources" / "corpus" / "heldout"
    docs = load_corpus(heldout)
    assert docs and all(name.endswith(".txt") and text for name, text in docs)


def test_load_corpus_errors_name_the_file(tmp_path: Path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="corpus_not_empty") as info:
        load_corpus(empty_dir)
    assert str(empty_dir) in str(info.value)

    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty") as info:
        load_corpus([blank])
    assert str(blank) in str(info.value)

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf".encode() + "é au lait".encode("latin-1"))
    with pytest.raises(DataError, match="byte offset 3") as info:
        load_corpus(tmp_path / "latin1.txt")
    assert str(bad) in str(info.value) and "UTF-8" in str(info.value)

    with pytest.raises(DataError, match="no such file") as info:
        load_corpus(tmp_path / "missing.txt")
    assert "missing.txt" in str(info.value)
