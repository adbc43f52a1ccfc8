"""A small, honest replication of the BMC paper's QA ablation: DPO vs DPO-BC vs DPO-MC vs DPO-BMC.

    python -m experiments.qa_ablation --small --seeds 0 1 2     # CPU, about an hour on 2 shared cores
    python -m experiments.qa_ablation --device cuda --seeds 0 1 2 --output_dir runs/full   # full size, one GPU

See docs/qa-ablation.md for the setup and the measured results.
"""

from .config import ARMS, AblationConfig

__all__ = ["ARMS", "AblationConfig", "run"]


def run(config: AblationConfig):
    from .__main__ import run as _run

    return _run(config)
