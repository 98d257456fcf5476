"""`TurboConfig`: every knob of Turbo token merging, validated when it is created."""

from __future__ import annotations

import difflib
import functools
import math

from transformers import PreTrainedConfig

from .setting_checks import (
    allowed,
    keep_ratios,
    llm_reduction_settings,
    non_negative_int,
    per_layer_r,
    unet_settings,
    video_keep,
)

MODES = ("turbo", "tome", "semantic", "random")
REDUCTIONS = ("merge", "prune")
SCHEDULES = ("constant", "decreasing")
ALPHA_SCALES = ("length", "raw", "rank", "zscore")
LLM_TEXT_QUERIES = ("last", "all")
TOKEN_ORDERS = ("spatial", "tome")
# settings only one family takes (the others refuse them when set): family name -> (what takes them, names)
FAMILY_SETTINGS = {
    "unet": ("Stable Diffusion's UNet (diffusers' UNet2DConditionModel, with turbo-hf[diffusion])",
             ("merge_ratio", "merge_components", "max_downsample", "merge_stride", "random_cell")),
}

# Chosen from measurements on the real DINOv2-S/14 (see README, "Choosing alpha"): with the semantic value
# normalised by its mean over the non-[CLS] tokens, a small weight keeps ToMe's quality at every length.
DEFAULT_ALPHA = 0.02
DEFAULT_ALPHA_SCALE = "length"


@functools.cache
def _generic_keys() -> frozenset[str]:
    """What a plain `PreTrainedConfig` carries (or `to_dict` writes) besides the Turbo settings: accepted."""
    return frozenset(PreTrainedConfig().to_dict()) | {"name_or_path", "_commit_hash", "attn_implementation"}


def check_setting_names(names, where: str = "TurboConfig") -> None:
    """Refuse keys that are not Turbo settings, naming the closest valid one (`rr` -> `r`).

    Generic `PreTrainedConfig` fields (`model_type`, `transformers_version`, ...) pass.
    """
    valid = list(TurboConfig.__annotations__)
    for name in names:
        if name in TurboConfig.__annotations__ or name in _generic_keys():
            continue
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise ValueError(f"{where} got an unknown setting `{name}`.{hint} Valid settings: {', '.join(valid)}.")


