import pytest
import torch
from transformers.models.llava.modeling_llava import LlavaModelOutputWithPast

from turbo_hf.modeling.compat import CACHE_NAME, cache_kwargs, cache_of, image_features_of, model_output, pop_cache
from turbo_hf.modeling.turbo_encoder import TurboModelOutputWithPooling


def test_the_cache_is_taken_under_either_name():
    for name in ("cache", "past_key_values"):
        kwargs = {name: "kv", "other": 1}
        assert pop_cache(kwargs) == "kv" and kwargs == {"other": 1}
    assert pop_cache({}, explicit="kv") == "kv"
    assert pop_cache({"cache": None}) is None
    with pytest.raises(ValueError, match="not both"):
        pop_cache({"cache": "a", "past_key_values": "b"})
    assert cache_kwargs("kv") == {CACHE_NAME: "kv"}


def test_llava_output_is_built_from_its_real_fields():
    features = torch.ones(2, 3, 4)
    image_outputs = TurboModelOutputWithPooling(pooler_output=list(features))
    out = model_output(
        LlavaModelOutputWithPast,
        last_hidden_state=torch.zeros(1),
        cache="kv",
        image_hidden_states=features.flatten(0, 1),
        image_outputs=image_outputs,
    )
    assert cache_of(out) == "kv"
    assert torch.equal(image_features_of(out), features.flatten(0, 1))
