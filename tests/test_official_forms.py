"""The related objectives as their authors run them (docs/related-objectives.md): BPO's hinge form
(`balance_hinge_alpha`, sunlin-ai/BPO) and γ-SimPO with its queue of recent reward gaps (`gm-simpo` +
`get_gamma_dq`, sunjie279/gammaPO), against the official code's expressions transcribed into float64 tensors here;
and the queue as trainer state, across steps and across a checkpoint save and restore with the real BMCTrainer."""

from __future__ import annotations

import json
import math
import random
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from loss_batches import float64_default, random_batch  # noqa: F401  (autouse fixture)

from bmc_train.losses import (
    PairLogps,
    bpo_hinge_loss,
    bpo_loss,
    compute_preference_loss,
    gammapo_simpo_loss,
    get_loss_type,
)
from bmc_train.margin_queue import GapQueue, queue_file

REPO = Path(__file__).resolve().parents[1]
SHARED_QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"

_batch = partial(random_batch, b=4)


def _lam(p, d, m, delta):
    if delta is None:
        return m.double()
    return torch.where(d, 1 + torch.clamp(torch.exp(-p), max=delta), torch.ones_like(p)) * m


# --- BPO, hinge form ----------------------------------------------------------------------------------------------


def _official_balance_hinge_alpha(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                                  balance_factor=0.3):
    """sunlin-ai/BPO, train_dpo.py, CustomDPOTrainer.dpo_loss, branch `balance_hinge_alpha`, verbatim."""
    logits = torch.min(chosen_logps - ref_chosen_logps, balance_factor * (ref_rejected_logps - rejected_logps))
    logits = beta * logits
    losses = torch.relu(1 - logits)
    return losses


def test_bpo_hinge_hand_computed_one_pair():
    # the pair of test_bpo_hand_computed_one_pair: Δ_w = log(0.5/0.4) = 0.22314, Δ_l = log(0.8) + log(1.2) = −0.04082
    pc, rc = torch.log(torch.tensor([[0.5, 0.8]])), torch.log(torch.tensor([[0.4, 0.8]]))
    pr, rr = torch.log(torch.tensor([[0.2, 0.6]])), torch.log(torch.tensor([[0.25, 0.5]]))
    m = torch.ones(1, 2, dtype=torch.bool)
    out = bpo_hinge_loss(pc, pr, rc, rr, None, None, m, m, beta=0.5, alpha=0.3, delta=None)
    # min(0.22314, 0.3 · 0.040822 = 0.0122466) = 0.0122466; ReLU(1 − 0.5 · 0.0122466) = 0.9938767
    balanced = -0.3 * (math.log(0.2 / 0.25) + math.log(0.6 / 0.5))
    assert out.losses.item() == pytest.approx(1 - 0.5 * balanced, rel=1e-12)
    assert out.losses.item() == pytest.approx(0.9938767, abs=1e-7)
    # the logistic form of the same pair is a different number: −log σ(0.5 · 0.0122466)
    logistic = bpo_loss(pc, pr, rc, rr, None, None, m, m, beta=0.5, alpha=0.3, delta=None).losses.item()
    assert logistic == pytest.approx(math.log1p(math.exp(-0.5 * balanced)), rel=1e-12)


@pytest.mark.parametrize("delta", [None, 2.0])
def test_bpo_hinge_matches_the_official_expression(delta):
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(21)
    beta = 4.0  # large enough that some pairs pass the hinge (β·margin > 1) and get exactly 0
    out = bpo_hinge_loss(PairLogps(pc, pr, rc, rr, dc, dr, mc, mr), beta=beta, alpha=0.3, delta=delta)
    # the official code sums per-token log-probs; the BMC twin sums them with λ (λ-scaled log-probs, same sums)
    lam_c, lam_r = _lam(pc, dc, mc, delta), _lam(pr, dr, mr, delta)
    official = _official_balance_hinge_alpha((pc * lam_c).sum(1), (pr * lam_r).sum(1), (rc * lam_c).sum(1),
                                             (rr * lam_r).sum(1), beta)
    assert torch.allclose(out.losses, official, atol=1e-12)
    assert (official == 0).any() and (official > 0).any()
    assert torch.allclose(out.chosen_rewards, beta * ((pc - rc) * lam_c).sum(1), atol=1e-12)


