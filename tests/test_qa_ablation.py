"""The QA ablation end to end at toy size: a tiny random model as the SFT model, a loopback OpenAI-compatible
editor, the real ECQA/QASC/OpenBookQA files, the real BMCTrainer for the four arms, then the table and plot; and a
rerun that resumes from the run folder without a single new editor call or training step."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
from llm_servers import LLMServer, bridge_reply

from bmc_train.testing import build_tiny_model, read_qa_rows

REPO = Path(__file__).resolve().parents[1]
QA = REPO.parent / "shared" / "data" / "qa"

pytestmark = [pytest.mark.skipif(not (QA / "ecqa-train.jsonl").exists(), reason=f"QA data not found at {QA}"), pytest.mark.usefixtures("one_torch_thread")]




def _config(tmp_path: Path, model: Path, server: LLMServer, **overrides):
    from experiments.qa_ablation import AblationConfig

    values = dict(
        small=True, output_dir=str(tmp_path / "run"), results_dir=str(tmp_path / "run"), data_dir=str(QA), model_name_or_path=str(model),
        provider="openai", model="editor-test", base_url=server.openai_base_url, concurrency=4,
        train_problems_per_source=3, test_problems_per_set=3, answer_max_tokens=6, editor_max_tokens=256,
        generation_batch_size=4, learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, max_length=256, bootstrap_samples=200,
    )
    values.update(overrides)
    return AblationConfig(**values)


def test_small_ablation_end_to_end_then_resumes(tmp_path, monkeypatch):
    from experiments.qa_ablation import ARMS, run

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ablation")
    rows = read_qa_rows(QA / "ecqa-train.jsonl", limit=50) + read_qa_rows(QA / "qasc-train.jsonl", limit=50)
    model = build_tiny_model(tmp_path / "sft", [r["problem"] + "\n" + r["solution"] for r in rows])
    with LLMServer(reply=bridge_reply) as server:
        config = _config(tmp_path, model, server, seeds=[0, 1])
        table = run(config)
        calls = server.call_count
        # a random model never states the right answer: every train pair of every seed goes to the editor
        assert calls == 12
        run_dir = tmp_path / "run"
        info = json.loads((run_dir / "run.json").read_text())
        assert set(info["seeds"]) == {"0", "1"}
        for seed in info["seeds"].values():
            assert seed["train_problems"] == 6 and seed["pairs_to_bridge"] == 6 and seed["train_pairs"] == 6
            assert seed["bridge_counts"].get("bridged") == 6
        # the seed changes the train problems and the sampled y_l
        pairs = [datasets.Dataset.from_parquet(str(run_dir / f"seed-{s}" / "pairs.parquet")) for s in (0, 1)]
        assert pairs[0]["prompt"] != pairs[1]["prompt"] and pairs[0]["rejected"] != pairs[1]["rejected"]
        # one row per arm with across-seed statistics
        assert list(table["arm"]) == ["SFT", *ARMS]
        assert (table["seeds"] == 2).all()
        trained = table[table["arm"] != "SFT"]
        assert trained["all_sd"].notna().all() and table.loc[table["arm"] == "SFT", "all_sd"].eq(0).all()
        for arm, settings in ARMS.items():
            for seed in (0, 1):
                done = json.loads((run_dir / f"seed-{seed}" / "models" / arm / "ablation_train.json").read_text())
                assert done["loss_type"] == settings["loss_type"] and done["steps"] == 3 and done["seed"] == seed
        per_seed = [float(v) for v in table.loc[table["arm"] == "DPO-BMC", "per_seed_acc"].item().split()]
        assert len(per_seed) == 2
        assert table.loc[table["arm"] == "DPO-BMC", "all_acc"].item() == pytest.approx(sum(per_seed) / 2)
        # 3 questions x 3 test sets, the same for every seed; the Δ column is paired against DPO
        assert (table["all_n"] == 9).all() and table["all_acc"].between(0, 1).all()
        assert table.loc[table["arm"] == "DPO", "delta_vs_baseline"].isna().all()
        assert table.loc[table["arm"] == "DPO-BMC", "delta_vs_baseline"].notna().all()
        # held-out reward metrics on both pair kinds, for the trained arms only
        assert table.loc[table["arm"] == "SFT", "margin_balanced"].isna().all()
        assert info["heldout_questions"] > 0
        assert table.loc[table["arm"] != "SFT", "heldout_questions"].eq(info["heldout_questions"]).all()
        for kind in ("original", "minimal"):
            assert trained[f"margin_{kind}"].notna().all()
        assert trained["margin_balanced"].to_numpy() == pytest.approx(
            (trained["margin_original"] + trained["margin_minimal"]).to_numpy() / 2)
        with (run_dir / "differences.csv").open() as handle:
            diffs = list(csv.DictReader(handle))
        assert [d["comparison"] for d in diffs] == ["DPO-BMC − DPO", "DPO-BMC − DPO-BC", "DPO-MC − DPO", "DPO-BC − DPO"]
        for d in diffs:
            assert float(d["lo"]) <= float(d["delta"]) <= float(d["hi"]) and d["seeds"] == "2"
        markdown = (run_dir / "results.md").read_text()
        for arm in ARMS:
            assert f"| {arm} |" in markdown
        assert "| DPO-BMC − DPO-BC |" in markdown
        with (run_dir / "results.csv").open() as handle:
            assert len(list(csv.DictReader(handle))) == 5
        assert (run_dir / "results.png").stat().st_size > 10_000

        # resume: nothing is recomputed, no editor call, the same numbers
        weights = run_dir / "seed-1" / "models" / "DPO-BMC" / "model.safetensors"
        stamp = weights.stat().st_mtime_ns
        again = run(_config(tmp_path, model, server, seeds=[0, 1]))
        assert server.call_count == calls
        assert weights.stat().st_mtime_ns == stamp
        assert again.drop(columns=["train_seconds"]).equals(table.drop(columns=["train_seconds"]))
        # a changed setting never silently reuses an output made with the old one
        with pytest.raises(SystemExit, match=r"models/DPO/ablation_train.json was made with other settings "
                                             r"\(learning_rate: 0.001 -> 0.002\)"):
            run(_config(tmp_path, model, server, seeds=[0, 1], learning_rate=2e-3))


def test_bad_data_and_arguments_fail_clearly(tmp_path):
    from experiments.qa_ablation import AblationConfig
    from experiments.qa_ablation.__main__ import main

    with pytest.raises(ValueError, match="unknown arm"):
        AblationConfig(arms="DPO,KTO", data_dir=str(QA)).resolve()
    with pytest.raises(ValueError, match="not a folder"):
        AblationConfig(data_dir=str(tmp_path / "missing")).resolve()
    data = tmp_path / "qa"
    data.mkdir()
    (data / "ecqa-train.jsonl").write_text(json.dumps({"problem": "Q?", "solution": ""}) + "\n")
    with pytest.raises(SystemExit, match=r"ecqa-train.jsonl, line 1: missing \['solution', 'answer'\]"):
        main(["--data_dir", str(data), "--output_dir", str(tmp_path / "run"), "--model_name_or_path", str(tmp_path)])


@pytest.mark.parametrize(
    ("student", "expected"),
    [
        ("Candles go in bedrooms.\nThe answer is roses.", "Candles go in bedrooms.\nThe answer is bedroom"),
        ("The answer is roses\nbecause they smell nice.", "The answer is bedroom\nbecause they smell nice."),
        # a degenerate loop cut at max_tokens: only the text after the last marker changes
        ("The answer is: The answer is: The answ", "The answer is: The answer is: bedroom"),
        ("I am not sure.", "I am not sure.\nThe answer is bedroom"),
    ],
)
def test_minimal_answer_edit(student, expected):
    from bmc_data.pairs.answers import extract_answer
    from experiments.qa_ablation.answer_editor import minimal_answer_edit

    edited = minimal_answer_edit(student, "bedroom")
    assert edited == expected
    assert extract_answer(edited) == "bedroom"


def test_answer_edit_editor_goes_through_bridge_dataset(tmp_path):
    """Wrong answers are REVISEd into ỹ_w that differ from y_l only in the final answer and pass the ground-truth
    check; an already-correct answer gets GOOD and is filtered, as an LLM editor's would."""
    from bmc_data import bridge_dataset
    from experiments.qa_ablation.answer_editor import AnswerEditProvider

    problems = [json.loads(line) for line in (QA / "ecqa-train.jsonl").read_text().splitlines()[:3]]
    pairs = [{"prompt": p["problem"], "chosen": p["solution"], "answer": p["answer"],
              "rejected": f"Let me think.\nThe answer is {'cake' if i < 2 else p['answer']}"}
             for i, p in enumerate(problems)]
    out = bridge_dataset(pairs, task="qa", provider=AnswerEditProvider(), cache_dir=tmp_path, progress=False)
    assert out["bmc_status"] == ["bridged", "bridged", "filtered"]
    for row, pair in zip(out.select(range(2)), pairs):
        assert row["chosen"] == f"Let me think.\nThe answer is {pair['answer']}"
        assert row["rejected"] == pair["rejected"] and row["bmc_provider"] == "answer-edit"


