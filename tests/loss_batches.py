"""Shared inputs for the pure-loss tests: random per-token log-probs with ragged completions, in float64."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def float64_default():
    """Exact comparisons with hand-computed values; restored so other test files keep float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def random_batch(seed: int = 0, b: int = 3, t: int = 7):
    """(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_diff, rejected_diff, chosen_mask,
    rejected_mask) for b ≤ 4 pairs: log-probs as a policy gives them (π in (0.05, 0.99)), ragged completions and
    about 40% diff tokens."""
    if not 1 <= b <= 4:
        raise ValueError(f"b must be in 1..4, got {b}")
    g = torch.Generator().manual_seed(seed)
    logp = lambda: -torch.rand(b, t, generator=g) * 3 - 0.01  # noqa: E731
    pc, pr, rc, rr = logp(), logp(), logp(), logp()
    lengths_c = torch.tensor([t, t - 2, t - 3, t - 1])[:b]
    lengths_r = torch.tensor([t - 1, t, t - 4, t - 2])[:b]
    pos = torch.arange(t)
    mc = pos[None, :] < lengths_c[:, None]
    mr = pos[None, :] < lengths_r[:, None]
    dc = (torch.rand(b, t, generator=g) < 0.4) & mc
    dr = (torch.rand(b, t, generator=g) < 0.4) & mr
    return pc, pr, rc, rr, dc, dr, mc, mr