class TurboConfig(PreTrainedConfig):
    r"""
    Settings of Turbo token merging (Ju et al., ECCV 2024) for a vision encoder.

    In each transformer block, after attention and before the MLP, `r` tokens are merged into their most
    similar partner. Which ones go is decided by the information degree `E = R - alpha * A`, where `R` is a
    token's mutual redundancy (its largest key cosine similarity with the other set of a bipartite split)
    and `A` its semantic value (the attention the [CLS] token pays to it).

    Args:
        r (`int` or `list[int]`, *optional*):
            Tokens removed per layer: one number for every layer, or a list with one entry per layer.
            Exactly one of `r` and `flops_ratio` may be given; neither means `r=0` (the stock model).
        flops_ratio (`float`, *optional*):
            Budget instead of `r`: the fraction of the stock encoder's FLOPs to keep, in (0, 1]. The least
            reduction that stays within it is derived for the model and the input length it runs on.
        schedule (`str`, defaults to `"constant"`):
            How an integer `r` is spread over layers: `"constant"` (the same `r` everywhere) or `"decreasing"`
            (from `2r` in the first layer linearly down to 0 in the last, the same total).
        mode (`str`, defaults to `"turbo"`):
            What decides which tokens merge: `"turbo"` (information degree), `"tome"` (redundancy only, i.e.
            `alpha=0`), `"semantic"` (semantic value only: the least attended go first) or `"random"` (seeded,
            see `seed`). With `token_order="spatial"`, `"tome"` makes ToMe's merge decisions but keeps the tokens
            in spatial order; with `token_order="tome"` it is ToMe (Bolya et al.) step for step, output order
            included. Ties in priority go to the lower position in every mode.
        reduction (`str`, defaults to `"merge"`):
            `"merge"` averages a removed token into its partner (weighted by size); `"prune"` drops it.
        alpha (`float`, defaults to 0.02):
            Weight of the semantic value in the information degree. Its meaning depends on `alpha_scale`.
        alpha_scale (`str`, defaults to `"length"`):
            How `A` is put on the scale of `R`: `"length"` divides it by its mean over the non-[CLS] tokens
            (so uniform attention gives 1 at any sequence length), `"raw"` uses the attention probability as
            the paper does (`alpha` is then the paper's alpha'), `"rank"` and `"zscore"` compare ranks or
            z-scores of `R` and `A` over the candidates.
        semantic_start_layer (`int`, defaults to 0):
            The semantic term is used from this layer on; earlier layers merge by redundancy only.
        min_tokens (`int`, defaults to 0):
            Merging stops before fewer than this many tokens would remain (the research code used 40, and
            100 for retrieval; the shipped presets set it).
        proportional_attention (`bool`, defaults to `True`):
            Add `log(size)` to the attention logits of merged tokens so they weigh as much as the tokens
            they replaced.
        restore_output (`bool`, defaults to `False`):
            Unmerge the encoder output back to the full token grid (each merged token copied to every
            position it stands for), for heads and users that need one feature per patch.
        seed (`int`, defaults to 0):
            Seed of the `"random"` mode: the same seed removes the same tokens on every call. Each layer draws
            one priority per candidate position from a generator seeded by `(seed, layer)`, shared by every row
            of the batch, so a row loses the same tokens in any batch as alone.
        token_order (`str`, defaults to `"spatial"`):
            Order of the tokens after each merge: `"spatial"` keeps the kept tokens in their original relative
            order; `"tome"` emits ToMe's order (the kept even-position tokens, [CLS] first, then all odd-position
            tokens), which the next layer's even/odd split then runs over. `token_source` maps every input
            token to its output token in both orders. Text encoders (padding, protected or causal tokens)
            refuse `"tome"`.
        llm_layers (`int` or `list[int]`, *optional*):
            Vision-language models with a language model (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL,
            Qwen3-VL): the decoder layers (K >= 1) before which image tokens are reduced inside the language model.
            Off (None) by default.
        llm_keep (`int`, `float` or a list of them, *optional*):
            What each image keeps after each of `llm_layers` (one entry per layer, non-increasing, all ints or all
            floats): an int is a token count per image (an image with fewer tokens keeps all of them), a float in
            (0, 1) the share of each image's tokens (rounded, at least 1), for images whose token counts differ
            (Qwen2-VL, LLaVA-NeXT anyres).
        llm_text_query (`str`, defaults to `"last"`):
            Which text tokens give the semantic value of the image tokens inside the language model: the
            `"last"` token of the prompt, or `"all"` text tokens (their attention rows averaged).
        text_r (`int` or `list[int]`, *optional*):
            BLIP retrieval (`BlipForImageTextRetrieval`): text tokens merged per layer of the ITM text encoder,
            right after self-attention (padding never merges, position 0 is protected). The text encoder uses
            the other settings of this config (mode, alpha, schedule, reduction, ...) except `flops_ratio`,
            `min_tokens` and `token_order`, which are about the vision tokens (text tokens keep their order).
            Off (None) by default.
        image_keep (`list[float]`, *optional*):
            BLIP retrieval: per cross-attention layer of the ITM text encoder, the share of the image tokens it
            reads (in (0, 1], non-increasing, the first 1.0): each layer ranks the image tokens by the
            cross-attention they receive from the real text tokens and the next layer keeps the top share (the
            image [CLS] always stays). None reads them all.
        video_keep (`int` or `float`, *optional*):
            Video models (`LlavaNextVideoForConditionalGeneration`): the tokens each video keeps after its frames'
            tokens are merged jointly before the language model (an int: at most that many; a float in (0, 1):
            that share of the video's tokens). None keeps them all.
        merge_ratio (`float`, *optional*):
            Stable Diffusion's UNet (diffusers): the fraction of the image tokens merged before each patched
            component of every patched transformer block (tomesd's `ratio`: `int(tokens * merge_ratio)` merge),
            in [0, 1 - 1 / (sx * sy)]; unmerged after the component. The UNet takes this instead of `r` and uses
            `mode`, `alpha`, `alpha_scale`, `reduction` and `seed` (not `proportional_attention`: its attention
            processors run unchanged). The four settings below are for the UNet too (other families refuse them).
        merge_components (`list[str]`, *optional*):
            UNet: the components merged around, any of `"self_attn"`, `"cross_attn"`, `"ff"` (tomesd's
            `merge_attn` / `merge_crossattn` / `merge_mlp`); None means `["self_attn"]`, tomesd's default.
        max_downsample (`int`, *optional*):
            UNet: blocks at a latent downsampling of at most this (1, 2, 4 or 8) are patched; None means 1 (the
            full-resolution blocks, where the attention cost is), as tomesd.
        merge_stride (`list[int]`, *optional*):
            UNet: `[sx, sy]`, the cell of the strided split: one destination token per sx x sy cell of the latent
            grid, the other tokens merge into them; None means `[2, 2]`.
        random_cell (`bool`, *optional*):
            UNet: put each cell's destination at a random position of the cell (seeded by `seed`, the block and the
            row's timestep, so a run is reproducible) instead of its top-left corner; None means False.

    Example:

    ```python
    >>> from turbo_hf import TurboConfig
    >>> config = TurboConfig(r=16, mode="turbo")
    >>> TurboConfig.from_dict(config.to_dict()).r
    16
    ```
    """

    model_type = "turbo"

    r: int | list[int] | None = None
    flops_ratio: float | None = None
    schedule: str = "constant"
    mode: str = "turbo"
    reduction: str = "merge"
    alpha: float = DEFAULT_ALPHA
    alpha_scale: str = DEFAULT_ALPHA_SCALE
    semantic_start_layer: int = 0
    min_tokens: int = 0
    proportional_attention: bool = True
    restore_output: bool = False
    seed: int = 0
    llm_layers: int | list[int] | None = None
    llm_keep: int | float | list[int] | list[float] | None = None
    llm_text_query: str = "last"
    token_order: str = "spatial"
    text_r: int | list[int] | None = None
    image_keep: list[float] | None = None
    video_keep: int | float | None = None
    merge_ratio: float | None = None
    merge_components: list[str] | None = None
    max_downsample: int | None = None
    merge_stride: list[int] | None = None
    random_cell: bool | None = None

    def __post_init__(self, **kwargs):
        check_setting_names(kwargs)
        self._validate()
        super().__post_init__(**kwargs)

    def validate_settings(self) -> "TurboConfig":
        """Check every setting again (after attribute assignments: `config.mode = "tome"`); returns `self`.

        `apply_turbo` calls it, so a config changed after creation is never used unchecked.
        """
        self._validate()
        return self

    def _validate(self) -> None:
        self.r = per_layer_r("r", self.r, self.schedule)
        self.text_r = per_layer_r("text_r", self.text_r, self.schedule)
        self.image_keep = keep_ratios(self.image_keep)
        if self.flops_ratio is not None:
            if self.r is not None:
                raise ValueError("Give either `r` or `flops_ratio`, not both.")
            ratio = self.flops_ratio
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
                raise ValueError(f"`flops_ratio` must be a number in (0, 1], got {ratio!r}.")
        allowed("llm_text_query", self.llm_text_query, LLM_TEXT_QUERIES)
        self.llm_layers, self.llm_keep = llm_reduction_settings(self.llm_layers, self.llm_keep)
        video_keep(self.video_keep)
        self.merge_components, self.merge_stride = unet_settings(self)
        allowed("schedule", self.schedule, SCHEDULES)
        allowed("mode", self.mode, MODES)
        allowed("reduction", self.reduction, REDUCTIONS)
        allowed("alpha_scale", self.alpha_scale, ALPHA_SCALES)
        allowed("token_order", self.token_order, TOKEN_ORDERS)
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"`alpha` must be a finite number >= 0, got {alpha!r}.")
        non_negative_int("semantic_start_layer", self.semantic_start_layer)
        non_negative_int("min_tokens", self.min_tokens)
        non_negative_int("seed", self.seed)
        for name in ("proportional_attention", "restore_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")

    def settings(self) -> dict:
        """The Turbo settings alone (no generic `PreTrainedConfig` fields), as a dict."""
        return {name: getattr(self, name) for name in TurboConfig.__annotations__}

    def replace(self, **changes) -> "TurboConfig":
        """A new, validated `TurboConfig` with these settings changed (e.g. the view one encoder runs with).

        Example:

        ```python
        >>> from turbo_hf import TurboConfig
        >>> TurboConfig(r=4, mode="tome").replace(r=2).settings()["mode"]
        'tome'
        ```
        """
        check_setting_names(changes, "`TurboConfig.replace`")
        return TurboConfig(**{**self.settings(), **changes})

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """`PreTrainedConfig.from_dict`, validated again after keyword overrides are applied."""
        # Overrides transformers.configuration_utils.PreTrainedConfig.from_dict (v5.24)
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        config._validate()
        return result

    @property
    def removes_tokens(self) -> bool:
        """Whether these settings can remove any token (False for `r=0` and for no budget)."""
        if self.flops_ratio is not None:
            return self.flops_ratio < 1
        if isinstance(self.r, list):
            return any(self.r)
        return bool(self.r)

    @property
    def reduces_llm_tokens(self) -> bool:
        """Whether image tokens are also reduced inside a language model (`llm_layers`)."""
        return self.llm_layers is not None

    def score_settings(self) -> dict:
        """The settings that decide which tokens merge, as plain values (for the merge core)."""
        mode = self.mode
        return {
            "mode": mode,
            "alpha": 0.0 if mode == "tome" else float(self.alpha),
            "alpha_scale": self.alpha_scale,
            "semantic_start_layer": self.semantic_start_layer,
            "reduction": self.reduction,
            "seed": self.seed,
        }


