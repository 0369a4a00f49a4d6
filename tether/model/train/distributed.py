"""Several training processes (torchrun / ``accelerate launch``): rank, main process, barrier.

Answers come from :class:`accelerate.PartialState`, the process state the Trainer itself builds on.
Launched alone (no ``LOCAL_RANK`` / ``WORLD_SIZE`` in the environment) it creates no process group:
rank 0 of 1, and the barrier is a no-op. Under a launcher the first call forms the process group
(NCCL on GPUs, gloo for CPU training) and the Trainer reuses it.

``cpu`` says whether this process trains on the CPU. It must match the Trainer's ``use_cpu``:
accelerate reads a launch on a machine without GPUs as distributed only when told the CPU is
meant, and on a GPU machine a CPU run needs gloo, not NCCL. It only matters on the first call of a
process (or the first after the Trainer reset the state); later calls share the state formed then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import PartialState


def _state(cpu: bool) -> "PartialState":
    from accelerate import PartialState

    # A fresh handle each time: TrainingArguments resets the shared state and forms its own.
    return PartialState(cpu=cpu)


def process_rank(cpu: bool = False) -> tuple[int, int]:
    """``(rank, world size)`` of this process (``(0, 1)`` when it runs alone).

    Args:
        cpu: this process trains on the CPU (see the module docstring).
    """
    state = _state(cpu)
    return state.process_index, state.num_processes


def process_device(cpu: bool = False) -> str:
    """The device accelerate gives this process: ``cuda:<local rank>`` on GPUs, ``cpu`` when told so."""
    return str(_state(cpu).device)


def is_main_process(cpu: bool = False) -> bool:
    """Whether this process logs to MLflow and writes the adapter (rank 0, or a single process)."""
    return _state(cpu).is_main_process


def wait_for_everyone(cpu: bool = False) -> None:
    """A barrier across the training processes; a no-op for a single process."""
    _state(cpu).wait_for_everyone()
