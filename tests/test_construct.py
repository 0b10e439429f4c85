"""``model_construct`` of the models the compiler makes in bulk is nnspec's own, faster one
(nnspec/syntax/construct.py): it must make exactly what pydantic's makes."""
from __future__ import annotations

import inspect

import pytest
from pydantic import BaseModel

from nnspec import plan as plan_module
from nnspec.errors import Span
from nnspec.syntax import ast
from nnspec.syntax.construct import TrustedConstruct, construct

SPAN = Span(file="f.nn", line=1, column=2, end_line=1, end_column=5)
TRUSTED = [c for _, c in inspect.getmembers(ast, inspect.isclass)
           if issubclass(c, TrustedConstruct) and issubclass(c, BaseModel)] + [plan_module.OpStep, plan_module.LoopStep]


def required_values(cls) -> dict:
    """A value for each required field (model_construct checks no type: any object will do)."""
    return {name: f"<{name}>" for name, f in cls.__pydantic_fields__.items() if f.is_required()}


def same(a: BaseModel, b: BaseModel) -> None:
    assert type(a) is type(b)
    assert a.__dict__ == b.__dict__ and list(a.__dict__) == list(b.__dict__)   # fields in their order
    assert a.__pydantic_fields_set__ == b.__pydantic_fields_set__
    assert type(a.__pydantic_fields_set__) is type(b.__pydantic_fields_set__)
    assert a.__pydantic_extra__ == b.__pydantic_extra__ and a.__pydantic_private__ == b.__pydantic_private__
    assert a == b


def test_every_ast_node_and_plan_step_is_constructed_the_fast_way():
    assert ast.Call in TRUSTED and ast.Equation in TRUSTED and len(TRUSTED) > 30


@pytest.mark.parametrize("cls", TRUSTED, ids=lambda c: c.__name__)
def test_construct_makes_what_pydantic_makes(cls):
    values = required_values(cls)
    same(cls.model_construct(**values), BaseModel.model_construct.__func__(cls, **values))
    # every field given, and an explicit set of fields
    every = {name: f"<{name}>" for name in cls.__pydantic_fields__}
    same(cls.model_construct(**every), BaseModel.model_construct.__func__(cls, **every))
    same(cls.model_construct({"span"}, **values), BaseModel.model_construct.__func__(cls, {"span"}, **values))


def test_a_mutable_default_is_not_shared_between_models():
    a = plan_module.OpStep.model_construct(id="a", op="tanh", inputs=[])
    b = plan_module.OpStep.model_construct(id="b", op="tanh", inputs=[])
    a.attrs["k"] = 1
    a.shape.append(3)
    assert b.attrs == {} and b.shape == [] and plan_module.OpStep.model_fields["attrs"].default == {}


def test_a_span_made_fast_equals_one_made_by_pydantic():
    values = dict(file="f.nn", line=3, column=1, end_line=3, end_column=9)
    same(construct(Span, values), Span.model_construct(**values))
    assert construct(Span, values) == Span(**values)


def test_a_model_with_aliases_is_left_to_pydantic():
    from pydantic import Field

    class Aliased(BaseModel):
        x: int = Field(alias="ex")

    m = construct(Aliased, {"ex": 3})
    assert m.x == 3 and m.model_fields_set == {"x"}


def test_models_given_every_field_share_one_fields_set_which_assignment_keeps_right():
    every = {name: f"<{name}>" for name in plan_module.OpStep.__pydantic_fields__}
    a, b = plan_module.OpStep.model_construct(**every), plan_module.OpStep.model_construct(**every)
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__ == set(every)
    a.attrs = {"k": 1}     # pydantic adds the name to the set: it is in it already
    assert b.__pydantic_fields_set__ == set(every) and b.attrs == "<attrs>"
    partial = plan_module.OpStep.model_construct(id="c", op="tanh", inputs=[])
    assert partial.__pydantic_fields_set__ == {"id", "op", "inputs"}
    assert partial.__pydantic_fields_set__ is not a.__pydantic_fields_set__


@pytest.mark.parametrize("spec", ["xor_goodfellow.nn", "char_lstm.nn", "bilstm_tagger.nn", "elman.nn", "perceptron_and.nn"])
def test_a_plan_made_without_validation_is_the_one_validation_makes(spec):
    from pathlib import Path

    from nnspec import compile_file

    plan = compile_file(Path(__file__).resolve().parent.parent / "specs" / spec).plan
    again = plan_module.Plan.model_validate(plan.model_dump())
    assert again == plan
    for mine, theirs in zip(plan.params + plan.inputs + plan.targets, again.params + again.inputs + again.targets):
        same(mine, theirs)
