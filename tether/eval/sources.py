"""The drift panel's text sources: where each one's documents come from.

A drift-panel source (``eval.drift_panel``, :class:`tether.config.DriftSourceConfig`) is one of:

* ``builtin:heldout-prose``: the held-out half of the prose packaged with Tether
  (``tether/resources/corpus/heldout``, original text; the other half is the replay corpus);
* a folder or file of UTF-8 text (``*.txt`` / ``*.md``), relative to the project root. A folder
  tracked by DVC (``<folder>.dvc`` beside it) is read the same way; when its files are not in
  the workspace the error says to ``dvc pull`` it, and its DVC hash joins the fingerprint;
* ``builtin:python-docs``: the Python reference documentation that every CPython carries
  (``pydoc_data.topics``: statements, expressions, the data model), one document per topic.
  Read from the running interpreter, never copied into the project;
* ``builtin:package-docs``: the descriptions (their README, from the installed metadata) of the
  packages Tether itself depends on, so every install has them; markup, code blocks, tables and
  link lists are dropped and prose paragraphs kept;
* ``hf:DATASET[/CONFIG][:SPLIT]``: a Hugging Face dataset's parquet files, where the network
  allows (``hf:wikitext/wikitext-2-raw-v1:test``); with ``HF_HUB_OFFLINE=1`` only a copy already
  in the Hugging Face cache is used, otherwise the error says how to get one.

Each source's documents are cut into chunks of about :data:`CHUNK_CHARS` characters at paragraph
boundaries (bootstrap intervals resample these) and split into two halves by a hash of the chunk's
name: the *gate* half, which the gate measures, and the *selection* half, on which guarded
selection (:mod:`tether.selection`) chooses a checkpoint and scale. The halves share no chunk, so
the gate's numbers are never the ones selected on. The base model's self-samples are a source
too, but they need the model: :mod:`tether.eval.selfsamples` makes them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tether.data.errors import DataError
from tether.eval.perplexity import load_corpus

if TYPE_CHECKING:
    from tether.config import DriftSourceConfig

logger = logging.getLogger(__name__)

Half = Literal["gate", "selection"]
CHUNK_CHARS = 2000
PACKAGED_HELDOUT = Path(__file__).resolve().parent.parent / "resources" / "corpus" / "heldout"
# The packages whose descriptions form builtin:package-docs: Tether's own dependencies (pinned in
# pyproject.toml), so every install has exactly these texts. Long changelogs (pydantic's) are
# left out: they are lists of version numbers, not prose.
PACKAGE_DOCS = (
    "transformers", "peft", "accelerate", "mlflow", "prefect", "dvc", "pandas", "numpy", "torch",
    "typer", "rich", "fastapi", "huggingface-hub", "tokenizers", "sqlalchemy", "httpx", "uvicorn",
    "alembic", "scikit-learn", "scipy", "requests", "gunicorn",
)


class SourceError(DataError):
    """A drift-panel source that cannot be read; the message names the source and what to fix."""


@dataclass(frozen=True)
class Document:
    """One chunk of a source: ``name`` (stable, e.g. ``bridges.txt#2``) and its text."""

    name: str
    text: str


@dataclass
class TextSource:
    """A text source's documents, split into the gate and selection halves.

    Attributes:
        name: the source's name in the panel (a metric name).
        source: the configured source string.
        gate: chunks the gate measures.
        selection: chunks guarded selection measures (disjoint from ``gate``).
        fingerprint: identifies the content (DVC hash, package versions, file digests).
    """

    name: str
    source: str
    gate: list[Document] = field(default_factory=list)
    selection: list[Document] = field(default_factory=list)
    fingerprint: str = ""

    def half(self, which: Half) -> list[Document]:
        return self.gate if which == "gate" else self.selection


def half_of(name: str) -> Half:
    """Which half a chunk belongs to: decided by its name alone, so adding a document never moves another."""
    return "gate" if hashlib.sha256(name.encode("utf-8")).digest()[0] % 2 == 0 else "selection"


def chunk_text(doc_name: str, text: str, chunk_chars: int = CHUNK_CHARS) -> list[Document]:
    """Cut a document at paragraph boundaries into chunks of about ``chunk_chars`` characters.

    A paragraph longer than a chunk becomes a chunk of its own (never cut mid-sentence by us).
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for para in paragraphs:
        if current and size + len(para) > chunk_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(para)
        size += len(para) + 2
    if current:
        chunks.append("\n\n".join(current))
    if len(chunks) == 1:
        return [Document(doc_name, chunks[0])]
    return [Document(f"{doc_name}#{i}", c) for i, c in enumerate(chunks)]


def _split(name: str, source: str, docs: Sequence[tuple[str, str]], fingerprint: str) -> TextSource:
    out = TextSource(name=name, source=source, fingerprint=fingerprint)
    for doc_name, text in docs:
        for chunk in chunk_text(doc_name, text):
            out.half(half_of(chunk.name)).append(chunk)
    # Ordered by the hash too: a token cap takes a varied sample, not the alphabetically first topics.
    for half in (out.gate, out.selection):
        half.sort(key=lambda d: hashlib.sha256(d.name.encode("utf-8")).hexdigest())
    if not out.gate or not out.selection:
        raise SourceError(
            source, "source_large_enough",
            f"drift-panel source {name!r} ({source}) has too little text to split into a gate half and a "
            f"selection half ({len(out.gate)} + {len(out.selection)} chunks of ~{CHUNK_CHARS} characters): "
            "give it at least a few thousand characters in several paragraphs",
        )
    return out


# --------------------------------------------------------------------------- the kinds


def python_docs() -> list[tuple[str, str]]:
    """The running interpreter's reference documentation topics (``pydoc_data.topics``)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        raise SourceError("builtin:python-docs", "source_available",
                          "this Python has no pydoc_data module (stripped by the distribution); remove the "
                          "python_docs source from eval.drift_panel or install the full standard library") from None
    return [(f"{key}.txt", topics[key]) for key in sorted(topics)]