def test_bpo_hinge_gradient_is_zero_past_the_hinge_and_constant_before_it():
    pc, pr, rc, rr, _, _, mc, mr = _batch(22)
    beta, alpha = 4.0, 0.3
    pc, pr = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    out = bpo_hinge_loss(pc, pr, rc, rr, None, None, mc, mr, beta=beta, alpha=alpha, delta=None)
    out.losses.sum().backward()
    c = ((pc.detach() - rc) * mc).sum(1)
    r = ((pr.detach() - rr) * mr).sum(1)
    active = beta * torch.minimum(c, -alpha * r) < 1
    chosen_side = c <= -alpha * r
    # d/dpc = −β on the chosen side's completion tokens when that side is the minimum and the hinge is active
    assert torch.allclose(pc.grad, torch.where((active & chosen_side)[:, None], -beta * mc.double(), 0.0))
    assert torch.allclose(pr.grad, torch.where((active & ~chosen_side)[:, None], beta * alpha * mr.double(), 0.0))


# --- γ-SimPO with the queue ---------------------------------------------------------------------------------------


def _official_get_gamma_dq(reward_gap, queue: list, rng: random.Random, *, gamma0, tau, opt_size=256, eps=1e-10):
    """sunjie279/gammaPO, scripts/simpo_trainer.py, get_gamma_dq, transcribed (`random` → `rng`, no device moves)."""
    p_lr = min(0.5 / tau, 1)
    sample_num = min(len(queue), opt_size - reward_gap.numel())
    batch_size = sample_num + reward_gap.numel()
    sampled_gaps = rng.sample(queue, sample_num)
    reward_gaps = torch.tensor(sampled_gaps + reward_gap.tolist(), dtype=reward_gap.dtype)
    p = torch.full_like(reward_gaps, fill_value=1 / batch_size)
    for _ in range(20):
        gamma = gamma0 * batch_size * p
        gamma_grad = gamma0 * batch_size
        KL_grad = tau * (1 + torch.log(batch_size * (p + eps)))
        p_grad = KL_grad + gamma_grad / (1 + torch.exp(reward_gaps - gamma)) / batch_size
        with torch.no_grad():
            exp_grad = torch.exp(-p_lr * p_grad)
            p = p * exp_grad / torch.sum(p * exp_grad)
    gamma = gamma.detach()[-reward_gap.numel():]
    queue.extend(reward_gap.detach().tolist())
    return gamma, sampled_gaps


def _official_gm_simpo(policy_chosen_logps, policy_rejected_logps, queue, rng, *, beta, gamma_beta_ratio, tau):
    """simpo_loss, branch `gm-simpo` (length_norm: the inputs are mean token log-probs)."""
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    reward_gap = beta * pi_logratios
    gamma, sampled = _official_get_gamma_dq(reward_gap, queue, rng, gamma0=gamma_beta_ratio * beta, tau=tau)
    logits = pi_logratios - gamma / beta
    return -F.logsigmoid(beta * logits), sampled


