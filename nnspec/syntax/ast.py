"""The abstract syntax tree: typed pydantic models that keep their source spans.

The parser's tree walker builds these from the Lark tree; every later stage
reads only these models, never the Lark tree.

The parser and the expander build nodes with ``model_construct``: their fields are already of
the declared types (a test validates the parsed specs again), so no validator runs, and the
models' schemas (~50 ms to build them all, a tenth of a command's start-up) are built only when
something validates or serialises a node (``defer_build``); ``model_construct`` itself is a
faster one of the same meaning (nnspec/syntax/construct.py).
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ..errors import Span
from .construct import TrustedConstruct


class Node(TrustedConstruct, BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)   # see the module's docstring
    span: Span


# ---- sizes ---------------------------------------------------------------

class DimInt(Node):
    kind: Literal["int"] = "int"
    value: int


class DimName(Node):
    kind: Literal["name"] = "name"
    name: str


class DimBin(Node):
    kind: Literal["bin"] = "bin"
    op: Literal["+", "-", "*"]
    left: "DimExpr"
    right: "DimExpr"


DimExpr = Annotated[Union[DimInt, DimName, DimBin], Field(discriminator="kind")]


# ---- expressions ---------------------------------------------------------

class Number(Node):
    kind: Literal["number"] = "number"
    value: float
    text: str


class Percent(Node):
    kind: Literal["percent"] = "percent"
    value: float  # already divided by 100


class String(Node):
    kind: Literal["string"] = "string"
    value: str


class Name(Node):
    kind: Literal["name"] = "name"
    name: str


class Delayed(Node):
    """``h[t-1]`` (offset -1) or ``h[t+1]`` (offset +1): a recurrence link."""
    kind: Literal["delayed"] = "delayed"
    name: str
    offset: int


class ListLit(Node):
    kind: Literal["list"] = "list"
    items: list["Expr"]


class BinOp(Node):
    kind: Literal["binop"] = "binop"
    op: Literal["+", "-", "*", "/", "@"]
    left: "Expr"
    right: "Expr"


class Neg(Node):
    kind: Literal["neg"] = "neg"
    operand: "Expr"


class Keyword(Node):
    name: str
    value: "Expr"


class Mapping(Node):
    """``"file.txt" -> 1`` inside a data source's arguments."""
    key: str
    value: "Expr"


class Call(Node):
    """``f(a, b, k = 1)``; ``wrapper`` holds ``reverse(lstm)`` style wrappers."""
    kind: Literal["call"] = "call"
    func: str
    args: list["Expr"] = []
    keywords: list[Keyword] = []
    mappings: list[Mapping] = []
    wrapper: "Call | None" = None


Expr = Annotated[Union[Number, Percent, String, Name, Delayed, ListLit, BinOp, Neg, Call],
                 Field(discriminator="kind")]


# ---- statements ----------------------------------------------------------

class Network(Node):
    kind: Literal["network"] = "network"
    name: str


class Let(Node):
    kind: Literal["let"] = "let"
    name: str
    value: Expr


class Include(Node):
    kind: Literal["include"] = "include"
    path: str


class TypeSpec(Node):
    """The declared type of an input or target."""
    sequence: bool = False
    axis: str | None = None               # seq(src): the sequence's named axis (None: the default axis)
    nested: bool = False                  # seq of seq(char) of char: a sequence of sequences
    inner_axis: str | None = None         # a nested sequence's inner axis (None: the input's own name)
    elem: Literal["real", "token", "char", "class", "bag", "char_bag"] = "real"
    classes: list[DimExpr] | None = None  # class[17]


class View(Node):
    """``suffix(w, 3)``: an input whose tokens are derived from another input's."""
    func: str
    source: str
    arg: int | None = None


class Decl(Node):
    kind: Literal["decl"] = "decl"
    role: Literal["input", "target", "output"]
    name: str
    dims: list[DimExpr] | None = None
    type: TypeSpec | None = None
    view: View | None = None


class Equation(Node):
    kind: Literal["equation"] = "equation"
    name: str
    dims: list[DimExpr] | None = None
    value: Expr


class Param(Node):
    kind: Literal["param"] = "param"
    name: str
    dims: list[DimExpr] | None = None
    value: Expr | None = None
    init: Call | None = None
    frozen: bool = False


class Initial(Node):
    kind: Literal["initial"] = "initial"
    name: str
    value: Expr


class Loss(Node):
    kind: Literal["loss"] = "loss"
    value: Expr


class DecodeOption(Node):
    """``start "<s>"``, ``end "</s>"`` or ``max 30`` in a decode declaration."""
    name: str
    value: str | int


class Decode(Node):
    """``decode tgt from p, start "<s>", end "</s>", max 30``: the token input a decoder is fed back
    and the prediction it is fed from; checked and read by nnspec/decoding.py."""
    kind: Literal["decode"] = "decode"
    input: str
    prediction: str
    options: list[DecodeOption] = []


class Cell(Node):
    kind: Literal["cell"] = "cell"
    name: str
    inputs: list[str]
    output: str
    output_dims: list[DimExpr] | None = None
    body: list["Statement"]


class DataSource(Node):
    kind: Literal["data_source"] = "data_source"
    source: str
    call: Call


class DataInline(Node):
    kind: Literal["data_inline"] = "data_inline"
    values: list[Keyword]


class Setting(Node):
    """One line of a train block: ``epochs 10`` or ``dropout h = 0.5, g = 0.2``."""
    key: str
    value: Expr | None = None
    pairs: list[Keyword] = []


class Train(Node):
    kind: Literal["train"] = "train"
    settings: list[Setting]


class Sweep(Node):
    """A search space: train settings and lets with ranges (``lr loguniform(1e-4, 1e-1)``), read by
    nnspec.sweep; compiling and training ignore it."""
    kind: Literal["sweep"] = "sweep"
    settings: list[Setting]


Statement = Annotated[Union[Network, Let, Include, Decl, Equation, Param, Initial, Loss, Decode, Cell,
                            DataSource, DataInline, Train, Sweep], Field(discriminator="kind")]


class Module(BaseModel):
    """One parsed file."""
    model_config = ConfigDict(defer_build=True)
    file: str
    statements: list[Statement]