_MARKUP_LINE = re.compile(r"^\s*(\||<|!\[|\[!\[|```|~~~|[-=*_]{3,}\s*$|\.\. |>>>|\$ |pip install)")


def readme_prose(text: str) -> str:
    """The prose paragraphs of a package description: no code blocks, tables, HTML, badges or lists of links."""
    text = re.sub(r"```.*?```|~~~.*?~~~", "\n\n", text, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [label](url) -> label
    kept = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln for ln in para.splitlines() if not _MARKUP_LINE.match(ln)]
        prose = " ".join(ln.strip().lstrip("#*-+> ").strip() for ln in lines).strip()
        letters = sum(c.isalpha() or c.isspace() for c in prose)
        # Prose: long enough to be a sentence or more, mostly letters (not a code sample or a table).
        if len(prose) >= 80 and letters / len(prose) >= 0.85 and "http" not in prose:
            kept.append(prose)
    return "\n\n".join(kept)


def package_docs() -> tuple[list[tuple[str, str]], str]:
    """Prose from the descriptions of :data:`PACKAGE_DOCS` that are installed, and their versions."""
    docs, versions = [], []
    for name in PACKAGE_DOCS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        prose = readme_prose(str(body))
        if prose:
            docs.append((f"{name}.md", prose))
            versions.append(f"{name}=={dist.version}")
    if not docs:
        raise SourceError("builtin:package-docs", "source_available",
                          "none of Tether's dependencies has a readable description installed")
    return docs, ";".join(versions)


def _dvc_hash(path: Path) -> str | None:
    dvc_file = path.with_name(path.name + ".dvc")
    if not dvc_file.is_file():
        return None
    import yaml

    try:
        outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or []
    except (OSError, yaml.YAMLError):
        return None
    return str(outs[0].get("md5")) if outs and isinstance(outs[0], dict) else None


def path_docs(path: Path) -> tuple[list[tuple[str, str]], str]:
    """A folder or file of UTF-8 text; a DVC-tracked folder that was not pulled gets a ``dvc pull`` hint."""
    dvc_hash = _dvc_hash(path)
    if not path.exists() and dvc_hash is not None:
        raise SourceError(path, "source_pulled",
                          f"the folder is tracked by DVC ({path.name}.dvc) but its files are not in the workspace: "
                          f"run `dvc pull {path.name}.dvc` in {path.parent}")
    docs = load_corpus(path)
    digest = hashlib.sha256()
    for name, text in docs:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return docs, (f"dvc:{dvc_hash}" if dvc_hash else "") + digest.hexdigest()[:16]


