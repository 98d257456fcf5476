"""A Hub folder of one family carries that family's file and the kit, nothing else, and loads with remote code
(in a subprocess where `turbo_hf` cannot be imported) to the same outputs as the in-package model; a folder saved
with image tokens reduced inside the language model (`llm_layers`) keeps those settings and reduces the same way."""

import subprocess
import sys
import textwrap

import pytest
import torch

from turbo_hf import TurboBlip2ForConditionalGeneration, TurboBlipForConditionalGeneration, TurboCLIPModel, TurboConfig, TurboDinov2Model, TurboInstructBlipForConditionalGeneration, TurboSiglipModel, TurboViTModel
from turbo_hf.modeling import TurboBlip2Config, TurboBlipConfig, TurboCLIPConfig, TurboDinov2Config, TurboInstructBlipConfig, TurboSiglipConfig, TurboViTConfig
from turbo_hf.modeling.hub_export import remote_code_files
from turbo_hf import modeling
from turbo_hf.testing import tiny_models
from turbo_hf.testing.family_tester import CASES as FAMILY_CASES

TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
VISION = dict(image_size=32, patch_size=4, **TOWER)
QFORMER = dict(cross_attention_frequency=1, vocab_size=99, max_position_embeddings=32, **TOWER)
OPT = dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=99,
           word_embed_proj_dim=32)
MERGE = TurboConfig(r=8)


def _pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(3, 90, (batch, 5), generator=torch.Generator().manual_seed(2))


# family file -> (build the Turbo model, the Auto class, inputs, the call whose output is compared)
CASES = {
    "modeling_turbo_vit.py": (
        lambda: TurboViTModel(TurboViTConfig(**VISION, turbo_config=MERGE)),
        "AutoModel", lambda: dict(pixel_values=_pixels()), "model(**inputs).last_hidden_state",
    ),
    "modeling_turbo_dinov2.py": (
        lambda: TurboDinov2Model(TurboDinov2Config(**VISION, turbo_config=MERGE)),
        "AutoModel", lambda: dict(pixel_values=_pixels()), "model(**inputs).last_hidden_state",
    ),
    "modeling_turbo_clip.py": (
        lambda: TurboCLIPModel(TurboCLIPConfig(text_config=dict(vocab_size=99, **TOWER), vision_config=VISION,
                                               projection_dim=16, turbo_config=MERGE)),
        "AutoModel", lambda: dict(pixel_values=_pixels(), input_ids=_ids()), "model(**inputs).logits_per_image",
    ),
    "modeling_turbo_siglip.py": (
        lambda: TurboSiglipModel(TurboSiglipConfig(text_config=dict(vocab_size=99, **TOWER), vision_config=VISION,
                                                   turbo_config=MERGE)),
        "AutoModel", lambda: dict(pixel_values=_pixels(), input_ids=_ids()), "model(**inputs).logits_per_image",
    ),
    "modeling_turbo_blip.py": (
        lambda: TurboBlipForConditionalGeneration(TurboBlipConfig(
            text_config=dict(vocab_size=99, bos_token_id=97, sep_token_id=98, **TOWER), vision_config=VISION,
            turbo_config=MERGE)),
        "AutoModelForImageTextToText", lambda: dict(pixel_values=_pixels(), input_ids=_ids()), "model(**inputs).logits",
    ),
    "modeling_turbo_blip2.py": (
        lambda: TurboBlip2ForConditionalGeneration(TurboBlip2Config(
            vision_config=VISION, qformer_config=QFORMER, text_config=OPT, num_query_tokens=4, image_token_index=98,
            turbo_config=MERGE)),
        "AutoModelForImageTextToText", lambda: dict(pixel_values=_pixels()),
        "model.get_image_features(**inputs).pooler_output",
    ),
    "modeling_turbo_instructblip.py": (
        lambda: TurboInstructBlipForConditionalGeneration(TurboInstructBlipConfig(
            vision_config=VISION, qformer_config=QFORMER, text_config=OPT, num_query_tokens=4, image_token_index=98,
            turbo_config=MERGE)),
        "AutoModelForImageTextToText", lambda: dict(pixel_values=_pixels(), qformer_input_ids=_ids()),
        "model.get_image_features(**inputs).pooler_output",
    ),
}


def _next_family(config_class, factory, merge=MERGE):
    """A Turbo LLaVA-NeXT-style model from the tiny stock config (its fields, a Turbo `model_type`)."""
    fields = {k: v for k, v in factory().to_dict().items() if k not in ("model_type", "transformers_version")}
    return lambda: getattr(modeling, config_class.replace("Config", "ForConditionalGeneration"))(
        getattr(modeling, config_class)(**fields, turbo_config=merge))


