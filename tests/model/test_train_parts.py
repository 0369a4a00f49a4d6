"""Pieces of tether.model.train on their own: the resume point, the Trainer's arguments, one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.config import load_config
from tether.model.train import checkpoint_complete, is_main_process, last_checkpoint, process_rank, wait_for_everyone
from tether.model.train.fit import ARGS_FROM_CONFIG, training_arguments


def _checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_last_checkpoint_is_the_newest_complete_one(tmp_path: Path, caplog) -> None:
    assert last_checkpoint(tmp_path / "missing") is None
    assert last_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 10)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # by step, not by name

    cut = _checkpoint(tmp_path, 12, complete=False)  # killed mid-save
    (tmp_path / "checkpoint-14").mkdir()
    (tmp_path / "checkpoint-14" / "trainer_state.json").write_text("{\"global_st")  # killed mid-write
    (tmp_path / "checkpoint-99").write_text("a file, not a checkpoint")
    with caplog.at_level("WARNING", logger="tether.model.train.checkpoints"):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-14 is incomplete" in caplog.text and "checkpoint-12 is incomplete" in caplog.text
    assert cut.is_dir()  # left for a post-mortem
    assert not checkpoint_complete(cut) and checkpoint_complete(tmp_path / "checkpoint-2")


def test_only_incomplete_checkpoints_resume_nothing(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 4, complete=False)
    assert last_checkpoint(tmp_path) is None


def test_training_arguments_come_from_the_train_section(tmp_path: Path) -> None:
    tc = load_config(profile="test", overrides={"train": {"batch_size": 3, "learning_rate": 0.01, "max_steps": 7,
                                                          "save_every": 4, "eval_every": 2}}).train
    assert set(ARGS_FROM_CONFIG.values()) <= set(type(tc).model_fields)
    args = training_arguments(tc, tmp_path, seed=5, use_cpu=True, bf16=False, has_eval=True)
    for arg, field in ARGS_FROM_CONFIG.items():
        assert getattr(args, arg) == getattr(tc, field), arg
    assert (args.max_steps, args.eval_steps, args.seed, args.data_seed) == (7, 2, 5, 5)
    assert args.load_best_model_at_end == (tc.early_stopping_patience is not None)
    assert args.report_to == []  # MLflow is logged by StepMetrics, not the built-in integration

    no_eval = training_arguments(tc.model_copy(update={"max_steps": None}), tmp_path, seed=5, use_cpu=True, bf16=False,
                                 has_eval=False)
    assert no_eval.max_steps == -1 and no_eval.eval_strategy == "no" and not no_eval.load_best_model_at_end


def test_a_single_process_is_rank_0_of_1_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    for cpu in (True, False):
        assert process_rank(cpu=cpu) == (0, 1)
        assert is_main_process(cpu=cpu)
        wait_for_everyone(cpu=cpu)  # a no-op
    assert not (dist.is_available() and dist.is_initialized())
