"""``model_construct`` for models built by the million from data already checked.

The parser, the expander, ``build_plan`` and the optimiser make their pydantic models with
``model_construct`` (no validation: the fields are already of the declared types). pydantic's own
looks at each field's aliases and asks each missing field for its default, every time: a third
of the parse of a big spec. :func:`construct` does the same for a model with no alias, no extra
fields and no post-init (the nnspec models; others are handed to pydantic's), with each
class's field names and immutable defaults looked up once. tests/test_construct.py checks that
what it makes equals pydantic's in every attribute, for every such model.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes)
_setattr = object.__setattr__
_RECIPES: dict[type, tuple | None] = {}


def _recipe(cls: type[BaseModel]) -> tuple | None:
    """(field names, their set, constant defaults, fields whose default pydantic makes each time, the
    fields set of a model given every field), or None for a model this module leaves to pydantic."""
    fields = cls.__pydantic_fields__
    if (cls.__pydantic_root_model__ or cls.__pydantic_post_init__ or cls.model_config.get("extra") == "allow"
            or any(f.alias is not None or f.validation_alias is not None for f in fields.values())):
        return None
    constants, made = {}, {}
    for name, f in fields.items():
        if f.is_required():
            continue
        if f.default_factory is None and type(f.default) in _IMMUTABLE:
            constants[name] = f.default      # pydantic hands these out as they are
        else:
            made[name] = f                   # copied or made per instance, as pydantic does
    names = tuple(fields)
    return names, set(names), constants, made, set(names)


def construct(cls: type[BaseModel], values: dict[str, Any], fields_set: set[str] | None = None):
    """``cls.model_construct(**values)`` (``_fields_set``: ``fields_set``), faster."""
    try:
        recipe = _RECIPES[cls]
    except KeyError:
        recipe = _RECIPES[cls] = _recipe(cls)
    if recipe is None:
        return BaseModel.model_construct.__func__(cls, fields_set, **values)
    names, known, constants, made, every = recipe
    data: dict[str, Any] = {}
    for name in names:
        if name in values:
            data[name] = values[name]
        elif name in constants:
            data[name] = constants[name]
        elif name in made:
            data[name] = made[name].get_default(call_default_factory=True, validated_data=data)
    m = cls.__new__(cls)
    for name, value in data.items():   # (field by field, in the class's order: an instance dict that
        _setattr(m, name, value)       # shares its class's keys, 40% smaller than a dict of its own)
    if fields_set is None:
        # every field given (a plan step, a span): one set shared by all such models of the class, as
        # pydantic only ever adds a field's name to it (on assignment), which is in it already
        fields_set = every if len(values) == len(names) and known.issuperset(values) else known.intersection(values)
    _setattr(m, "__pydantic_fields_set__", fields_set)
    _setattr(m, "__pydantic_extra__", None)
    _setattr(m, "__pydantic_private__", None)
    return m


class TrustedConstruct:
    """A mixin (before ``BaseModel``) that makes ``model_construct`` use :func:`construct`."""

    @classmethod
    def model_construct(cls, _fields_set: set[str] | None = None, **values: Any):
        return construct(cls, values, _fields_set)