def parse_hf(source: str) -> tuple[str, str | None, str]:
    """``hf:DATASET[/CONFIG][:SPLIT]`` -> ``(repo id, config, split)``.

    ``wikitext/wikitext-2-raw-v1:test`` is the dataset ``wikitext``, config ``wikitext-2-raw-v1``,
    split ``test``; with three segments (``owner/name/config``) the first two are the repo id.
    The split defaults to ``test``.
    """
    spec = source.removeprefix("hf:")
    path, _, split = spec.partition(":")
    parts = [p for p in path.split("/") if p]
    if len(parts) == 1:
        return parts[0], None, split or "test"
    if len(parts) == 2:
        return parts[0], parts[1], split or "test"
    if len(parts) == 3:
        return f"{parts[0]}/{parts[1]}", parts[2], split or "test"
    raise SourceError(source, "hf_id", "expected hf:DATASET[/CONFIG][:SPLIT], e.g. hf:wikitext/wikitext-2-raw-v1:test")


def hf_docs(source: str, text_field: str) -> tuple[list[tuple[str, str]], str]:
    """A Hugging Face dataset split's parquet files (main branch layout, else the parquet conversion)."""
    import pandas as pd
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, config, split = parse_hf(source)
    prefix = f"{config}/" if config else ""
    patterns = [f"{prefix}{split}-*.parquet", f"{prefix}{split}/*.parquet", f"data/{split}-*.parquet"]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    folder = None
    for revision in ("main", "refs/convert/parquet"):
        try:
            folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=patterns,
                                            local_files_only=offline))
        except LocalEntryNotFoundError:
            continue
        except Exception as exc:  # noqa: BLE001 - network, auth, unknown repo: all end in the same advice
            raise SourceError(source, "hf_reachable",
                              f"cannot fetch dataset {repo!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
                              "check the id and the network, or download it once and point the source at a folder") from None
        if any(folder.rglob("*.parquet")):
            break
    if folder is None:
        raise SourceError(source, "hf_reachable",
                          f"dataset {repo!r} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids the download: "
                          "run once with network access (unset HF_HUB_OFFLINE), or save the text as files and use a folder")
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise SourceError(source, "hf_split", f"dataset {repo!r} has no parquet files for config {config!r}, split {split!r}")
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if text_field not in frame.columns:
        raise SourceError(source, "hf_text_field",
                          f"dataset {repo!r} has no column {text_field!r} (columns: {list(frame.columns)}); set text_field")
    # Rows of one article (wikitext's lines) are joined back into paragraphs, then chunked.
    text = "\n\n".join(str(t).strip() for t in frame[text_field] if isinstance(t, str) and t.strip())
    if not text:
        raise SourceError(source, "source_not_empty", f"dataset {repo!r} split {split!r} holds no text")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return [(f"{repo.replace('/', '_')}-{split}.txt", text)], f"hf:{repo}:{config}:{split}:{digest}"


def load_text_source(spec: DriftSourceConfig, root: Path) -> TextSource:
    """Read one text source of the drift panel and split it into its gate and selection halves.

    Args:
        spec: the source's settings (``name``, ``source``, ``text_field``).
        root: the project root that relative paths resolve against.

    Returns:
        The :class:`TextSource`.

    Raises:
        SourceError: naming the source and what to fix (a missing folder, an empty or non-UTF-8
            file, a DVC folder not pulled, a dataset without network, too little text).
    """
    if spec.kind == "self_samples":
        raise ValueError(f"{spec.name}: self-samples come from the base model (tether.eval.selfsamples)")
    try:
        if spec.source == "builtin:heldout-prose":
            docs, fp = path_docs(PACKAGED_HELDOUT)
        elif spec.source == "builtin:python-docs":
            docs, fp = python_docs(), f"python-docs:{_python_version()}"
        elif spec.source == "builtin:package-docs":
            docs, fp = package_docs()
        elif spec.kind == "hf":
            docs, fp = hf_docs(spec.source, spec.text_field)
        else:
            path = Path(spec.source).expanduser()
            docs, fp = path_docs(path if path.is_absolute() else Path(root) / path)
    except DataError as exc:
        raise SourceError(exc.file, exc.rule, f"drift-panel source {spec.name!r} ({spec.source}): {exc.detail}") from None
    return _split(spec.name, spec.source, docs, fp)


def source_folder(spec: DriftSourceConfig, root: Path) -> Path | None:
    """The folder or file a source reads, if it reads one (replay must stay out of it)."""
    if spec.source == "builtin:heldout-prose":
        return PACKAGED_HELDOUT
    if spec.kind == "path":
        path = Path(spec.source).expanduser()
        return path if path.is_absolute() else Path(root) / path
    return None


def _python_version() -> str:
    import sys

    return ".".join(map(str, sys.version_info[:3]))