def test_rewards_are_policy_minus_reference_log_probs_times_beta(tmp_path, monkeypatch):
    """r = β (log π_θ − log π_ref) per held-out pair, for every arm against the one SFT reference, which is read
    from disk once however many arms and seeds are scored."""
    from experiments.qa_ablation import AblationConfig
    from experiments.qa_ablation.pipeline import SFT, Stages

    config = AblationConfig(output_dir=str(tmp_path), data_dir=str(QA), beta=0.5, arms="DPO,DPO-BMC").resolve()
    keys = {"question": ["ecqa/0", "ecqa/0", "qasc/1", "qasc/1"], "kind": ["original", "minimal"] * 2}
    logps = {SFT: ([-10.0, -8.0, -12.0, -6.0], [-9.0, -9.0, -7.0, -7.0]),
             "DPO": ([-9.0, -8.5, -11.0, -6.0], [-11.0, -9.5, -8.0, -7.5]),
             "DPO-BMC": ([-10.0, -7.0, -12.5, -5.0], [-9.0, -12.0, -9.0, -7.0])}
    for arm, (chosen, rejected) in logps.items():
        folder = (tmp_path if arm == SFT else tmp_path / "seed-0") / "logps"
        folder.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict({**keys, "logp_chosen": chosen, "logp_rejected": rejected}).to_parquet(
            str(folder / f"{arm}.parquet"))
    reads = []
    real = Stages.logps
    monkeypatch.setattr(Stages, "logps", lambda self, arm: reads.append(arm) or real(self, arm))
    stages = Stages(config, 0)
    reference = Stages(config).logps(SFT).to_pandas()  # as run() reads it, once
    for arm in config.arm_names:
        rewards = stages.rewards(arm, reference)
        assert list(rewards["question"]) == keys["question"] and list(rewards["kind"]) == keys["kind"]
        for side, column in ((0, "reward_chosen"), (1, "reward_rejected")):
            expected = [0.5 * (p - r) for p, r in zip(logps[arm][side], logps[SFT][side])]
            assert list(rewards[column]) == pytest.approx(expected)
    assert reads.count(SFT) == 1
