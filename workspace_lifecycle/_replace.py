"""``replace(value, **changes)``: :func:`attrs.evolve` for the core's frozen value types, at a
fraction of the cost.

``attrs.evolve`` looks up the class's fields, gathers every value into keyword arguments and
calls ``__init__`` again, which runs every validator of every field. The write decisions call
it on each write (a touch re-arms its workspace, a renewal extends its build, a finish ends
one), and on the memory store it was the largest single cost of a write. The copy made here
sets the fields of a new instance directly, as attrs' own generated ``__init__`` of a frozen
class does, and runs the validators of the fields that changed only: the others were
validated when the value was made, and a frozen value cannot have changed since.

A class's copier is generated once, from :func:`attrs.fields`, the way attrs generates
``__init__``. A class it cannot copy that way (a converter, ``__attrs_post_init__``, a field
outside ``__init__``, an alias, a cached hash) is handed to :func:`attrs.evolve`.
``tests/core/test_replace.py`` checks it against ``attrs.evolve`` on every value type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

__all__ = ["replace"]

T = TypeVar("T")

_Copier = Callable[[Any, dict[str, Any]], Any]
_COPIERS: dict[type, _Copier] = {}


def replace(value: T, /, **changes: Any) -> T:
    """``value`` with ``changes``, as :func:`attrs.evolve` makes it (an unknown field raises
    ``TypeError``, a changed field's validator runs).

    >>> from workspace_lifecycle.values import Deadline
    >>> from workspace_lifecycle.vocabulary import Reason
    >>> replace(Deadline(10.0, Reason.IDLE), at=20.0)
    Deadline(at=20.0, reason=<Reason.IDLE: 'idle'>, warn_at=None, warned=False)
    """
    cls = type(value)
    copier = _COPIERS.get(cls)
    if copier is None:
        copier = _COPIERS[cls] = _copier(cls)
    result: T = copier(value, changes)
    return result


def _evolve(value: Any, changes: dict[str, Any]) -> Any:
    return attrs.evolve(value, **changes)


def _copier(cls: type) -> _Copier:
    fields = attrs.fields(cls)
    plain = (
        not hasattr(cls, "__attrs_post_init__")
        and "_attrs_cached_hash" not in getattr(cls, "__slots__", ())
        and all(f.init and f.converter is None and f.alias == f.name for f in fields)
    )
    if not plain:
        return _evolve
    names = frozenset(f.name for f in fields)
    validators = {f.name: (f.validator, f) for f in fields if f.validator is not None}
    lines = [
        "def copy(value, changes):",
        "    if not changes.keys() <= names:",
        "        return evolve(value, changes)  # attrs' own TypeError for the unknown field",
        "    new = new_object(cls)",
    ]
    for f in fields:
        lines.append(
            f"    set_field(new, {f.name!r}, changes[{f.name!r}] if {f.name!r} in changes else value.{f.name})"
        )
    lines += [
        "    for name in changes:",
        "        check = validators.get(name)",
        "        if check is not None:",
        "            check[0](new, check[1], changes[name])",
        "    return new",
    ]
    namespace: dict[str, Any] = {
        "cls": cls,
        "names": names,
        "validators": validators,
        "evolve": _evolve,
        "new_object": object.__new__,
        "set_field": object.__setattr__,
    }
    exec("\n".join(lines), namespace)
    copier: _Copier = namespace["copy"]
    return copier