def _next_images():
    crops = torch.randn(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return dict(pixel_values=crops, image_sizes=torch.tensor([[32, 64]]))


# LLaVA-NeXT-style families: loaded in one interpreter (one start of Transformers for the three)
NEXT_CASES = {
    "modeling_turbo_llava_next.py": (
        _next_family("TurboLlavaNextConfig", tiny_models.llava_next_config), "AutoModelForImageTextToText",
        _next_images, "model.model.get_image_features(**inputs).pooler_output[0]",
    ),
    "modeling_turbo_llava_onevision.py": (
        _next_family("TurboLlavaOnevisionConfig", tiny_models.llava_onevision_config), "AutoModelForImageTextToText",
        _next_images, "model.model.get_image_features(**inputs).pooler_output[0]",
    ),
    "modeling_turbo_llava_next_video.py": (
        _next_family("TurboLlavaNextVideoConfig", tiny_models.llava_next_video_config, TurboConfig(r=8, video_keep=0.25)),
        "AutoModelForImageTextToText", lambda: dict(pixel_values_videos=_pixels(8).view(2, 4, 3, 32, 32)),
        "model.model.get_video_features(**inputs).pooler_output",
    ),
}


REMOTE_HEADER = "import sys\nsys.modules['turbo_hf'] = None  # any `import turbo_hf` now fails\nimport torch, transformers\n"


def remote_check(folder, auto_class: str, tensors_path, call: str) -> str:
    """The lines that load `folder` with trust_remote_code and print whether `call` gives the saved output."""
    return textwrap.dedent(
        f"""
        inputs, expected = torch.load({str(tensors_path)!r})
        model = getattr(transformers, {auto_class!r}).from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            got = {call}
        print("REMOTE", type(model).__name__, torch.equal(got, expected))
        """
    )


def run_remote_checks(checks: list[str]) -> subprocess.CompletedProcess:
    """Run `remote_check` lines in one fresh interpreter where turbo_hf is not importable."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    script = REMOTE_HEADER + "".join(checks)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


# families whose Turbo classes span two files of their own (BLIP's ITM text encoder merges text tokens)
FAMILY_FILES = {"modeling_turbo_blip.py": {"modeling_turbo_blip.py", "modeling_turbo_blip_text.py"}}
# LLaVA-NeXT-style families carry the Turbo layers of their tower's family
FAMILY_FILES.update({
    "modeling_turbo_llava_next.py": {"modeling_turbo_llava_next.py", "modeling_turbo_clip.py"},
    "modeling_turbo_llava_onevision.py": {"modeling_turbo_llava_onevision.py", "modeling_turbo_siglip.py"},
    "modeling_turbo_llava_next_video.py": {"modeling_turbo_llava_next_video.py", "modeling_turbo_clip.py"},
})


def saved_folder(family_file: str, case: tuple, folder, tensors_path) -> tuple[str, str]:
    """Build and save the Turbo model of `case`, check the folder's files, save the inputs and the in-package output.

    Returns:
        The `remote_check` lines for the folder and the model class name.
    """
    build, auto_class, make_inputs, call = case
    torch.manual_seed(0)
    model = build().eval()
    module_file = sys.modules[type(model).__module__].__file__
    assert module_file.endswith(family_file)
    model.save_pretrained(folder)

    copied = {path.name for path in folder.glob("*.py")}
    assert copied == {path.name for path in remote_code_files(module_file)}
    assert {name for name in copied if name.startswith("modeling_turbo_")} == FAMILY_FILES.get(family_file, {family_file})

    inputs = make_inputs()
    with torch.no_grad():
        expected = eval(call, {}, {"model": model, "inputs": inputs})
    torch.save((inputs, expected), tensors_path)
    return remote_check(folder, auto_class, tensors_path, call), type(model).__name__


@pytest.mark.parametrize("family_file", list(CASES))
def test_a_family_folder_carries_its_file_and_the_kit_only_and_loads_without_the_package(family_file, tmp_path):
    check, name = saved_folder(family_file, CASES[family_file], tmp_path / "turbo", tmp_path / "tensors.pt")
    result = run_remote_checks([check])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"REMOTE {name} True" in result.stdout


def test_llava_next_style_folders_carry_their_files_and_load_without_the_package(tmp_path):
    saved = [saved_folder(family_file, case, tmp_path / f"turbo{i}", tmp_path / f"tensors{i}.pt")
             for i, (family_file, case) in enumerate(NEXT_CASES.items())]
    result = run_remote_checks([check for check, _ in saved])  # one interpreter for the three
    assert result.returncode == 0, result.stderr[-3000:]
    for _, name in saved:
        assert f"REMOTE {name} True" in result.stdout


LLM_CASES = [case for case in FAMILY_CASES if case.in_llm]  # LLaVA's `-llm` cases and Qwen-VL: rows are the logits
LOGITS = "model(**inputs).logits.flatten(1)"


def settings_check(settings: dict) -> str:
    """The line that prints whether the remote model's saved Turbo settings are `settings`."""
    return (
        'saved = model.config.to_dict()["turbo_config"]\n'
        f'print("SETTINGS", type(model).__name__, all(saved[k] == v for k, v in {settings!r}.items()))\n'
    )


def test_in_llm_folders_keep_their_settings_and_load_without_the_package_to_the_same_rows(tmp_path):
    checks, names = [], []
    for i, case in enumerate(LLM_CASES):
        merging = TurboConfig(**case.merging)
        case.build().save_pretrained(tmp_path / f"stock{i}")
        model = getattr(modeling, case.turbo_class).from_pretrained(tmp_path / f"stock{i}", turbo_config=merging).eval()
        folder = tmp_path / f"turbo{i}"
        model.save_pretrained(folder)
        module_file = sys.modules[type(model).__module__].__file__
        assert {path.name for path in folder.glob("*.py")} == {path.name for path in remote_code_files(module_file)}
        inputs = case.inputs(model, turbo=merging)
        with torch.no_grad():
            expected = eval(LOGITS, {}, {"model": model, "inputs": inputs})
        assert torch.equal(expected, case.read(model, inputs))  # the remote call reads the case's rows
        torch.save((inputs, expected), tmp_path / f"tensors{i}.pt")
        checks += [remote_check(folder, case.auto_class, tmp_path / f"tensors{i}.pt", LOGITS),
                   settings_check(merging.settings())]
        names.append(type(model).__name__)
    result = run_remote_checks(checks)  # one interpreter for all of them
    assert result.returncode == 0, result.stderr[-3000:]
    for name in names:
        assert f"REMOTE {name} True" in result.stdout and f"SETTINGS {name} True" in result.stdout, result.stdout
