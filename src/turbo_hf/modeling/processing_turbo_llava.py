"""`TurboLlavaProcessor`: a `LlavaProcessor` that expands each `<image>` into as many placeholders as a Turbo
LLaVA model gives features per image: the model's own count, `llava_token_counts.image_tokens`."""

from __future__ import annotations

from transformers import AutoProcessor, LlavaConfig
from transformers.image_utils import get_image_size, to_numpy_array
from transformers.models.llava.processing_llava import LlavaProcessor
from transformers.processing_utils import MultiModalData

from .configuration_turbo import TurboConfig, as_turbo_config
from .llava_token_counts import check_feature_layer, clip_layer_cost, feature_depth, image_tokens, tower_runtime
from .modeling_turbo_llava import TurboLlavaConfig  # also registers the LLaVA family (`clip_layer_cost` uses it)
from .schedules import LayerCost
from .turbo_encoder import TurboRuntime


def llava_runtime(model) -> TurboRuntime | None:
    """The Turbo runtime of a (patched) LLaVA model or of its inner `LlavaModel`; None when not patched."""
    for module in (model, getattr(model, "model", None)):
        runtime = getattr(module, "turbo_runtime", None) if module is not None else None
        if runtime is not None:
            return runtime
    return None


class TurboLlavaProcessor(LlavaProcessor):
    r"""`LlavaProcessor` whose `<image>` expansion matches a Turbo LLaVA model.

    Build it like a `LlavaProcessor`, then call `sync_with(model)` (or `sync_with(config)`); the settings are
    saved in `processor_config.json` by `save_pretrained` and read back by `from_pretrained`. Without them
    (`turbo_config=None`) it counts like the stock processor.

    Args:
        turbo_config (`dict`, *optional*):
            The Turbo settings of the model (`TurboConfig.settings()`), or None for the stock count.
        turbo_num_layers (`int`, *optional*):
            Vision layers Turbo runs in (those up to the model's `vision_feature_layer`).
        turbo_layer_cost (`list[int]`, *optional*):
            `[attention_per_token, mlp_per_token, hidden_size]` of one vision layer (for FLOP budgets).

    Example:

    ```python
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import CLIPImageProcessorPil, PreTrainedTokenizerFast
    >>> from turbo_hf import TurboLlavaProcessor
    >>> from turbo_hf.modeling import TurboLlavaConfig
    >>> vocab = {"<unk>": 0, "<image>": 1}  # in practice: TurboLlavaProcessor.from_pretrained("llava-hf/...")
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
    ...                                     unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    >>> processor = TurboLlavaProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer, patch_size=14)
    >>> config = TurboLlavaConfig(turbo_config={"r": 16})  # a model works too: `processor.sync_with(model)`
    >>> processor.sync_with(config).num_image_tokens(336, 336)
    208
    ```
    """

    # `save_pretrained` writes an `auto_map` and copies this file (and the flat modules it imports) into the
    # folder, so `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` works without the package.
    _auto_class = "AutoProcessor"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        num_additional_image_tokens=0,
        turbo_config: dict | None = None,
        turbo_num_layers: int | None = None,
        turbo_layer_cost: list[int] | None = None,
        **kwargs,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            num_additional_image_tokens=num_additional_image_tokens,
            **kwargs,
        )
        self._set_turbo(turbo_config, turbo_num_layers, turbo_layer_cost)

    def _set_turbo(self, turbo_config, num_layers, layer_cost) -> None:
        if turbo_config is not None:
            turbo_config = as_turbo_config(turbo_config).settings()
            if num_layers is None or layer_cost is None or len(layer_cost) != 3:
                raise ValueError(
                    "`turbo_config` needs `turbo_num_layers` and `turbo_layer_cost` ([attention, mlp, hidden]): "
                    "call `processor.sync_with(model)` instead of setting them by hand."
                )
            if self.num_additional_image_tokens != 1:
                raise ValueError(
                    "Turbo counts the CLIP [CLS] token: `num_additional_image_tokens` must be 1, got "
                    f"{self.num_additional_image_tokens}."
                )
            layer_cost = [int(value) for value in layer_cost]
        self.turbo_config = turbo_config
        self.turbo_num_layers = None if num_layers is None else int(num_layers)
        self.turbo_layer_cost = layer_cost
        self._runtime = None  # built on the first count

    def sync_with(self, model_or_config) -> "TurboLlavaProcessor":
        """Take the patch size, feature strategy and Turbo settings of a (Turbo) LLaVA model or config.

        A model gives the settings it actually runs with (also when a stock model was patched with
        `apply_turbo`) and its own layer cost; a config gives `config.turbo_config`.

        Returns:
            The processor itself.

        Raises:
            ValueError: when `model_or_config` is not a LLaVA model or config (e.g. a `ViTModel`).
        """
        is_model = hasattr(model_or_config, "config") and hasattr(model_or_config, "state_dict")
        config = model_or_config.config if is_model else model_or_config
        if not isinstance(config, LlavaConfig):
            kind = f"a {type(model_or_config).__name__}" + (f" ({type(config).__name__})" if is_model else "")
            raise ValueError(
                "`TurboLlavaProcessor.sync_with` needs a (Turbo) LLaVA model or config (LlavaForConditionalGeneration, "
                f"LlavaModel, their Turbo classes, LlavaConfig or TurboLlavaConfig), got {kind}."
            )
        runtime = llava_runtime(model_or_config) if is_model else None
        if is_model:  # the settings it runs with (an unpatched stock model merges nothing)
            turbo = runtime.config if runtime is not None else TurboConfig()
        else:
            turbo = as_turbo_config(getattr(config, "turbo_config", None))
        check_feature_layer(config.vision_feature_layer, turbo)
        vision = config.vision_config
        num_layers = feature_depth(config.vision_feature_layer, vision.num_hidden_layers)
        cost = clip_layer_cost(vision)
        if runtime is not None and runtime.num_layers == num_layers:
            cost = runtime.cost
        self.patch_size = vision.patch_size
        self.vision_feature_select_strategy = config.vision_feature_select_strategy
        self.num_additional_image_tokens = 1
        self._set_turbo(turbo.settings(), num_layers, [cost.attention_per_token, cost.mlp_per_token, cost.hidden_size])
        return self

    def num_image_tokens(self, height: int, width: int) -> int:
        """`<image>` placeholders for one image of `height` x `width` pixels (after the image processor)."""
        tokens = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        if self.turbo_config is not None and self._runtime is None:
            cost = LayerCost(*self.turbo_layer_cost)  # the cost `sync_with` took, as saved in processor_config.json
            self._runtime = tower_runtime(self.turbo_config, self.turbo_num_layers, cost)
        return image_tokens(self._runtime, tokens, self.vision_feature_select_strategy)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        # Copied from transformers.models.llava.processing_llava.LlavaProcessor.replace_image_token (v5.24)
        pixel_values = image_inputs["pixel_values"][image_idx]
        height, width = get_image_size(to_numpy_array(pixel_values))
        return self.image_token * self.num_image_tokens(height, width)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        # Copied from transformers.models.llava.processing_llava.LlavaProcessor._get_num_multimodal_tokens (v5.24)
        vision_data = {}
        if image_sizes is not None:
            images_kwargs = self._merge_kwargs(**kwargs)["images_kwargs"]
            crop_size = images_kwargs.get("crop_size", None) or self.image_processor.crop_size
            count = self.num_image_tokens(crop_size["height"], crop_size["width"])
            vision_data.update(
                {"num_image_tokens": [count] * len(image_sizes), "num_image_patches": [1] * len(image_sizes)}
            )
        return MultiModalData(**vision_data)


AutoProcessor.register(TurboLlavaConfig, TurboLlavaProcessor, exist_ok=True)

__all__ = ["TurboLlavaProcessor"]
