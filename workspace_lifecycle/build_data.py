"""A build's data, checked: the template parameters it is asked with and the structured
details of its failure, each a bounded JSON value (``ValueError`` otherwise).

Nothing here does I/O; :mod:`~workspace_lifecycle.values` re-exports every name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_DETAILS_BYTES",
    "MAX_DETAILS_DEPTH",
    "MAX_PARAMETERS",
    "MAX_PARAMETER_NAME",
    "MAX_PARAMETER_VALUE",
    "check_details",
    "check_parameters",
]

#: Bounds of build parameters (template parameters handed to the provisioner).
MAX_PARAMETERS = 64
MAX_PARAMETER_NAME = 128
MAX_PARAMETER_VALUE = 4096
#: Bounds of a failed build's structured details (what the provisioner tells the model).
MAX_DETAILS_BYTES = 16 * 1024
MAX_DETAILS_DEPTH = 8


def check_parameters(parameters: object) -> dict[str, str]:
    """Build parameters as data: a mapping of string names to string values, bounded.

    >>> check_parameters({"region": "eu"})
    {'region': 'eu'}
    >>> check_parameters({"n": 3})
    Traceback (most recent call last):
    ...
    ValueError: parameter 'n' must be a string, not int
    """
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise ValueError(f"parameters must be an object of strings, not {type(parameters).__name__}")
    if len(parameters) > MAX_PARAMETERS:
        raise ValueError(f"at most {MAX_PARAMETERS} parameters, not {len(parameters)}")
    out: dict[str, str] = {}
    for name, value in parameters.items():
        if not isinstance(name, str) or not name or len(name) > MAX_PARAMETER_NAME:
            raise ValueError(
                f"a parameter name must be a string of 1 to {MAX_PARAMETER_NAME} characters, not {name!r:.80}"
            )
        if not isinstance(value, str):
            raise ValueError(f"parameter {name!r} must be a string, not {type(value).__name__}")
        if len(value) > MAX_PARAMETER_VALUE:
            raise ValueError(f"parameter {name!r} is longer than {MAX_PARAMETER_VALUE} characters")
        _check_text(f"parameter {name!r}", name + value)
        out[name] = value
    return out


def check_details(details: object) -> dict[str, Any] | None:
    """A failed build's details as data: a JSON object, bounded in size and depth.

    >>> check_details({"error_code": "INSUFFICIENT_QUOTA", "quota": {"budget": 10}})
    {'error_code': 'INSUFFICIENT_QUOTA', 'quota': {'budget': 10}}
    >>> check_details([1])
    Traceback (most recent call last):
    ...
    ValueError: details must be a JSON object (a dict), not list
    """
    if details is None:
        return None
    if not isinstance(details, Mapping):
        raise ValueError(f"details must be a JSON object (a dict), not {type(details).__name__}")
    _check_json(details, 0)
    try:
        text = json.dumps(details, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"details must be JSON: {exc}") from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DETAILS_BYTES:
        raise ValueError(f"details are larger than {MAX_DETAILS_BYTES} bytes of JSON")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _check_json(value: object, depth: int) -> None:
    if depth > MAX_DETAILS_DEPTH:
        raise ValueError(f"details are nested deeper than {MAX_DETAILS_DEPTH} levels")
    if value is None or isinstance(value, bool | int):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
            raise ValueError("details hold an integer too large for JSON")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("details hold a number that is not finite")
        return
    if isinstance(value, str):
        _check_text("details", value)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"details keys must be strings, not {type(key).__name__}")
            _check_text("details", key)
            _check_json(item, depth + 1)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, depth + 1)
        return
    raise ValueError(f"details must be JSON; {type(value).__name__} is not")


def _check_text(what: str, text: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{what} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text (a lone surrogate)") from None