@functools.cache
def _default_settings() -> tuple:
    return tuple(TurboConfig().settings().items())


def active_settings(config: TurboConfig) -> dict:
    """The settings that decide what `config` does, for display (`print(model)`, `turbo-hf demo`): the budget
    (`r` or `flops_ratio`) and `mode`, `alpha` / `alpha_scale` in the modes that use them, `seed` in the
    `random` mode, `llm_text_query` with `llm_layers`, and every other setting that differs from its default.

    Example:

    ```python
    >>> from turbo_hf.modeling.configuration_turbo import TurboConfig, active_settings
    >>> active_settings(TurboConfig(r=16, mode="tome"))
    {'r': 16, 'mode': 'tome'}
    >>> active_settings(TurboConfig(r=8, min_tokens=40))
    {'r': 8, 'mode': 'turbo', 'alpha': 0.02, 'alpha_scale': 'length', 'min_tokens': 40}
    ```
    """
    settings, defaults = config.settings(), dict(_default_settings())
    unused = {"alpha", "alpha_scale", "semantic_start_layer"} if config.mode != "turbo" else set()
    if config.mode != "random":
        unused.add("seed")
    if config.llm_layers is None:
        unused.add("llm_text_query")
    shown = {"flops_ratio": settings["flops_ratio"]} if config.flops_ratio is not None else {"r": settings["r"]}
    shown["mode"] = config.mode
    if config.mode == "turbo":
        shown.update(alpha=config.alpha, alpha_scale=config.alpha_scale)
    if config.mode == "random":
        shown["seed"] = config.seed
    for name, value in settings.items():
        if name not in shown and name not in unused and value != defaults[name]:
            shown[name] = value
    return shown


def as_turbo_config(value: TurboConfig | dict | None) -> TurboConfig:
    """A `TurboConfig` from a config, a dict of its fields, or None (no reduction).

    Duck-typed on purpose: a `TurboConfig` loaded through Hub remote code is another class object.
    """
    if value is None:
        return TurboConfig()
    if isinstance(value, dict):
        check_setting_names(value, "`turbo_config`")
        return TurboConfig(**{k: v for k, v in value.items() if k in TurboConfig.__annotations__})
    if hasattr(value, "settings") and hasattr(value, "removes_tokens"):
        config = value if isinstance(value, TurboConfig) else TurboConfig(**value.settings())
        return config.validate_settings()
    raise ValueError(
        f"`turbo_config` must be a TurboConfig, a dict of its settings or None, got {type(value).__name__} "
        f"({value!r})."
    )


__all__ = ["TurboConfig", "active_settings", "as_turbo_config", "check_setting_names", "LLM_TEXT_QUERIES", "MODES", "REDUCTIONS", "SCHEDULES", "ALPHA_SCALES"]