def test_gammapo_simpo_one_pair_hand_computed():
    # one pair, no queue: γ = γ0 = 0.4 · 10 = 4; mean log-probs −0.5 and −0.9 → r = 10 · 0.4 = 4 → −log σ(0) = log 2
    pc = torch.tensor([[-0.5, -0.5, 0.0]])
    pr = torch.tensor([[-0.9, -0.9, -0.9]])
    mc = torch.tensor([[True, True, False]])
    mr = torch.ones(1, 3, dtype=torch.bool)
    out = gammapo_simpo_loss(pc, pr, None, None, None, None, mc, mr, beta=10.0, gamma_beta_ratio=0.4, tau=10.0,
                             delta=None)
    assert out.losses.item() == pytest.approx(math.log(2), rel=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(-5.0) and out.rejected_rewards.item() == pytest.approx(-9.0)


@pytest.mark.parametrize(("delta", "queued"), [(None, 0), (None, 40), (2.0, 40), (None, 600)])
def test_gammapo_simpo_matches_the_official_gm_simpo_with_its_queue(delta, queued):
    """Recipe values (β 10, ratio 0.4, τ 10); a queue shorter than the solve size, and one longer (600: the solve
    takes 256 − B of them), sampled with the same RNG as the official `random.sample`."""
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(23)
    beta, ratio, tau = 10.0, 0.4, 10.0
    history = torch.randn(queued, generator=torch.Generator().manual_seed(1)).tolist()
    lam_c, lam_r = _lam(pc, dc, mc, delta), _lam(pr, dr, mr, delta)
    avg_c, avg_r = (pc * lam_c).sum(1) / mc.sum(1), (pr * lam_r).sum(1) / mr.sum(1)
    official_queue = list(history)
    official, sampled = _official_gm_simpo(avg_c, avg_r, official_queue, random.Random(5), beta=beta,
                                           gamma_beta_ratio=ratio, tau=tau)
    assert len(sampled) == min(queued, 256 - 4)
    ours = gammapo_simpo_loss(PairLogps(pc, pr, None, None, dc, dr, mc, mr), beta=beta, gamma_beta_ratio=ratio, tau=tau,
                              delta=delta, queued_gaps=torch.tensor(sampled))
    assert torch.allclose(ours.losses, official, atol=1e-8)  # the official ε = 1e-10 inside the log is the only gap
    # and our GapQueue draws exactly the official sample from the same history and seed
    queue = GapQueue(seed=5, warm_start=0)
    queue.extend(history)
    assert queue.sample(4) == sampled
    # the gaps the trainer queues afterwards are the official ones
    assert torch.allclose(ours.chosen_rewards - ours.rejected_rewards, torch.tensor(official_queue[-4:]), atol=1e-12)
    if queued:
        in_batch = gammapo_simpo_loss(pc, pr, None, None, dc, dr, mc, mr, beta=beta, gamma_beta_ratio=ratio, tau=tau,
                                      delta=delta)
        assert not torch.allclose(in_batch.losses, ours.losses)  # the queue changes the margins


def test_gammapo_simpo_gradient_treats_the_margins_as_constants():
    pc, pr, _, _, _, _, mc, mr = _batch(24)
    beta, ratio, tau = 10.0, 0.4, 3.0
    queued = torch.tensor([0.5, -1.0, 2.0, 0.1])
    pc, pr = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    out = gammapo_simpo_loss(pc, pr, None, None, None, None, mc, mr, beta=beta, gamma_beta_ratio=ratio, tau=tau,
                             delta=None, queued_gaps=queued)
    out.losses.sum().backward()
    n_c, n_r = mc.sum(1), mr.sum(1)
    gaps = beta * ((pc.detach() * mc).sum(1) / n_c - (pr.detach() * mr).sum(1) / n_r)
    official_gamma, _ = _official_get_gamma_dq(gaps, queued.tolist(), random.Random(0), gamma0=ratio * beta, tau=tau)
    coeff = -beta * torch.sigmoid(-(gaps - official_gamma))
    assert torch.allclose(pc.grad, (coeff / n_c)[:, None] * mc, atol=1e-8)
    assert torch.allclose(pr.grad, -(coeff / n_r)[:, None] * mr, atol=1e-8)


def test_registry_and_dispatch_of_the_new_types():
    for name in ("bpo_hinge", "gammapo_simpo"):
        plain, twin = get_loss_type(name), get_loss_type(f"{name}_bmc")
        assert plain.fn is twin.fn and twin.token_weighted and not plain.token_weighted
    assert not get_loss_type("bpo_hinge").reference_free and get_loss_type("gammapo_simpo").reference_free
    assert get_loss_type("gammapo_simpo").margin_queue and not get_loss_type("gammapo").margin_queue
    cfg = SimpleNamespace(beta=0.1, delta=2.0, bpo_alpha=0.3, gammapo_simpo_beta=10.0, gammapo_gamma_beta_ratio=0.4,
                          gammapo_tau=10.0)
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(25)
    queued = torch.tensor([1.0, 2.0, -3.0])
    via_switch = compute_preference_loss("gammapo_simpo_bmc", cfg, PairLogps(pc, pr, rc, rr, dc, dr, mc, mr),
                                         queued_gaps=queued)
    direct = gammapo_simpo_loss(pc, pr, None, None, dc, dr, mc, mr, beta=10.0, gamma_beta_ratio=0.4, tau=10.0,
                                delta=2.0, queued_gaps=queued)
    assert torch.equal(via_switch.losses, direct.losses)
    hinge = compute_preference_loss("bpo_hinge", cfg, pc, pr, rc, rr, dc, dr, mc, mr)
    assert torch.equal(hinge.losses, bpo_hinge_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=0.1, alpha=0.3,
                                                    delta=None).losses)


