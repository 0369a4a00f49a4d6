"""The drift panel's sources: validation of every bad value, user folders, DVC folders, halves, caps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_evaluate import write_corpus

from tether.config import ConfigError, DriftSourceConfig, load_config
from tether.eval.panel import capped_ids, load_panel, load_text_sources, panel_limits
from tether.eval.sources import SourceError, chunk_text, half_of, load_text_source, parse_hf, readme_prose


def _cfg(sources: list[dict], **gates) -> object:
    return load_config(profile="test", overrides={"eval": {"drift_panel": sources}, "gates": gates})


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"name": "Bad-Name", "source": "builtin:python-docs"}, "lower-case letters"),
        ({"name": "x", "source": "builtin:wikipedia"}, "unknown built-in source"),
        ({"name": "x", "source": "   "}, "source is empty"),
        ({"name": "x", "source": "hf:"}, "expected hf:DATASET"),
        ({"name": "x", "source": "builtin:python-docs", "max_tokens": 3}, "greater than or equal to 16"),
        ({"name": "x", "source": "builtin:python-docs", "colour": "red"}, "unknown setting"),
    ],
)
def test_bad_source_settings_are_refused_with_the_setting_named(source, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _cfg([source])
    assert "eval.drift_panel.0" in str(err.value)


def test_duplicate_source_names_and_an_empty_panel_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unique, repeated: \['a'\]"):
        _cfg([{"name": "a", "source": "builtin:python-docs"}, {"name": "a", "source": "builtin:package-docs"}])
    with pytest.raises(ConfigError, match="drift_panel"):
        _cfg([])


def _source(tmp_path: Path, source: str, **kw) -> DriftSourceConfig:
    return DriftSourceConfig(name="mine", source=source, **kw)


def test_a_missing_folder_names_the_source_and_the_fix(tmp_path) -> None:
    with pytest.raises(SourceError, match="drift-panel source 'mine'.*no such file or directory") as err:
        load_text_source(_source(tmp_path, "nowhere"), tmp_path)
    assert err.value.rule == "corpus_exists" and str(tmp_path / "nowhere") in str(err.value)


def test_an_empty_file_and_non_utf8_bytes_name_the_file(tmp_path) -> None:
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(SourceError, match="empty.txt.*drift-panel source 'mine'.*empty") as err:
        load_text_source(_source(tmp_path, "empty.txt"), tmp_path)
    assert err.value.rule == "file_not_empty"
    (tmp_path / "latin.txt").write_bytes("Caf\xe9 au lait, two paragraphs of it.".encode("latin-1"))
    with pytest.raises(SourceError, match="latin.txt.*not valid UTF-8.*byte offset 3.*re-save") as err:
        load_text_source(_source(tmp_path, "latin.txt"), tmp_path)
    assert err.value.rule == "utf8_encoding"


def test_too_little_text_to_split_is_refused(tmp_path) -> None:
    (tmp_path / "short.txt").write_text("One short paragraph.", encoding="utf-8")
    with pytest.raises(SourceError, match="too little text to split"):
        load_text_source(_source(tmp_path, "short.txt"), tmp_path)


def test_a_dataset_id_without_network_says_how_to_get_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SourceError, match="not in the Hugging Face cache and HF_HUB_OFFLINE=1.*folder") as err:
        load_text_source(_source(tmp_path, "hf:wikitext/wikitext-2-raw-v1:test"), tmp_path)
    assert "drift-panel source 'mine'" in str(err.value)


def test_hf_ids_parse_to_repo_config_and_split() -> None:
    assert parse_hf("hf:wikitext/wikitext-2-raw-v1:test") == ("wikitext", "wikitext-2-raw-v1", "test")
    assert parse_hf("hf:Salesforce/wikitext/wikitext-103-raw-v1:validation") == (
        "Salesforce/wikitext", "wikitext-103-raw-v1", "validation")
    assert parse_hf("hf:imdb") == ("imdb", None, "test")


def test_a_dataset_in_the_hub_cache_is_read_offline(tmp_path, monkeypatch) -> None:
    """A dataset already downloaded (the Hugging Face cache layout) is used without any network."""
    import pandas as pd

    snapshot = tmp_path / "hub" / "datasets--wikitext" / "snapshots" / ("a" * 40)
    (snapshot / "wikitext-2-raw-v1").mkdir(parents=True)
    paragraphs = [line for i in range(6) for line in
                  [f" = Article {i} = ", *(f" Sentence {j} of article {i} says something plain and long enough. " * 4
                                          for j in range(8))]]
    pd.DataFrame({"text": paragraphs}).to_parquet(snapshot / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet")
    (tmp_path / "hub" / "datasets--wikitext" / "refs").mkdir()
    (tmp_path / "hub" / "datasets--wikitext" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    src = load_text_source(_source(tmp_path, "hf:wikitext/wikitext-2-raw-v1:test"), tmp_path)
    assert src.gate and src.selection and "Sentence 3 of article" in src.gate[0].text
    assert src.fingerprint.startswith("hf:wikitext:wikitext-2-raw-v1:test:")
    with pytest.raises(SourceError, match="no column 'body'"):
        load_text_source(_source(tmp_path, "hf:wikitext/wikitext-2-raw-v1:test", text_field="body"), tmp_path)


# ------------------------------------------------------------------ a user's folder, halves, caps


def test_a_user_folder_is_a_source_split_into_disjoint_halves_by_name(tmp_path) -> None:
    folder = write_corpus(tmp_path / "my_corpus", names=("a.txt", "b.txt", "c.txt"))
    src = load_text_source(_source(tmp_path, "my_corpus"), tmp_path)
    gate, sel = {d.name for d in src.gate}, {d.name for d in src.selection}
    assert gate and sel and not gate & sel
    assert all(half_of(n) == "gate" for n in gate) and all(half_of(n) == "selection" for n in sel)
    texts = {d.text for d in src.gate} | {d.text for d in src.selection}
    assert sum(len(t) for t in texts) > 0.95 * sum(len(p.read_text()) for p in folder.iterdir())
    # Adding a document moves no other chunk from its half.
    (folder / "d.txt").write_text((folder / "a.txt").read_text() + "\n\nOne more paragraph.", encoding="utf-8")
    grown = load_text_source(_source(tmp_path, "my_corpus"), tmp_path)
    assert gate <= {d.name for d in grown.gate} and sel <= {d.name for d in grown.selection}
    assert grown.fingerprint != src.fingerprint


def test_chunks_keep_paragraphs_whole() -> None:
    text = "\n\n".join(f"Paragraph {i} " + " ".join(["word"] * 100) for i in range(10))
    chunks = chunk_text("doc.txt", text, chunk_chars=1200)
    assert len(chunks) == 5 and chunks[0].name == "doc.txt#0"
    assert "\n\n".join(c.text for c in chunks) == text.strip()


def test_token_cap_takes_documents_in_order_and_cuts_the_last(tokenizer_tiny=None) -> None:
    from tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    docs = [("a", "The river ran quietly past the old mill. " * 5), ("b", "A good recipe begins with patience. " * 5)]
    full = [len(tok(t, add_special_tokens=False)["input_ids"]) for _, t in docs]
    ids, names = capped_ids(tok, docs, full[0] + 7)
    assert names == ["a", "b"] and [len(i) for i in ids] == [full[0], 7]
    ids, names = capped_ids(tok, docs, None)
    assert [len(i) for i in ids] == full


def test_load_panel_halves_limits_and_selection_overrides(tmp_path) -> None:
    write_corpus(tmp_path / "mine")
    cfg = _cfg([{"name": "mine", "source": "mine", "max_tokens": 500, "max_drift": 0.08},
                {"name": "self_samples", "source": "builtin:self-samples", "n_samples": 6}], max_ppl_drift=0.03)
    texts = load_text_sources(cfg, tmp_path)
    gate, sel = load_panel(cfg, tmp_path, "gate", text_sources=texts), load_panel(
        cfg, tmp_path, "selection", max_tokens=64, n_samples=2, text_sources=texts)
    assert panel_limits(cfg) == {"mine": 0.08, "self_samples": 0.03}
    assert [s.max_drift for s in gate.sources] == [0.08, 0.03]
    assert gate.sources[0].max_tokens == 500 and sel.sources[0].max_tokens == 64
    assert gate.sources[1].n_samples == 6 and sel.sources[1].n_samples == 2
    assert not {d for d, _ in gate.sources[0].documents} & {d for d, _ in sel.sources[0].documents}
    assert gate.fingerprint() != sel.fingerprint()


def test_builtin_sources_read_from_the_environment() -> None:
    for name in ("builtin:heldout-prose", "builtin:python-docs", "builtin:package-docs"):
        src = load_text_source(DriftSourceConfig(name="x", source=name), Path("."))
        assert len(src.gate) >= 3 and len(src.selection) >= 3, name
    docs = load_text_source(DriftSourceConfig(name="x", source="builtin:package-docs"), Path("."))
    assert "transformers==" in docs.fingerprint  # the versions the text came from


def test_readme_prose_keeps_sentences_and_drops_markup() -> None:
    readme = (
        "# Title\n\n[![badge](https://x/y.svg)](https://x)\n\n```python\nimport x\nx.run()\n```\n\n"
        "| a | b |\n|---|---|\n\nThis library helps people write training loops without the boilerplate "
        "that usually comes with several devices.\n\n<p align='center'><img src='x.png'></p>\n"
    )
    assert readme_prose(readme) == ("This library helps people write training loops without the boilerplate that "
                                    "usually comes with several devices.")


# ------------------------------------------------------------------ a DVC-tracked folder


@pytest.mark.integration
def test_a_dvc_tracked_folder_is_a_source_and_says_dvc_pull_when_missing(tmp_path) -> None:
    import shutil

    def run(*args: str) -> None:
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, env={**__import__("os").environ,
                                                                                   "DVC_NO_ANALYTICS": "1"})

    run("git", "init", "-q")
    run("git", "config", "user.email", "t@example.com")
    run("git", "config", "user.name", "t")
    dvc = str(Path(__import__("sys").executable).parent / "dvc")
    run(dvc, "init", "-q")
    write_corpus(tmp_path / "corpora" / "support_tickets")
    run(dvc, "add", "-q", "corpora/support_tickets")
    run(dvc, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run(dvc, "push", "-q")
    spec = _source(tmp_path, "corpora/support_tickets")
    first = load_text_source(spec, tmp_path)
    md5 = (tmp_path / "corpora" / "support_tickets.dvc").read_text().split("md5: ")[1].split()[0]
    assert first.fingerprint.startswith(f"dvc:{md5}")

    shutil.rmtree(tmp_path / "corpora" / "support_tickets")
    with pytest.raises(SourceError, match=r"tracked by DVC \(support_tickets.dvc\).*dvc pull support_tickets.dvc") as err:
        load_text_source(spec, tmp_path)
    assert err.value.rule == "source_pulled"
    run(dvc, "pull", "-q")
    again = load_text_source(spec, tmp_path)
    assert again.fingerprint == first.fingerprint and [d.text for d in again.gate] == [d.text for d in first.gate]
