"""LoRA fine-tuning on a tiny random Llama: labels, loss, trainable weights, save/load, resume, replay, MLflow."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tiny import (
    GENERAL_TEXT,
    build_tiny_model,
    build_tiny_model_dir,
    build_tiny_tokenizer,
    make_example,
    make_examples,
    make_project,
    reset_mlflow_globals,
)

from tether.config import load_config
from tether.eval.scoring import encode_prompt  # the prompt as evaluation renders it
from tether.model.train import (
    IGNORE_INDEX,
    CompletionCollator,
    TrainDataError,
    build_lora_model,
    build_replay_chunks,
    check_replay_disjoint,
    completion_loss,
    encode_example,
    encode_examples,
    evaluate_loss,
    fit,
    mix_replay,
    resolve_layers,
    save_adapter,
)


pytestmark = [*globals().get("pytestmark", []), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def _train_cfg(**overrides):
    return load_config(profile="test", overrides={"train": overrides}).train


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


# ------------------------------------------------------------------ encoding


def test_label_mask_covers_exactly_the_completion_tokens(tokenizer) -> None:
    ex = make_example(["Glass River Part 1", "Glass River Part 2"], "Glass River Part 3")
    enc = encode_example(tokenizer, ex, max_length=512)

    prompt_ids = encode_prompt(tokenizer, ex["prompt"])
    assert enc.input_ids[: enc.prompt_length] == prompt_ids
    assert enc.labels[: enc.prompt_length] == [IGNORE_INDEX] * len(prompt_ids)
    labelled = [t for t in enc.labels if t != IGNORE_INDEX]
    assert labelled == enc.input_ids[enc.prompt_length :] == enc.completion_ids
    # Exactly the title and the end-of-turn token (pad = eos: it must be labelled, not masked).
    assert tokenizer.decode(labelled) == "Glass River Part 3<|im_end|>"
    assert labelled[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id
    assert enc.input_ids[-1] == tokenizer.eos_token_id  # ChatML's trailing newline is not trained
    # Same token ids as rendering the whole conversation with the template.
    full = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
    assert tokenizer.decode(enc.input_ids) == full.rstrip("\n")


def test_truncation_drops_oldest_prompt_tokens_and_keeps_the_completion(tokenizer) -> None:
    ex = make_example([f"Silent Harbor Part {i}" for i in range(1, 6)], "Silent Harbor Part 6")
    full = encode_example(tokenizer, ex, max_length=10_000)
    cut = encode_example(tokenizer, ex, max_length=40)
    assert len(cut.input_ids) == 40 and cut.truncated and not full.truncated
    assert cut.completion_ids == full.completion_ids
    assert cut.input_ids == full.input_ids[-40:]


def test_malformed_example_is_named(tokenizer) -> None:
    with pytest.raises(TrainDataError, match="'completion' must be a list"):
        encode_example(tokenizer, {"user_id": "u7", "prompt": [], "completion": "x"}, 64)


def test_a_tokenizer_without_a_chat_template_is_refused_by_training_and_scoring_alike(tokenizer) -> None:
    bare = build_tiny_tokenizer()
    bare.chat_template = None
    ex = make_example(["Glass River Part 1"], "Glass River Part 2", user_id="u9")
    with pytest.raises(TrainDataError, match=r"example 'u9'.*has no chat template"):
        encode_example(bare, ex, 64)
    with pytest.raises(ValueError, match="has no chat template"):
        encode_prompt(bare, ex["prompt"])
    assert encode_example(tokenizer, ex, 512).prompt_length == len(encode_prompt(tokenizer, ex["prompt"]))


# ------------------------------------------------------------------ loss


def test_completion_only_loss_equals_full_logits_masked_loss(tokenizer) -> None:
    model = build_tiny_model(tokenizer)
    feats = encode_examples(tokenizer, make_examples(5, seed=3), 256)
    feats.append({"input_ids": feats[0]["input_ids"][:30], "labels": feats[0]["input_ids"][:30]})  # a replay-like row
    for rows in (feats[:5], feats):
        batch = CompletionCollator(tokenizer.pad_token_id)(rows)
        # Reference: the stock path, right padding, logits at every position, the model's own loss.
        longest = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [tokenizer.pad_token_id] * (longest - len(r["input_ids"])) for r in rows])
        labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (longest - len(r["labels"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (longest - len(r["input_ids"])) for r in rows])
        with torch.no_grad():
            s, n = completion_loss(model, batch)
            ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        assert int(n) == int((labels[:, 1:] != IGNORE_INDEX).sum())
        assert float(s / n) == pytest.approx(float(ref), abs=1e-5)


def test_only_lora_weights_of_the_configured_layers_train(tokenizer) -> None:
    peft_model = build_lora_model(build_tiny_model(tokenizer), _train_cfg(layers_to_transform="upper_half"), seed=0)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".layers.1." in n for n in trainable)  # upper half of 2 layers = layer 1
    modules = {n.split(".layers.1.")[1].split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    all_layers = build_lora_model(build_tiny_model(tokenizer), _train_cfg(layers_to_transform=None), seed=0)
    names = [n for n, p in all_layers.named_parameters() if p.requires_grad]
    assert any(".layers.0." in n for n in names) and any(".layers.1." in n for n in names)


def test_resolve_layers() -> None:
    assert resolve_layers("upper_half", 30) == list(range(15, 30))
    assert resolve_layers(None, 30) is None and resolve_layers("all", 30) is None
    with pytest.raises(ValueError, match="do not exist"):
        resolve_layers([3, 40], 30)


# ------------------------------------------------------------------ training


def test_loss_decreases(tokenizer, tmp_path) -> None:
    model = build_tiny_model(tokenizer)
    feats = encode_examples(tokenizer, make_examples(48, seed=1), 128)
    cfg = _train_cfg(max_steps=20, learning_rate=0.03, lora_dropout=0.0, batch_size=8, save_every=100, eval_every=100)
    result = fit(model, tokenizer, feats, None, cfg, tmp_path / "run", seed=0)
    losses = [loss for _, loss in result.train_loss]
    assert result.steps == 20 and len(losses) == 20
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    assert result.tokens_per_second > 0


def test_adapter_save_then_load_gives_identical_logits(tiny_dir, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    feats = encode_examples(tok, make_examples(16, seed=1), 128)
    result = fit(
        AutoModelForCausalLM.from_pretrained(tiny_dir), tok, feats, None,
        _train_cfg(max_steps=3, learning_rate=0.05), tmp_path / "run", seed=0,
    )
    adapter = save_adapter(result.model, tok, tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    assert (adapter / "tokenizer.json").exists()

    batch = CompletionCollator(tok.pad_token_id)(feats[:4])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    trained = result.model.eval()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), adapter).eval()
    with torch.no_grad():
        a, b = trained(**inputs).logits, loaded(**inputs).logits
        with loaded.disable_adapter():
            base = loaded(**inputs).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, base)  # the adapter changed something


class _Crash(RuntimeError):
    pass


def test_resumed_run_ends_with_the_same_adapter_as_an_uninterrupted_run(tiny_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    feats = encode_examples(tok, make_examples(40, seed=1), 128)
    evals = encode_examples(tok, make_examples(4, seed=2), 128)
    cfg = _train_cfg(max_steps=6, save_every=2, eval_every=2, learning_rate=0.02, lora_dropout=0.1)

    straight = fit(AutoModelForCausalLM.from_pretrained(tiny_dir), tok, feats, evals, cfg, tmp_path / "a", seed=7)

    class CrashAtStep5(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise _Crash("simulated crash after checkpoint-4")

    with pytest.raises(_Crash):
        fit(AutoModelForCausalLM.from_pretrained(tiny_dir), tok, feats, evals, cfg, tmp_path / "b", seed=7,
            callbacks=[CrashAtStep5()])
    assert (tmp_path / "b" / "checkpoint-4").is_dir()
    resumed = fit(AutoModelForCausalLM.from_pretrained(tiny_dir), tok, feats, evals, cfg, tmp_path / "b", seed=7,
                  resume=True)
    assert resumed.resumed_from and resumed.resumed_from.endswith("checkpoint-4")
    assert resumed.steps == straight.steps == 6
    a, b = _lora_state(straight.model), _lora_state(resumed.model)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_evaluate_loss_of_base_via_disable_adapter(tokenizer) -> None:
    base = build_tiny_model(tokenizer)
    feats = encode_examples(tokenizer, make_examples(6, seed=4), 128)
    expected = evaluate_loss(base, feats, tokenizer.pad_token_id, batch_size=4)
    peft_model = build_lora_model(base, _train_cfg(), seed=0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # a non-zero adapter
    assert evaluate_loss(peft_model, feats, tokenizer.pad_token_id, 4) != pytest.approx(expected, abs=1e-4)
    with peft_model.disable_adapter():
        assert evaluate_loss(peft_model, feats, tokenizer.pad_token_id, 4) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ replay


def test_replay_mixing_ratio_is_respected(tokenizer, tmp_path) -> None:
    corpus = tmp_path / "replay"
    corpus.mkdir()
    (corpus / "a.txt").write_text(" ".join(GENERAL_TEXT * 3))
    chunks = build_replay_chunks(tokenizer, corpus, chunk_tokens=32)
    assert chunks and all(len(c["input_ids"]) <= 32 and c["labels"] == c["input_ids"] for c in chunks)
    task = encode_examples(tokenizer, make_examples(30, seed=1), 128)
    for ratio, expected in ((0.0, 0), (0.25, 10), (0.5, 30), (0.2, 8)):
        mixed = mix_replay(task, chunks, ratio, seed=0)
        n_replay = sum(1 for row in mixed if row["labels"][0] != IGNORE_INDEX)
        assert n_replay == expected and len(mixed) == 30 + expected
        if ratio:
            assert n_replay / len(mixed) == pytest.approx(ratio, abs=0.02)
    assert mix_replay(task, chunks, 0.25, seed=0) == mix_replay(task, chunks, 0.25, seed=0)


def test_replay_overlapping_heldout_is_refused(tmp_path) -> None:
    replay, heldout = tmp_path / "replay", tmp_path / "heldout"
    replay.mkdir()
    heldout.mkdir()
    (replay / "r.txt").write_text(GENERAL_TEXT[0] + "\n\n" + GENERAL_TEXT[1])
    (heldout / "h.txt").write_text(GENERAL_TEXT[2] + "\n\n" + GENERAL_TEXT[3])
    check_replay_disjoint(replay, heldout)  # disjoint: fine

    with pytest.raises(TrainDataError, match="overlaps the held-out corpus"):
        check_replay_disjoint(heldout, heldout)
    shutil.copy(heldout / "h.txt", replay / "copy.txt")
    with pytest.raises(TrainDataError, match="same file as held-out"):
        check_replay_disjoint(replay, heldout)
    (replay / "copy.txt").unlink()
    (replay / "r2.txt").write_text("Some new words first.\n\n" + GENERAL_TEXT[3].replace(" ", "  "))
    with pytest.raises(TrainDataError, match="shares a paragraph"):
        check_replay_disjoint(replay, heldout)


# ------------------------------------------------------------------ the stage, with MLflow


@pytest.mark.integration
def test_train_stage_logs_everything_to_mlflow(tiny_dir, tmp_path, monkeypatch) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_project(tmp_path / "proj", n_train=24, n_val=6)
    cfg = load_config(profile="test", overrides={"train": {"replay": {"ratio": 0.2}}})
    seen: list[int] = []
    result = pytest.importorskip("tether.model.train").train(
        cfg, root, model_dir=tiny_dir, on_log=lambda step, m: seen.append(step)
    )

    assert result.steps == cfg.train.max_steps and seen
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert result.n_replay_chunks == 6  # 24 task rows at ratio 0.2
    assert result.eval_loss == result.eval_loss and result.base_eval_loss == result.base_eval_loss  # not NaN
    assert result.eval_loss != pytest.approx(result.base_eval_loss, abs=1e-7)

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lora_rank"] == str(cfg.train.lora_rank)
    assert run.data.params["model.base_model"] == cfg.model.base_model
    assert run.data.tags["git_commit"] == "unknown" and run.data.tags["data_hash"] == "untracked"
    assert run.data.tags["config_hash"] == cfg.config_hash()
    assert run.data.tags["base_model_hash"] == result.base_model_hash and len(result.base_model_hash) == 64
    loss_history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss_history] == list(range(1, cfg.train.max_steps + 1))
    assert len(client.get_metric_history(run.info.run_id, "eval_loss")) == 2
    assert client.get_metric_history(run.info.run_id, "tokens_per_second")
    assert client.get_metric_history(run.info.run_id, "learning_rate")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "adapter", "config", "train"} <= artifacts
    adapter_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= adapter_files
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/loss.png"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith((root / "mlflow" / "artifacts").resolve().as_uri())
    # Params come from the config only: nothing from the environment (where secrets live).
    prefixes = ("train.", "model.", "examples.", "data.", "runtime.", "seed")
    assert all(k.startswith(prefixes) for k in run.data.params), sorted(run.data.params)


@pytest.mark.integration
def test_train_stage_refuses_replay_overlapping_heldout(tiny_dir, tmp_path) -> None:
    """Replay that shares text with any drift-panel source is refused before the model is loaded."""
    from tether.eval.sources import PACKAGED_HELDOUT
    from tether.model.train import train

    root = make_project(tmp_path / "proj", n_train=8, n_val=2)
    replay = root / "tether/resources/corpus/replay"
    cfg = load_config(profile="test", overrides={"train": {"replay": {"ratio": 0.2, "corpus_dir": str(replay)}}})
    # A file of the packaged held-out prose (builtin:heldout-prose, in the test profile's panel).
    leak = sorted(PACKAGED_HELDOUT.glob("*.txt"))[0]
    shutil.copy(leak, replay / "leak.txt")
    with pytest.raises(TrainDataError, match="same file as held-out"):
        train(cfg, root, model_dir=tiny_dir)
    (replay / "leak.txt").unlink()
    # One paragraph of a user's own panel folder is enough.
    from test_evaluate import write_corpus

    mine = write_corpus(root / "mine")
    para = (mine / "a.txt").read_text().split("\n\n")[0]
    (replay / "leak.txt").write_text("An unrelated first paragraph of plenty of words.\n\n" + para, encoding="utf-8")
    panel = [*cfg.eval.model_dump()["drift_panel"], {"name": "mine", "source": "mine", "max_tokens": 64}]
    cfg = load_config(profile="test", overrides={"train": {"replay": {"ratio": 0.2, "corpus_dir": str(replay)}},
                                                 "eval": {"drift_panel": panel}})
    with pytest.raises(TrainDataError, match="shares a paragraph"):
        train(cfg, root, model_dir=tiny_dir)


# ------------------------------------------------------------------ the real embedded model


@pytest.mark.slow
def test_embedded_model_trains_three_steps(tmp_path) -> None:
    from tether.model.base import load_base_model

    cfg = load_config(profile="test", overrides={"train": {"max_steps": 3, "batch_size": 2}})
    model, tok, resolved = load_base_model(cfg.model, device="cpu")
    feats = encode_examples(tok, make_examples(6, seed=1), cfg.train.max_length)
    evals = encode_examples(tok, make_examples(2, seed=2), cfg.train.max_length)
    result = fit(model, tok, feats, evals, cfg.train, tmp_path / "run", seed=0)
    assert result.steps == 3 and len(result.train_loss) == 3
    assert all(loss == loss and loss < 20 for _, loss in result.train_loss)
    n_layers = model.config.num_hidden_layers
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert all(int(n.split(".layers.")[1].split(".")[0]) >= n_layers // 2 for n in trainable)
    assert len(resolved.content_hash) == 64
