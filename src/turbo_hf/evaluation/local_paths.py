"""Tell a local path from a Hub id, and fail at once on a local path that does not exist.

`from_pretrained` and `datasets.load_dataset` treat anything that is not an existing folder as a Hub id and
retry the Hub for about half a minute before failing; a mistyped local path should fail immediately instead,
with the argument's name. The rule (`looks_local`):

- a value that starts with `/`, `./`, `../`, `~` (or `.\\` / `..\\` on Windows), or is `.` / `..`, is local;
- a value with a path separator that is not shaped like a Hub id (`org/name`: one `/`, letters, digits,
  `-`, `_`, `.`) is local, e.g. `runs/2024/model` or a Windows path;
- an `org/name` value whose first part is an existing local folder is local (`outputs/model` next to an
  `outputs/` folder);
- anything else (`bert-base-uncased`, `facebook/dinov2-small`) is a Hub id.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*")
_LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def _separators() -> tuple[str, ...]:
    return tuple({"/", os.sep, *([os.altsep] if os.altsep else [])})


def looks_local(value: str | os.PathLike) -> bool:
    """Whether `value` names a local file or folder rather than a Hub id (the rule in the module docstring).

    Example:

    ```python
    >>> from turbo_hf.evaluation.local_paths import looks_local
    >>> looks_local("./my-model"), looks_local("/data/coco"), looks_local("facebook/dinov2-small")
    (True, True, False)
    ```
    """
    if isinstance(value, os.PathLike):
        return True
    text = str(value)
    if text in (".", "..") or text.startswith(_LOCAL_PREFIXES) or re.match(r"[A-Za-z]:[\\/]", text):
        return True
    if not any(sep in text for sep in _separators()):
        return False
    if _HUB_ID.fullmatch(text) is None:
        return True
    return Path(text.split("/", 1)[0]).is_dir()


def missing_local_path(value: str | os.PathLike) -> bool:
    """Whether `value` looks like a local path (`looks_local`) that does not exist."""
    return looks_local(value) and not Path(os.path.expanduser(str(value))).exists()


def check_local_path(value: str | os.PathLike, argument: str, error: type[Exception] = ValueError) -> str:
    """Raise `error` naming `argument` and the path when `value` is a local path that does not exist.

    Returns `value` as a string otherwise, with `~` expanded when it is a local path (`from_pretrained`
    does not expand it).

    Example:

    ```python
    >>> from turbo_hf.evaluation.local_paths import check_local_path
    >>> check_local_path("facebook/dinov2-small", "--model")
    'facebook/dinov2-small'
    >>> check_local_path("./no/such/folder", "--model")
    Traceback (most recent call last):
    ...
    ValueError: --model: the local path './no/such/folder' does not exist.
    ```
    """
    if missing_local_path(value):
        raise error(f"{argument}: the local path {str(value)!r} does not exist.")
    return os.path.expanduser(str(value)) if looks_local(value) else str(value)


__all__ = ["check_local_path", "looks_local", "missing_local_path"]
