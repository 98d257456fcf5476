"""Device names the installed torch can run on, checked before any model is loaded or moved."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """The device names this torch build and machine can use: `auto`, `cpu`, then `cuda`, `cuda:N`, `mps`.

    Example:

    ```python
    >>> from turbo_hf.evaluation.devices import available_devices
    >>> available_devices()[:2]
    ['auto', 'cpu']
    ```
    """
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def device_problem(device: str | torch.device | None) -> str | None:
    """Why `device` cannot be used here (a sentence naming what is available), or None when it can.

    Example:

    ```python
    >>> from turbo_hf.evaluation.devices import device_problem
    >>> device_problem("cpu") is None
    True
    >>> device_problem("tpu9")
    "'tpu9' is not a torch device name; available: ..."
    ```
    """
    if device is None or device == "auto":
        return None
    available = ", ".join(available_devices())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"{str(device)!r} is not a torch device name; available: {available}."
    if resolved.type == "cpu":
        return None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "has no CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
            return f"{str(device)!r} is not available: this torch build ({torch.__version__}) {build}; available: {available}."
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            return f"{str(device)!r} is not available: {torch.cuda.device_count()} CUDA device(s); available: {available}."
        return None
    backend = getattr(torch.backends, resolved.type, None) or getattr(torch, resolved.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and is_available():
        return None
    return f"{str(device)!r} is not available on this machine; available: {available}."


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` -> CUDA when available, else CPU; any other name is checked first.

    Raises:
        ValueError: naming `device` and the available devices when it cannot be used here.

    Example:

    ```python
    >>> from turbo_hf.evaluation.devices import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    ```
    """
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"`device` {problem}")
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


__all__ = ["available_devices", "device_problem", "resolve_device"]
