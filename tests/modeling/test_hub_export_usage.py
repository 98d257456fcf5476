"""What a user of the Turbo classes meets around `from_pretrained` / `save_pretrained` (`hub_export.py`): no
stock-type warning on the recommended load path, the settings in `print(model)`, saved folders in `pipeline()`."""

import numpy as np
import pytest
import torch
import transformers

from turbo_hf import TurboConfig

pytestmark = pytest.mark.usefixtures("one_thread")

def _stock_dinov2_folder(folder):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=56, patch_size=14)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(folder)
    return folder


def test_loading_a_stock_checkpoint_into_a_turbo_class_prints_no_type_warning(tmp_path, caplog):
    """Transformers warns "a model of type `dinov2` to instantiate a model of type `turbo_dinov2` ... can yield
    errors" on that path: the supported one, so exactly that message is dropped, and only while we load."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from turbo_hf import TurboDinov2Model
    from turbo_hf.modeling import TurboViTConfig

    folder = _stock_dinov2_folder(tmp_path / "stock")
    with caplog.at_level("WARNING"):
        TurboDinov2Model.from_pretrained(folder, turbo_config=TurboConfig(r=2))
        assert not [record for record in caplog.records if "to instantiate a model of type" in record.getMessage()]
        TurboViTConfig.from_pretrained(folder)  # another family's checkpoint still warns
    assert "You are using a model of type `dinov2` to instantiate a model of type `turbo_vit`" in caplog.text
    assert not hf_logging.get_logger("transformers.configuration_utils").filters
    assert AutoConfig.from_pretrained(folder).model_type == "dinov2"


def test_print_model_shows_the_turbo_settings(tmp_path):
    from turbo_hf import TurboDinov2Model, apply_turbo, remove_turbo

    folder = _stock_dinov2_folder(tmp_path / "stock")
    model = TurboDinov2Model.from_pretrained(folder, turbo_config=TurboConfig(r=2, mode="tome"))
    assert str(model).splitlines()[:2] == ["TurboDinov2Model(", "  turbo: r=2, mode='tome'"]
    stock = transformers.Dinov2Model.from_pretrained(folder)
    assert "turbo:" not in str(stock)
    apply_turbo(stock, TurboConfig(r=1, min_tokens=3))
    assert "  turbo: r=1, mode='turbo', alpha=0.02, alpha_scale='length', min_tokens=3" in str(stock)
    assert "turbo:" not in str(remove_turbo(stock))


@pytest.mark.parametrize("task", ["image-feature-extraction", "image-classification"])
def test_a_saved_turbo_folder_with_its_processor_runs_in_a_pipeline(task, tmp_path):
    """`save_pretrained` saves the model; `processor.save_pretrained(folder)` next to it (as `turbo-hf export`
    does) is what `pipeline(...)` needs."""
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    from turbo_hf import TurboDinov2ForImageClassification, TurboDinov2Model

    stock = _stock_dinov2_folder(tmp_path / "stock")
    turbo_class = TurboDinov2Model if task == "image-feature-extraction" else TurboDinov2ForImageClassification
    model = turbo_class.from_pretrained(stock, turbo_config=TurboConfig(r=2))
    folder = tmp_path / "turbo"
    model.save_pretrained(folder)
    assert not (folder / "preprocessor_config.json").exists()  # the model alone: save the processor too
    AutoImageProcessor.from_pretrained(stock).save_pretrained(folder)
    image = Image.fromarray((np.random.default_rng(0).random((70, 90, 3)) * 255).astype("uint8"))
    result = pipeline(task, model=str(folder), device="cpu")(image)
    if task == "image-feature-extraction":
        assert np.asarray(result).shape == (1, 17 - 2 * 2, 32)  # 16 patches + [CLS], 2 merged in each layer
    else:
        assert {"label", "score"} <= set(result[0])


def test_export_saves_the_processor_so_the_folder_runs_in_a_pipeline(tmp_path):
    from PIL import Image
    from transformers import pipeline

    from turbo_hf.cli.export import export_model

    stock = _stock_dinov2_folder(tmp_path / "stock")
    out = export_model(stock, "dinov2-small", tmp_path / "out", overrides={"r": 1})
    assert (out / "preprocessor_config.json").exists()
    features = pipeline("image-feature-extraction", model=str(out), device="cpu")(Image.new("RGB", (60, 60)))
    assert np.asarray(features).shape == (1, 17 - 2, 32)
