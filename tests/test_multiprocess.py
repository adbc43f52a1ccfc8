"""Multi-process training, proven on CPU: `accelerate launch --num_processes 2` (gloo) trains three steps of DPO-BMC
with a live and with a precomputed reference and matches one process with the same global batch (loss, logged
metrics, final weights); γ-SimPO keeps one gap queue per process, as upstream."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from launch import REPO, accelerate_launch, launch_env

from bmc_train.losses import gammapo_queue_margins
from bmc_train.margin_queue import GapQueue, queue_file
from bmc_train.testing import build_tiny_model, qa_bridged_rows, read_qa_rows

SHARED_QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"
SCRIPT = REPO / "tests" / "train_ddp.py"

pytestmark = [pytest.mark.skipif(not SHARED_QA.exists(), reason=f"QA data not found at {SHARED_QA}"),
              pytest.mark.slow]  # two launches of three trainings each: about a minute on two cores


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    qa = read_qa_rows(SHARED_QA, limit=24)
    model = build_tiny_model(tmp / "model", [r["problem"] + "\n" + r["solution"] for r in qa])
    data = tmp / "pairs.parquet"
    Dataset.from_list(qa_bridged_rows(qa)[:12]).to_parquet(str(data))
    two = accelerate_launch(SCRIPT, str(model), str(data), str(tmp / "two"), "2")
    assert two.returncode == 0, two.stderr[-4000:]
    one = subprocess.run([sys.executable, str(SCRIPT), str(model), str(data), str(tmp / "one"), "4"], cwd=REPO,
                         env=launch_env(), capture_output=True, text=True, timeout=600, check=False)
    assert one.returncode == 0, one.stderr[-4000:]
    return tmp / "one", tmp / "two"


def _read(folder: Path, name: str, rank: int) -> dict:
    return json.loads((folder / f"{name}_rank{rank}.json").read_text())


@pytest.mark.parametrize("name", ["live", "precomputed"])
def test_two_processes_match_one_process_with_the_same_global_batch(runs, name):
    one, two = runs
    single = _read(one, name, 0)
    ranks = [_read(two, name, r) for r in (0, 1)]
    assert single["world"] == 1 and [r["world"] for r in ranks] == [2, 2]
    # each step's loss is the mean over the global batch: the mean of the two processes' halves
    assert len(single["losses"]) == 3
    for step in range(3):
        halves = (ranks[0]["losses"][step] + ranks[1]["losses"][step]) / 2
        assert halves == pytest.approx(single["losses"][step], abs=1e-6)
    # logged metrics are gathered across processes before they are averaged
    for h1, h2 in zip(single["log_history"], ranks[0]["log_history"], strict=True):
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                    "logps/rejected", "bmc/lambda_chosen_mean", "bmc/diff_fraction_chosen", "num_tokens", "entropy"):
            assert h2[key] == pytest.approx(h1[key], rel=1e-5, abs=1e-6), (key, h1[key], h2[key])
        assert h2["loss"] == pytest.approx(h1["loss"], abs=1e-4)  # rounded to 4 digits by transformers
    assert single["log_history"][-1]["rewards/margins"] != 0  # the policy moved: the match is not trivial
    w1, w2 = torch.load(one / f"{name}_weights.pt"), torch.load(two / f"{name}_weights.pt")
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5


def test_gammapo_queue_is_per_process_as_upstream(runs):
    _, two = runs
    ranks = [_read(two, "gammapo", r) for r in (0, 1)]
    checkpoint = two / "gammapo" / "checkpoint-3"
    beta, gamma0, tau = 2.0, 0.4 * 2.0, 10.0
    step_losses = []
    for rank, record in enumerate(ranks):
        queue = record["queue"]
        warm = GapQueue(seed=0 + rank)  # seeded with seed + process_index
        assert len(queue) == 8 + 3 * 2  # its own warm start, then its own 2 pairs per step, nothing gathered
        assert queue[:8] == pytest.approx(list(warm.gaps))
        saved = json.loads(queue_file(checkpoint, rank).read_text())
        assert saved["gaps"] == pytest.approx(queue)
        # step 1 on this rank: its 2 gaps solved with 2 gaps sampled from its own warm start (256 − 2 ≥ 8 → all 8)
        gaps = torch.tensor(queue[8:10], dtype=torch.float64)
        sampled = torch.tensor(warm.sample(2), dtype=torch.float64)
        margins = gammapo_queue_margins(gaps, sampled, gamma0=gamma0, tau=tau)
        step_losses.append(-torch.nn.functional.logsigmoid(gaps - margins).mean().item())
        assert record["losses"][0] == pytest.approx(step_losses[-1], abs=1e-5)
    assert ranks[0]["queue"][:8] != pytest.approx(ranks[1]["queue"][:8])  # two queues, not one shared
    assert math.isfinite(ranks[0]["log_history"][0]["loss"])
    assert ranks[0]["log_history"][0]["loss"] == pytest.approx(sum(step_losses) / 2, abs=1e-4)
    assert beta == 2.0
