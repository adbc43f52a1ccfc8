"""γ-SimPO's queue of recent reward gaps, kept by the trainer across steps and saved with each checkpoint.

The authors solve for the target margins over past gaps as well as the current batch's (`sunjie279/gammaPO`,
`scripts/simpo_trainer.py`, `get_gamma_dq`): each step samples `min(len(queue), 256 − B)` gaps without replacement
from a queue that keeps the last 2048, solves over [sampled; current], and then appends the current batch's gaps.
Their queue starts with 8 standard-normal draws (`collections.deque(np.random.randn(8), maxlen=2048)`); so does
this one, drawn from its own seeded generator.

State is per process, as in the official code (each rank keeps and samples its own deque; nothing is
all-gathered): with N processes there are N queues, each filled with its own rank's micro-batches, each seeded
with `seed + process_index` and each saved to its own file, `gammapo_gap_queue_<process_index>.json`, in the
checkpoint folder (beside TRL's `rng_state_<process_index>.pth`). Resuming with the same number of processes
restores every queue exactly (gaps and sampling RNG); a process that finds no file for its index starts a fresh
queue and says so.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["GapQueue", "GapQueueCallback", "queue_file"]

logger = logging.getLogger(__name__)

OFFICIAL_QUEUE_SIZE = 2048  # `reward_gap_queue_size`
OFFICIAL_SOLVE_SIZE = 256  # `opt_size`: gaps per solve, the current batch's included
OFFICIAL_WARM_START = 8  # `np.random.randn(8)`


def queue_file(folder: str | Path, process_index: int) -> Path:
    return Path(folder) / f"gammapo_gap_queue_{process_index}.json"


class GapQueue:
    """The last `maxlen` reward gaps of one process and the RNG that samples them."""

    def __init__(self, maxlen: int = OFFICIAL_QUEUE_SIZE, solve_size: int = OFFICIAL_SOLVE_SIZE, *, seed: int = 0,
                 warm_start: int = OFFICIAL_WARM_START):
        if maxlen < 1 or solve_size < 1:
            raise ValueError(f"GapQueue needs maxlen >= 1 and solve_size >= 1, got {maxlen} and {solve_size}")
        self.maxlen, self.solve_size = maxlen, solve_size
        self._rng = random.Random(seed)
        start = np.random.default_rng(seed).standard_normal(warm_start).tolist() if warm_start else []
        self.gaps: collections.deque[float] = collections.deque(start, maxlen=maxlen)

    def __len__(self) -> int:
        return len(self.gaps)

    def sample(self, batch_size: int) -> list[float]:
        """`min(len, solve_size − batch_size)` past gaps, drawn without replacement (official `random.sample`)."""
        k = max(0, min(len(self.gaps), self.solve_size - batch_size))
        return self._rng.sample(list(self.gaps), k)

    def extend(self, gaps: Iterable[float]) -> None:
        self.gaps.extend(float(g) for g in gaps)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {"maxlen": self.maxlen, "solve_size": self.solve_size, "gaps": list(self.gaps),
                "rng_state": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the gaps and the RNG. The sizes stay this run's (its config), so a resume with another
        `gammapo_queue_size` or solve size takes effect, with a warning; the newest gaps are kept."""
        saved = (int(state["maxlen"]), int(state["solve_size"]))
        if saved != (self.maxlen, self.solve_size):
            logger.warning("γ-SimPO gap queue: the checkpoint's queue size %d and solve size %d differ from this "
                           "run's %d and %d; this run's are used (the newest gaps are kept)", *saved, self.maxlen,
                           self.solve_size)
        self.gaps = collections.deque((float(g) for g in state["gaps"]), maxlen=self.maxlen)
        version, internal, gauss = state["rng_state"]
        self._rng.setstate((version, tuple(internal), gauss))

    def save(self, folder: str | Path, process_index: int) -> Path:
        path = queue_file(folder, process_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state_dict()))  # floats round-trip exactly through JSON
        os.replace(tmp, path)
        return path

    def load(self, folder: str | Path, process_index: int) -> bool:
        """Restore from a checkpoint folder; False (and a warning) when it holds no queue for this process."""
        path = queue_file(folder, process_index)
        if not path.is_file():
            logger.warning("%s: no γ-SimPO gap queue for process %d in this checkpoint; starting a fresh queue",
                           folder, process_index)
            return False
        self.load_state_dict(json.loads(path.read_text()))
        return True


class GapQueueCallback(TrainerCallback):
    """Writes the process's queue into each checkpoint folder the trainer saves."""

    def __init__(self, queue: GapQueue):
        self.queue = queue

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        self.queue.save(folder, args.process_index)
        return control
