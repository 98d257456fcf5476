"""What differs between the Transformers releases turbo-hf supports, in one place.

Transformers 5.24 renamed the KV-cache argument and output field from `past_key_values` to `cache` (the old
name still works there, with a deprecation warning) and rebuilt the multimodal output classes (LLaVA's
`image_hidden_states` field became `image_outputs`). The Turbo code passes the cache under the installed
release's name and builds output classes from the fields they really have, so it runs without warnings on
every supported release. `turbo_hf.testing.upstream` lists every other dependency on Transformers internals.

Example:

```python
>>> from transformers.modeling_outputs import BaseModelOutputWithPast
>>> from turbo_hf.modeling.compat import CACHE_NAME, cache_of, model_output
>>> out = model_output(BaseModelOutputWithPast, last_hidden_state=None, cache="kv", not_a_field=1)
>>> cache_of(out)
'kv'
>>> CACHE_NAME in ("cache", "past_key_values")
True
```
"""

from __future__ import annotations

import dataclasses
import inspect

import torch

from transformers.masking_utils import create_causal_mask

CACHE_NAME = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
"""The keyword and output field that carry the KV cache in the installed Transformers."""

_CACHE_NAMES = ("cache", "past_key_values")


def pop_cache(kwargs: dict, explicit=None):
    """The KV cache a caller passed under either name (removed from `kwargs`), or `explicit` when given.

    Raises:
        ValueError: when two different caches are passed under the two names.
    """
    found = [kwargs.pop(name) for name in _CACHE_NAMES if name in kwargs]
    found = [cache for cache in found if cache is not None]
    if explicit is not None:
        found.append(explicit)
    if len({id(cache) for cache in found}) > 1:
        raise ValueError("Pass the KV cache once, as `cache` or as `past_key_values`, not both.")
    return found[0] if found else None


def cache_kwargs(cache) -> dict:
    """`{name: cache}` under the name the installed Transformers expects."""
    return {CACHE_NAME: cache}


def cache_of(output):
    """The KV cache of a model output (its `cache` or `past_key_values` field), or None."""
    return getattr(output, CACHE_NAME, None) if output is not None else None


def image_features_of(output):
    """The projected image features of a LLaVA-style output as one `(num_features, hidden)` tensor, or None:
    `image_outputs.pooler_output` from 5.24 on, the `image_hidden_states` field before."""
    image_outputs = getattr(output, "image_outputs", None)
    if image_outputs is not None:
        return torch.cat(list(image_outputs.pooler_output), dim=0)
    if "image_hidden_states" in {field.name for field in dataclasses.fields(output)}:
        return output.image_hidden_states
    return None


def model_output(output_class: type, **values):
    """An instance of a Transformers output class built from the fields it has in the installed release.

    A cache given as `cache` or `past_key_values` lands in the class's cache field; values for fields the class
    does not declare (e.g. LLaVA's `image_hidden_states` from 5.24 on, `image_outputs` before) are dropped.
    """
    names = {field.name for field in dataclasses.fields(output_class)}
    cache = pop_cache(values)
    if cache is not None:
        values[CACHE_NAME] = cache
    return output_class(**{name: value for name, value in values.items() if name in names})


__all__ = ["CACHE_NAME", "cache_kwargs", "cache_of", "image_features_of", "model_output", "pop_cache"]
