"""No option is silently ignored: every field BMCConfig inherits from TRL's DPOConfig is honoured or refused for the
chosen loss_type (bmc_train/option_audit.py; the table in docs/training.md), and BMC's own knobs that the loss type
does not read are named in a warning."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainingArguments
from trl import DPOConfig

from bmc_train import BMCConfig
from bmc_train.option_audit import DPOCONFIG_OPTIONS, unused_bmc_options

REPO = Path(__file__).resolve().parents[1]


def _config(**kwargs) -> BMCConfig:
    return BMCConfig("unused", report_to="none", **kwargs)


def test_every_dpoconfig_field_is_audited():
    inherited = {f.name for f in dataclasses.fields(DPOConfig)} - {f.name for f in dataclasses.fields(TrainingArguments)}
    assert inherited == set(DPOCONFIG_OPTIONS)  # a field TRL adds must get a rule (and a docs row)
    docs = (REPO / "docs" / "training.md").read_text()
    for name in DPOCONFIG_OPTIONS:
        assert f"| `{name}` |" in docs, name


@pytest.mark.parametrize("loss_type", ["dpo", "bmc", "dpo_bmc", "rdpo", "rdpo_bmc", "simpo", "simpo_bmc", "amapo",
                                       "amapo_bmc"])
def test_label_smoothing_is_honoured_where_the_authors_define_it(loss_type):
    assert _config(loss_type=loss_type, label_smoothing=0.1).label_smoothing == 0.1


@pytest.mark.parametrize("loss_type", ["ipo", "ipo_bmc", "orpo", "orpo_bmc", "figa", "bpo", "bpo_hinge_bmc", "gammapo",
                                       "gammapo_simpo_bmc", "repo", "madpo_bmc"])
def test_label_smoothing_is_refused_where_it_would_be_ignored(loss_type):
    with pytest.raises(ValueError, match=rf"label_smoothing=0.1 with loss_type='{loss_type}': .*define no label "
                                         r"smoothing.*honoured by .*bmc"):
        _config(loss_type=loss_type, label_smoothing=0.1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"loss_type": "gammapo_simpo", "beta": 0.1}, r"beta=0.1 .*does not read beta .*gammapo_simpo_beta"),
    ({"ld_alpha": 0.5}, r"ld_alpha=0.5 .*does not implement it"),
    ({"loss_weights": [1.0]}, r"loss_weights=\[1.0\] .*does not implement it"),
    ({"use_weighting": True}, r"use_weighting=True .*does not implement it"),
    ({"f_divergence_type": "js_divergence"}, r"f_divergence_type='js_divergence' .*reverse-KL"),
    ({"f_alpha_divergence_coef": 0.3}, r"f_alpha_divergence_coef=0.3 .*only TRL's own loss types"),
    ({"discopop_tau": 0.1}, r"discopop_tau=0.1 .*only TRL's own loss types"),
    ({"precompute_ref_batch_size": 8}, r"precompute_ref_batch_size=8 .*only sizes the reference precompute"),
    ({"loss_type": "simpo", "sync_ref_model": True}, r"sync_ref_model=True .*reference-free"),
    ({"ref_model_sync_steps": 64}, r"ref_model_sync_steps=64 .*only applies with sync_ref_model=True"),
    ({"ref_model_mixup_alpha": 0.9}, r"ref_model_mixup_alpha=0.9 .*only applies with sync_ref_model=True"),
    ({"loss_type": "orpo", "precompute_ref_log_probs": True}, r"reference-free.*nothing to precompute"),
])
def test_inherited_options_that_would_be_ignored_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _config(**kwargs)


def test_honoured_inherited_options_are_accepted():
    config = _config(loss_type="bmc", sync_ref_model=True, ref_model_sync_steps=64, precompute_ref_batch_size=None,
                     padding_free=True, pad_to_multiple_of=8, beta=0.01)
    assert config.padding_free and config.sync_ref_model


def test_bmc_knobs_the_loss_type_does_not_read_get_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="bmc_train.option_audit"):
        config = _config(loss_type="dpo", delta=3.0, figa_alpha=2.0)
    assert unused_bmc_options(config) == ["delta", "figa_alpha"]
    assert "loss_type='dpo' does not read delta=3.0, figa_alpha=2.0: they have no effect" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bmc_train.option_audit"):
        assert unused_bmc_options(_config(loss_type="bmc", delta=3.0)) == []
    assert "does not read" not in caplog.text


def test_cli_refuses_an_ignored_option_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "bmc_train", "--loss_type", "ipo", "--label_smoothing", "0.1",
                           "--model_name_or_path", "nowhere", "--dataset_name", "nowhere", "--output_dir", "out"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "label_smoothing=0.1 with loss_type='ipo'" in lines[0], proc.stderr