# --- the queue as state -------------------------------------------------------------------------------------------


def test_gap_queue_sizes_warm_start_and_state_round_trip(tmp_path):
    queue = GapQueue(maxlen=10, solve_size=6, seed=3)
    assert len(queue) == 8  # the official queue starts with np.random.randn(8)
    assert len(queue.sample(2)) == 4 and len(queue.sample(6)) == 0 and len(queue.sample(9)) == 0
    queue.extend([1.0, 2.0, 3.0, 4.0])
    assert len(queue) == 10 and list(queue.gaps)[-4:] == [1.0, 2.0, 3.0, 4.0]  # the oldest two dropped
    queue.save(tmp_path, 3)
    again = GapQueue(maxlen=10, solve_size=6, seed=99)
    assert again.load(tmp_path, 3)
    assert list(again.gaps) == list(queue.gaps) and again.sample(2) == queue.sample(2)  # same gaps, same RNG
    assert not GapQueue().load(tmp_path, 0)  # no file for process 0: a fresh queue


def test_a_resume_with_another_queue_size_uses_this_runs_sizes(tmp_path, caplog):
    import logging

    queue = GapQueue(maxlen=10, solve_size=6, seed=3, warm_start=0)
    queue.extend([float(g) for g in range(10)])
    queue.save(tmp_path, 0)
    smaller = GapQueue(maxlen=4, solve_size=3, seed=3, warm_start=0)
    with caplog.at_level(logging.WARNING, logger="bmc_train.margin_queue"):
        assert smaller.load(tmp_path, 0)
    assert (smaller.maxlen, smaller.solve_size) == (4, 3) and list(smaller.gaps) == [6.0, 7.0, 8.0, 9.0]
    assert "queue size 10 and solve size 6 differ from this run's 4 and 3" in caplog.text
    assert len(smaller.sample(1)) == 2  # solve size 3, the batch's own gap included


