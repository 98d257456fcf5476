"""`turbo_hf.evaluation.loading`: the family check the scripts run before loading anything, on stock and Turbo
checkpoints (the scripts' refusals end to end: tests/scripts/test_eval_scripts.py)."""

from __future__ import annotations

import pytest

from turbo_hf.evaluation.loading import GENERATIVE_FAMILIES, RETRIEVAL_FAMILIES, check_family, model_type_of
from turbo_hf.evaluation.settings import UsageError
from turbo_hf.modeling import TurboBlip2Config
from turbo_hf.testing.tiny_models import blip2_config


def test_a_turbo_checkpoint_counts_as_its_stock_family(tmp_path):
    TurboBlip2Config(**blip2_config().to_dict()).save_pretrained(tmp_path)
    assert '"model_type": "turbo_blip_2"' in (tmp_path / "config.json").read_text()
    assert check_family(str(tmp_path), GENERATIVE_FAMILIES) == "blip-2"

    class Model:
        config = TurboBlip2Config()

    assert model_type_of(Model()) == "blip-2"  # the family's default prompts apply to its Turbo checkpoints
    with pytest.raises(UsageError, match=r"is a 'blip-2' model; this script evaluates CLIP \(clip\), SigLIP"):
        check_family(str(tmp_path), {k: v for k, v in RETRIEVAL_FAMILIES.items() if k != "blip-2"})


def test_a_missing_folder_is_named():
    with pytest.raises(UsageError, match="--model: the local path './nowhere' does not exist"):
        check_family("./nowhere", GENERATIVE_FAMILIES)
