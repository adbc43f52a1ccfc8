"""The metrics `BMCTrainer` logs: TRL's (same names, same definitions) and the `bmc/*` λ statistics, every count
gathered across processes before dividing."""

from __future__ import annotations

import torch

from .losses import bmc_token_weights, token_weight_stats
from .packing import SEQ_LENGTHS

__all__ = ["BMCMetricsMixin"]


class BMCMetricsMixin:
    """Mixed into `BMCTrainer` (uses its accelerator, `_metrics`, `_loss_spec` and args)."""

    def _gathered_sum(self, value: torch.Tensor) -> float:
        return self.accelerator.gather_for_metrics(value.detach().reshape(1)).sum().item()

    def _log_trl_metrics(self, mode, inputs, outputs, seq_len, shift_completion_mask, per_token_logps, out):
        """The metrics TRL's `_compute_loss` logs, under the same names."""
        metrics = self._metrics[mode]
        mask = shift_completion_mask
        total_tokens = self._gathered_sum(mask.sum().float())
        entropy_sum = self._gathered_sum((outputs.entropy[:, -seq_len:].detach() * mask).sum())
        metrics["entropy"].append(entropy_sum / total_tokens if total_tokens > 0 else 0.0)
        if mode == "train":
            real = inputs["attention_mask"] if "attention_mask" in inputs else inputs[SEQ_LENGTHS]  # packed: lengths
            num_tokens = self._gathered_sum(real.sum())
            self._total_train_tokens += int(num_tokens) // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]

        chosen_mask, rejected_mask = mask.bool().chunk(2, dim=0)
        chosen_logits, rejected_logits = outputs.mean_logits[:, -seq_len:].detach().chunk(2, dim=0)
        for name, logits, m in (("chosen", chosen_logits, chosen_mask), ("rejected", rejected_logits, rejected_mask)):
            n = self._gathered_sum(m.sum().float())
            metrics[f"logits/{name}"].append(self._gathered_sum(logits[m].sum()) / n if n > 0 else 0.0)
        chosen_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
        n_chosen = self._gathered_sum(chosen_mask.sum().float())
        correct = self._gathered_sum((chosen_top1 & chosen_mask).sum().float())
        metrics["mean_token_accuracy"].append(correct / n_chosen if n_chosen > 0 else 0.0)

        chosen_rewards = self.accelerator.gather(out.chosen_rewards.detach())
        rejected_rewards = self.accelerator.gather(out.rejected_rewards.detach())
        metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        logps = (per_token_logps.detach() * mask).sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        metrics["logps/chosen"].append(self.accelerator.gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(self.accelerator.gather(rejected_logps).mean().item())

    def _log_bmc_metrics(self, mode, per_token_logps, shift_diff, loss_mask):
        """`bmc/lambda_{chosen,rejected}_mean` (mean λ over diff tokens), `bmc/diff_fraction_*`, capped fraction."""
        metrics = self._metrics[mode]
        weighted = self._loss_spec.token_weighted
        delta = self.args.delta if weighted else None
        weights = bmc_token_weights(per_token_logps, shift_diff, loss_mask, delta=delta)
        keys = ("lambda_sum", "diff_tokens", "tokens", "capped")
        rows = []
        for w, d, m in zip(weights.chunk(2), shift_diff.chunk(2), loss_mask.chunk(2)):
            stats = token_weight_stats(w, d, m, delta=delta)
            rows.append(torch.stack([stats[k].float().reshape(()) for k in keys]))
        # one gather for all the counts: a sync per metric would cost more than the metric itself
        totals = self.accelerator.gather_for_metrics(torch.stack(rows).unsqueeze(0)).sum(dim=0).tolist()
        for side, (lambda_sum, n_diff, n_tokens, _) in zip(("chosen", "rejected"), totals):
            if weighted:
                metrics[f"bmc/lambda_{side}_mean"].append(lambda_sum / n_diff if n_diff > 0 else 1.0)
            metrics[f"bmc/diff_fraction_{side}"].append(n_diff / n_tokens if n_tokens > 0 else 0.0)
        if weighted:
            capped = totals[0][3] + totals[1][3]
            diff_total = totals[0][1] + totals[1][1]
            metrics["bmc/lambda_capped_fraction"].append(capped / diff_total if diff_total > 0 else 0.0)
