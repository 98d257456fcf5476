"""The checks every family and head owes, run over one table of tiny cases (`turbo_hf.testing.family_tester`):
removing nothing is the stock model (r=0; for the in-LLM cases also a reduction that keeps every image token),
`remove_turbo` restores it, batched equals one by one while reducing, eager equals SDPA while reducing, the Hub
round trip, and bad settings refused at `apply_turbo`.

BLIP is eager-only in stock (`_supports_sdpa` is False): its cases have no eager/SDPA check (the family file
checks its vision attention with a bias against `scaled_dot_product_attention` instead). The in-LLM cases (LLaVA's
`-llm` ones, Qwen-VL) reduce image tokens inside the language model (`llm_layers`, `llm_keep`); they also check
greedy `generate()` against stock while nothing is removed."""

import pytest
import torch
import transformers

import turbo_hf
from turbo_hf import TurboConfig, apply_turbo, is_turbo_applied, remove_turbo, turbo_plan
from turbo_hf.testing.family_tester import CASES, tensors

pytestmark = pytest.mark.usefixtures("one_thread")

SDPA_CASES = [case for case in CASES if case.supports_sdpa]
CASES_AND_BACKENDS = [(case, attn) for case in CASES for attn in ("eager", "sdpa") if case.supports_sdpa or attn == "eager"]


def module_classes(model):
    return {name: type(module) for name, module in model.named_modules()}


@pytest.mark.parametrize(("case", "attn"), CASES_AND_BACKENDS, ids=lambda x: repr(x) if not isinstance(x, str) else x)
def test_removing_nothing_is_the_stock_model_and_remove_turbo_restores_it(case, attn):
    model = case.build(attn)
    classes, state = module_classes(model), {k: v.clone() for k, v in model.state_dict().items()}
    inputs = case.inputs(model)
    stock, stock_rows = case.stock_fields(case.run(model, inputs)), case.read(model, inputs)
    stock_ids = case.generate(model, inputs) if case.in_llm else None

    for nothing in case.removing_nothing(model):  # the Turbo classes run (the in-LLM wrappers too) but keep all
        apply_turbo(model, nothing)
        assert module_classes(model) != classes
        at_zero = tensors(case.run(model, inputs))
        assert stock and all(torch.equal(at_zero[key], value) for key, value in stock.items()), nothing
        if case.in_llm:
            assert torch.equal(case.generate(model, inputs), stock_ids), nothing

    merging = TurboConfig(**case.merging)
    apply_turbo(model, merging)
    assert module_classes(model) != classes and list(model.state_dict()) == list(state)
    merged = case.read(model, case.inputs(model, turbo=merging))
    remove_turbo(model)
    assert not is_turbo_applied(model) and module_classes(model) == classes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    restored = tensors(case.run(model, inputs))
    assert all(torch.equal(restored[key], value) for key, value in stock.items())
    if case.in_llm:
        assert torch.equal(case.generate(model, inputs), stock_ids)
    # the merging settings remove tokens: the rows the other checks compare are not the stock rows
    assert merged.shape != stock_rows.shape or not torch.equal(merged, stock_rows)


@pytest.mark.parametrize("mode", ["turbo", "tome", "semantic", "random"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_batched_equals_one_by_one_while_merging(case, mode):
    merging = TurboConfig(**case.merging, mode=mode)
    model = apply_turbo(case.build(), merging)
    inputs = case.inputs(model, batch=3, turbo=merging)
    batched = case.read(model, inputs)
    singles = torch.cat([case.read(model, one) for one in case.split_batch(inputs)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", SDPA_CASES, ids=repr)
def test_eager_equals_sdpa_while_merging(case):
    merging = TurboConfig(**case.merging)
    rows = []
    for attn in ("eager", "sdpa"):
        model = apply_turbo(case.build(attn), merging)
        rows.append(case.read(model, case.inputs(model, turbo=merging)))
    torch.testing.assert_close(rows[0], rows[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", [case for case in CASES if case.turbo_class], ids=repr)
def test_stock_checkpoint_to_turbo_folder_and_back(case, tmp_path):
    attn = "sdpa" if case.supports_sdpa else "eager"  # `from_pretrained` picks SDPA where stock has it
    stock = case.build(attn)
    stock.save_pretrained(tmp_path / "stock")
    merging = TurboConfig(**case.merging)
    inputs = case.inputs(stock, turbo=merging)
    expected = case.read(apply_turbo(stock, merging), inputs)

    turbo_class = getattr(turbo_hf.modeling, case.turbo_class)
    model = turbo_class.from_pretrained(tmp_path / "stock", turbo_config=merging, attn_implementation=attn).eval()
    assert torch.equal(case.read(model, inputs), expected)
    model.save_pretrained(tmp_path / "turbo")
    loader = getattr(transformers, case.auto_class) if case.auto_class else turbo_class
    loaded = loader.from_pretrained(tmp_path / "turbo", attn_implementation=attn).eval()
    assert type(loaded) is turbo_class
    assert turbo_hf.get_turbo_config(loaded).settings() == merging.settings()  # `r`, `llm_layers`, `llm_keep`, ...
    assert torch.equal(case.read(loaded, inputs), expected)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_bad_settings_are_refused_at_apply_turbo_and_leave_the_model_stock(case):
    model = case.build()
    stock_classes = module_classes(model)
    with pytest.raises(ValueError, match="unknown setting `ratio`"):
        apply_turbo(model, r=2, ratio=0.5)
    if case.tower_merging:
        apply_turbo(model, TurboConfig(r=1))
        layers = len(turbo_plan(model)["schedule"])
        remove_turbo(model)
        with pytest.raises(ValueError, match=f"`r` has {layers + 1} entries but the encoder has {layers} layers"):
            apply_turbo(model, TurboConfig(r=[1] * (layers + 1)))
    else:
        with pytest.raises(ValueError, match=r"merging inside its vision tower \(`r`, `flops_ratio`\) is not"):
            apply_turbo(model, TurboConfig(r=2))
    if case.in_llm:
        decoder = model.config.text_config.num_hidden_layers
        with pytest.raises(ValueError, match=rf"names decoder layer\(s\) \[{decoder}\].* has {decoder} decoder layers"):
            apply_turbo(model, TurboConfig(llm_layers=[decoder], llm_keep=[0.5]))
        deepstack = len(getattr(model.config.vision_config, "deepstack_visual_indexes", None) or [])
        if deepstack:  # Qwen3-VL adds deepstack features to the full-length hidden states after its first layers
            with pytest.raises(ValueError, match=f"deepstack .* before layer {deepstack} or later only"):
                apply_turbo(model, TurboConfig(llm_layers=[deepstack - 1], llm_keep=[0.5]))
    else:
        tome_order = TurboConfig(**case.merging, mode="tome", token_order="tome")
        if case.spatial_only:
            with pytest.raises(ValueError, match="token_order='tome'.*needs them in their original order"):
                apply_turbo(model, tome_order)
        else:
            apply_turbo(model, tome_order)
            assert turbo_hf.get_turbo_config(model).token_order == "tome"
            remove_turbo(model)
    assert module_classes(model) == stock_classes and not is_turbo_applied(model)