@pytest.mark.skipif(not SHARED_QA.exists(), reason=f"QA data not found at {SHARED_QA}")
@pytest.mark.usefixtures("one_torch_thread")
def test_trainer_queue_persists_across_steps_and_checkpoints(tmp_path):
    """Real BMCTrainer, tiny model, γ-SimPO-BMC: the queue grows by the batch size every step, each checkpoint holds
    the queue of its step, and a run resumed from the first checkpoint ends with the same queue as the uninterrupted
    run (same gaps, same sampling RNG)."""
    from datasets import Dataset

    from bmc_train import BMCConfig, BMCTrainer
    from bmc_train.testing import build_tiny_model, qa_bridged_rows, read_qa_rows

    qa = read_qa_rows(SHARED_QA, limit=16)
    model = build_tiny_model(tmp_path / "tiny", [r["problem"] + "\n" + r["solution"] for r in qa])
    rows = Dataset.from_list([r for r in qa_bridged_rows(qa) if r["bmc_status"] == "bridged"][:8])

    def trainer(out: Path) -> BMCTrainer:
        args = BMCConfig(output_dir=str(out), loss_type="gammapo_simpo_bmc", max_steps=4, save_strategy="steps",
                         save_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, report_to="none",
                         logging_steps=1, gradient_checkpointing=False, max_length=256, disable_tqdm=True,
                         warmup_steps=0, seed=11, gammapo_queue_sample=5)
        return BMCTrainer(str(model), args=args, train_dataset=rows)

    seen: list[int] = []
    first = trainer(tmp_path / "run")
    original = first._gap_queue.sample
    first._gap_queue.sample = lambda b: (seen.append(len(first._gap_queue)), original(b))[1]
    first.train()
    # 8 warm-start gaps, then 2 per step; each solve sees min(len, 5 − 2) = 3 past gaps
    assert seen == [8, 10, 12, 14] and len(first._gap_queue) == 16
    final = first._gap_queue.state_dict()
    at_2 = json.loads(queue_file(tmp_path / "run" / "checkpoint-2", 0).read_text())
    at_4 = json.loads(queue_file(tmp_path / "run" / "checkpoint-4", 0).read_text())
    assert len(at_2["gaps"]) == 12 and at_2["gaps"] == final["gaps"][:12]
    assert at_4 == json.loads(json.dumps(final))
    logged = [h["rewards/margins"] for h in first.state.log_history if "rewards/margins" in h]
    assert final["gaps"][-2:] == pytest.approx([final["gaps"][-2], final["gaps"][-1]])
    assert sum(final["gaps"][-2:]) / 2 == pytest.approx(logged[-1], rel=1e-4)  # the queued gaps are the batch's

    resumed = trainer(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    state = json.loads(json.dumps(resumed._gap_queue.state_dict()))
    assert state["rng_state"] == at_4["rng_state"]
    assert state["gaps"][:12] == at_2["gaps"]
    assert state["gaps"][12:] == pytest.approx(at_4["gaps"][12:], rel=1e-4, abs=1e-5)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("from_eval", [True, False])
def test_evaluation_batches_fill_the_queue_as_upstream_unless_turned_off(tmp_path, from_eval):
    """The official `get_gamma_dq` extends the queue on every call, evaluation included (`gammapo_queue_from_eval`,
    default True); False keeps evaluation from changing the training state."""
    from datasets import Dataset

    from bmc_train import BMCConfig, BMCTrainer
    from bmc_train.testing import build_tiny_model, qa_bridged_rows, read_qa_rows

    qa = read_qa_rows(SHARED_QA, limit=12)
    model = build_tiny_model(tmp_path / "tiny", [r["problem"] + "\n" + r["solution"] for r in qa])
    rows = Dataset.from_list(qa_bridged_rows(qa)[:6])
    args = BMCConfig(output_dir=str(tmp_path / "out"), loss_type="gammapo_simpo", report_to="none",
                     per_device_eval_batch_size=3, gradient_checkpointing=False, max_length=256, disable_tqdm=True,
                     gammapo_queue_from_eval=from_eval)
    trainer = BMCTrainer(str(model), args=args, train_dataset=rows, eval_dataset=rows)
    before = list(trainer._gap_queue.gaps)
    trainer.evaluate()
    after = list(trainer._gap_queue.gaps)
    assert after[:8] == before and len(after) == (8 + 6 if from_eval else 8)
