"""Text -> Lark tree -> AST.

The grammar lives in ``grammar/nnspec.lark`` (installed as ``nnspec.grammar``).
A small post-lexer drops newlines inside brackets; a transformer turns the tree
into the pydantic models of :mod:`nnspec.syntax.ast` (with ``model_construct``: see there).
Syntax errors are turned into diagnostics with spans; after an error the offending line is blanked and
the file parsed again, so one run reports the syntax errors of many lines.
"""
from __future__ import annotations

import functools
import re
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ..errors import Diagnostics, Span
from . import ast
from .construct import construct

_OPEN, _CLOSE = {"LPAR", "LSQB"}, {"RPAR", "RSQB"}


class InnerAxis(str):
    """The inner axis's name of a nested sequence type (``seq of seq(char) of char``)."""


class _BracketNewlines:
    """Post-lexer: newlines inside ( ) and [ ] do not end a statement."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in _OPEN:
                depth += 1
            elif tok.type in _CLOSE:
                depth = max(depth - 1, 0)
            elif tok.type == "_NL" and depth > 0:
                continue
            yield tok


def grammar_text() -> str:
    return resources.files("nnspec.grammar").joinpath("nnspec.lark").read_text(encoding="utf-8")


def build_lark(text: str) -> Lark:
    """The parser built from the grammar: LALR tables computed afresh (~0.15 s)."""
    return Lark(text, parser="lalr", lexer="contextual", postlex=_BracketNewlines(),
                propagate_positions=True, maybe_placeholders=False)


def parser_tables_source(text: str) -> str:
    """The Python source of ``nnspec.grammar.parser_tables``: the parser built from ``text``,
    serialised as Lark's standalone tool does, with the hash of the grammar it was built from."""
    import hashlib
    import pprint

    from lark.grammar import Rule
    from lark.lexer import TerminalDef
    data, memo = build_lark(text).memo_serialize([TerminalDef, Rule])
    data["options"].pop("postlex")  # an object of ours, given again on loading
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return ('"""Generated from grammar/nnspec.lark by `python -m nnspec.grammar`: do not edit.\n\n'
            'The LALR tables of the parser, so that a command starts without building them."""\n'
            f"GRAMMAR_SHA256 = {digest!r}\n"
            f"DATA = {pprint.pformat(data, width=120)}\n"
            f"MEMO = {pprint.pformat(memo, width=120)}\n")


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    """The parser, loaded from the tables shipped with nnspec when they were generated from this
    grammar (a test keeps them so), else built from the grammar (while one edits it)."""
    import hashlib
    text = grammar_text()
    try:
        from ..grammar import parser_tables as tables
    except ImportError:
        return build_lark(text)
    if tables.GRAMMAR_SHA256 != hashlib.sha256(text.encode("utf-8")).hexdigest():
        return build_lark(text)
    return Lark._load_from_dict(tables.DATA, tables.MEMO, postlex=_BracketNewlines())


def parse(text: str, file: str, diags: Diagnostics) -> ast.Module | None:
    """Parse one file. Returns None (with errors in ``diags``) when it has syntax errors."""
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write first
    diags.sources.add(file, text)
    lines = text.split("\n")
    seen: set[int] = set()
    for _ in range(50):  # each round blanks one bad line and tries again
        try:
            tree = _lark().parse("\n".join(lines) + "\n")
        except UnexpectedInput as e:
            line = getattr(e, "line", -1)
            if line in seen or line < 1 or line > len(lines):
                if not seen:
                    diags.error(_describe(e, lines), _error_span(e, file, lines))
                break
            unclosed = _unclosed_bracket(e, lines, file)
            if unclosed is not None:  # blank the whole statement the open bracket swallowed
                message, span, last = unclosed
                diags.error(message, span)
                bad = range(span.line, last + 1)
            else:
                diags.error(_describe(e, lines), _error_span(e, file, lines))
                bad = range(line, line + 1)
            for i in bad:
                seen.add(i)
                lines[i - 1] = ""
            continue
        if seen:
            return None
        if _too_deep(tree, file, diags):
            return None
        try:
            return ast.Module.model_construct(file=file, statements=_ToAst(file).transform(tree).children)
        except VisitError as e:  # a literal the grammar accepts but the AST rejects
            if isinstance(e.orig_exc, _AstError):
                diags.error(e.orig_exc.message, e.orig_exc.span)
                return None
            raise
    return None


MAX_DELAY = 2**31 - 1  # steps back or ahead; the memory check (shapes.py) bounds what is practical
MAX_DEPTH = 150  # levels of the parse tree in one statement; later stages recurse over expressions


def _too_deep(tree, file: str, diags: Diagnostics) -> bool:
    """Report statements nested so deeply (e.g. a sum of hundreds of terms) that walking them would
    exhaust Python's stack; every stage after the parser recurses over expressions."""
    found = False
    for stmt in tree.children:
        if not isinstance(stmt, Tree):
            continue
        stack = [(stmt, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH:
                diags.error(f"this statement nests more than {MAX_DEPTH} levels deep; split it into several "
                            f"equations", _span(file, stmt.meta))
                found = True
                break
            stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))
    return found


_PAIRS = {"(": ")", "[": "]", "{": "}"}
_BRACKETS = re.compile(r'"[^"\n]*"|#[^\n]*|[()\[\]{}]')


def _unclosed_bracket(e: UnexpectedInput, lines: list[str], file: str) -> tuple[str, Span, int] | None:
    """A bracket left open is reported where it opens, not where the parser gave up.

    Inside ( ) and [ ] newlines are ignored, so an unclosed bracket swallows the
    following lines until the parser meets a token that cannot go on (often the
    first name of the next statement) or the end of the file. Returns the
    message, the opening bracket's span and the last line the statement took.
    """
    tok = getattr(e, "token", None)
    at_end = isinstance(e, UnexpectedEOF) or (isinstance(tok, Token) and tok.type == "$END")
    if not at_end and not (isinstance(e, UnexpectedToken) and isinstance(tok, Token)):
        return None
    stack: list[tuple[str, int, int]] = []
    for number, text in enumerate(lines, 1):
        if not at_end and number == tok.line:
            text = text[:tok.column - 1]
        elif not at_end and number > tok.line:
            break
        for m in _BRACKETS.finditer(text):
            ch = m.group()
            if ch in _PAIRS:
                stack.append((ch, number, m.start() + 1))
            elif ch in _PAIRS.values() and stack and _PAIRS[stack[-1][0]] == ch:
                stack.pop()
    if not at_end:  # only ( and [ run on across lines, and only a statement's first token gives it away
        stack = [b for b in stack if b[0] != "{"]
        starts_statement = str(tok).isidentifier() and not lines[tok.line - 1][:tok.column - 1].strip()
        if not stack or stack[-1][1] >= tok.line or not starts_statement:
            return None
    if not stack:
        return None
    ch, number, column = stack[-1]
    where = "the end of the file" if at_end else f"{_got(tok)} on line {tok.line}"
    span = Span(file=file, line=number, column=column, end_line=number, end_column=column + 1)
    return f"unclosed '{ch}': no '{_PAIRS[ch]}' before {where}", span, len(lines) if at_end else tok.line - 1


class _AstError(Exception):
    def __init__(self, message: str, span: Span):
        self.message, self.span = message, span


_READABLE = {
    "NAME": "a name", "NUMBER": "a number", "INT": "a whole number", "STRING": "a string",
    "_NL": "end of line", "$END": "end of file",
}


STATEMENT_KEYWORDS = ("network", "let", "include", "input", "target", "output", "param", "initial", "loss",
                      "decode", "cell", "data", "train", "sweep")
_KEYWORD_AS_NAME = re.compile(r"\s*(" + "|".join(STATEMENT_KEYWORDS) + r")\s*(\[[^\]]*\])?\s*=")


def _describe(e: UnexpectedInput, lines: list[str] | None = None) -> str:
    line = getattr(e, "line", 0) or 0
    if lines and 1 <= line <= len(lines) and isinstance(e, UnexpectedToken):
        named = _KEYWORD_AS_NAME.match(lines[line - 1])
        if named:   # `decode = ...`: a statement's keyword, which the line uses as a value's name
            return (f"'{named.group(1)}' begins a statement, so it cannot name a value; choose another name "
                    f"(e.g. '{named.group(1)}_')")
    if isinstance(e, UnexpectedCharacters):
        if e.char == '"':
            return "unclosed string: a string ends with '\"' on the same line"
        return f"unexpected character {e.char!r}"
    if isinstance(e, UnexpectedEOF):
        return "unexpected end of file; is a bracket or brace left open?"
    if isinstance(e, UnexpectedToken):
        got = _got(e.token)
        expected = sorted({_readable(t) for t in e.expected})
        hint = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        return f"unexpected {got}; expected {hint}"
    return str(e)


def _got(tok: Token) -> str:
    return "end of line" if tok.type == "_NL" else ("end of file" if tok.type == "$END" else repr(str(tok)))


def _readable(terminal: str) -> str:
    if terminal in _READABLE:
        return _READABLE[terminal]
    try:
        pattern = _lark().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return repr(pattern.value) if pattern.type == "str" else terminal.lower()


def _error_span(e: UnexpectedInput, file: str, lines: list[str]) -> Span:
    line = max(getattr(e, "line", 1) or 1, 1)
    col = max(getattr(e, "column", 1) or 1, 1)
    if line > len(lines):  # error at end of file: point after the last line's text
        line = len(lines)
        col = len(lines[-1]) + 1 if lines else 1
    tok = getattr(e, "token", None)
    width = len(str(tok)) if isinstance(tok, Token) and tok.type not in ("_NL", "$END") else 1
    return Span(file=file, line=line, column=col, end_line=line, end_column=col + max(width, 1))


def _span(file: str, meta) -> Span:   # Span.model_construct, faster (construct.py; ints from Lark: see ast.py)
    return construct(Span, {"file": file, "line": meta.line, "column": meta.column,
                            "end_line": meta.end_line, "end_column": meta.end_column})


def _tok_span(file: str, tok: Token) -> Span:
    return construct(Span, {"file": file, "line": tok.line, "column": tok.column,
                            "end_line": tok.end_line, "end_column": tok.end_column})


class _ToAst:
    """Builds AST nodes from the Lark tree, bottom up: each rule's method receives the rule's
    ``meta`` (for its span) and its children, already built.

    What lark's ``Transformer`` with ``v_args(meta=True)`` does, without the wrapper object it
    makes on every call and the method lookup per token (half the time of a big spec's transform).
    """

    def __init__(self, file: str):
        self.file = file

    def transform(self, tree: Tree):
        children = [self.transform(c) if isinstance(c, Tree) else c for c in tree.children]
        method = getattr(self, tree.data, None)
        if method is None:  # a rule without a method (the start rule) stays a Tree
            return Tree(tree.data, children, tree.meta)
        try:
            return method(tree.meta, children)
        except Exception as e:
            raise VisitError(tree.data, tree, e) from e

    def sp(self, meta) -> Span:
        return _span(self.file, meta)

    # statements
    def network(self, meta, c):
        return ast.Network.model_construct(span=self.sp(meta), name=str(c[0]))

    def let(self, meta, c):
        return ast.Let.model_construct(span=self.sp(meta), name=str(c[0]), value=c[1])

    def include(self, meta, c):
        return ast.Include.model_construct(span=self.sp(meta), path=str(c[0])[1:-1])

    def role(self, meta, c):
        return str(c[0])

    def decl(self, meta, c):
        role, name, *rest = c
        dims = next((r for r in rest if isinstance(r, list)), None)
        typ = next((r for r in rest if isinstance(r, ast.TypeSpec)), None)
        view = next((r for r in rest if isinstance(r, ast.View)), None)
        return ast.Decl.model_construct(span=self.sp(meta), role=str(role), name=str(name), dims=dims, type=typ,
                                        view=view)

    def view(self, meta, c):
        return ast.View.model_construct(span=self.sp(meta), func=str(c[0]), source=str(c[1]),
                                        arg=int(c[2]) if len(c) > 2 else None)

    def equation(self, meta, c):
        name, *rest = c
        dims = rest[0] if len(rest) == 2 else None
        return ast.Equation.model_construct(span=_tok_span(self.file, name).model_copy(
            update={"end_line": meta.end_line, "end_column": meta.end_column}),
            name=str(name), dims=dims, value=rest[-1])

    def loss(self, meta, c):
        return ast.Loss.model_construct(span=self.sp(meta), value=c[0])

    def initial(self, meta, c):
        return ast.Initial.model_construct(span=self.sp(meta), name=str(c[0]), value=c[1])

    def decode(self, meta, c):
        return ast.Decode.model_construct(span=self.sp(meta), input=str(c[0]), prediction=str(c[1]),
                                          options=list(c[2:]))

    def decode_option(self, meta, c):
        name, value = c
        text = str(value)
        return ast.DecodeOption.model_construct(span=self.sp(meta), name=str(name),
                                                value=text[1:-1] if value.type == "STRING" else int(text))

    def param(self, meta, c):
        name, *rest = c
        fields: dict = {"dims": None, "value": None, "init": None, "frozen": False}
        for r in rest:
            if isinstance(r, list):
                fields["dims"] = r
            elif isinstance(r, tuple) and r[0] == "init":
                fields["init"] = r[1]
            elif r == ("frozen",):
                fields["frozen"] = True
            else:
                fields["value"] = r
        return ast.Param.model_construct(span=self.sp(meta), name=str(name), **fields)

    def param_init(self, meta, c):
        name, *args = c
        positional, keywords, mappings = args[0] if args else ([], [], [])
        return ("init", ast.Call.model_construct(span=self.sp(meta), func=str(name), args=positional,
                                                 keywords=keywords))

    def param_frozen(self, meta, c):
        return ("frozen",)

    def cell(self, meta, c):
        name = str(c[0])
        toks = [x for x in c[1:] if isinstance(x, Token)]
        dims = next((x for x in c[1:] if isinstance(x, list)), None)
        body = [x for x in c[1:] if isinstance(x, ast.Node)]
        *inputs, output = [str(t) for t in toks]
        return ast.Cell.model_construct(span=self.sp(meta), name=name, inputs=inputs, output=output,
                                        output_dims=dims, body=body)

    def data_source(self, meta, c):
        name = str(c[0])
        positional, keywords, mappings = c[1] if len(c) > 1 else ([], [], [])
        call = ast.Call.model_construct(span=self.sp(meta), func=name, args=positional, keywords=keywords,
                                        mappings=mappings)
        return ast.DataSource.model_construct(span=self.sp(meta), source=name, call=call)

    def data_inline(self, meta, c):
        return ast.DataInline.model_construct(span=self.sp(meta), values=list(c))

    def inline_value(self, meta, c):
        return ast.Keyword.model_construct(span=self.sp(meta), name=str(c[0]), value=c[1])

    def train(self, meta, c):
        return ast.Train.model_construct(span=self.sp(meta), settings=list(c))

    def sweep(self, meta, c):
        return ast.Sweep.model_construct(span=self.sp(meta), settings=list(c))

    def setting_value(self, meta, c):
        return ast.Setting.model_construct(span=self.sp(meta), key=str(c[0]), value=c[1])

    def setting_pairs(self, meta, c):
        key, rest = str(c[0]), c[1:]
        pairs = [ast.Keyword.model_construct(span=_tok_span(self.file, rest[i]), name=str(rest[i]), value=rest[i + 1])
                 for i in range(0, len(rest), 2)]
        return ast.Setting.model_construct(span=self.sp(meta), key=key, pairs=pairs)

    # types
    def seq_type(self, meta, c):
        axis = c[0] if len(c) == 2 else None
        return c[-1].model_copy(update={"sequence": True, "axis": axis, "span": self.sp(meta)})

    def seq_of_vectors(self, meta, c):
        return ast.TypeSpec.model_construct(span=self.sp(meta), sequence=True, elem="real", axis=c[0] if c else None)

    def nested_seq_type(self, meta, c):
        """``seq of seq(char) of char``: the outer axis (if named) is an ``axis_name``, the inner an
        ``InnerAxis``, so the two are told apart whichever is given."""
        outer = next((x for x in c if isinstance(x, str) and not isinstance(x, InnerAxis)), None)
        inner = next((str(x) for x in c if isinstance(x, InnerAxis)), None)
        return c[-1].model_copy(update={"sequence": True, "axis": outer, "nested": True, "inner_axis": inner,
                                        "span": self.sp(meta)})

    def axis_name(self, meta, c):
        return str(c[0])

    def inner_axis_name(self, meta, c):
        return InnerAxis(c[0])

    def type(self, meta, c):
        return c[0]

    def elem(self, meta, c):
        return c[0]

    def token_type(self, meta, c):
        return ast.TypeSpec.model_construct(span=self.sp(meta), elem="token")

    def char_type(self, meta, c):
        return ast.TypeSpec.model_construct(span=self.sp(meta), elem="char")

    def class_type(self, meta, c):
        return ast.TypeSpec.model_construct(span=self.sp(meta), elem="class", classes=c[0] if c else None)

    def bag_type(self, meta, c):
        return ast.TypeSpec.model_construct(span=self.sp(meta), elem="bag")

    def char_bag_type(self, meta, c):
        return ast.TypeSpec.model_construct(span=self.sp(meta), elem="char_bag")

    def real_type(self, meta, c):
        return ast.TypeSpec.model_construct(span=self.sp(meta), elem="real")

    # sizes
    def dims(self, meta, c):
        return list(c)

    def dim_int(self, meta, c):
        return ast.DimInt.model_construct(span=self.sp(meta), value=int(c[0]))

    def dim_name(self, meta, c):
        return ast.DimName.model_construct(span=self.sp(meta), name=str(c[0]))

    def _dim_bin(self, op, meta, c):
        return ast.DimBin.model_construct(span=self.sp(meta), op=op, left=c[0], right=c[1])

    def dim_add(self, meta, c):
        return self._dim_bin("+", meta, c)

    def dim_sub(self, meta, c):
        return self._dim_bin("-", meta, c)

    def dim_mul(self, meta, c):
        return self._dim_bin("*", meta, c)

    # expressions
    def number(self, meta, c):
        return ast.Number.model_construct(span=self.sp(meta), value=float(c[0]), text=str(c[0]))

    def percent(self, meta, c):
        return ast.Percent.model_construct(span=self.sp(meta), value=float(c[0]) / 100.0)

    def string(self, meta, c):
        return ast.String.model_construct(span=self.sp(meta), value=str(c[0])[1:-1])

    def name(self, meta, c):
        return ast.Name.model_construct(span=self.sp(meta), name=str(c[0]))

    def past(self, meta, c):
        return self._delayed(meta, c, -1)

    def future(self, meta, c):
        return self._delayed(meta, c, +1)

    def _delayed(self, meta, c, sign):
        k = int(c[1])
        if k > MAX_DELAY:
            raise _AstError(f"a delay of {k} steps is too long: at most {MAX_DELAY}", self.sp(meta))
        if k == 0:
            raise _AstError(f"{c[0]}[t{'+' if sign > 0 else '-'}0] is just {c[0]}: a delay must be at least 1",
                            self.sp(meta))
        return ast.Delayed.model_construct(span=self.sp(meta), name=str(c[0]), offset=sign * k)

    def list(self, meta, c):
        return ast.ListLit.model_construct(span=self.sp(meta), items=list(c))

    def _bin(self, op, meta, c):
        return ast.BinOp.model_construct(span=self.sp(meta), op=op, left=c[0], right=c[1])

    def add(self, meta, c):
        return self._bin("+", meta, c)

    def sub(self, meta, c):
        return self._bin("-", meta, c)

    def mul(self, meta, c):
        return self._bin("*", meta, c)

    def div(self, meta, c):
        return self._bin("/", meta, c)

    def matmul(self, meta, c):
        return self._bin("@", meta, c)

    def neg(self, meta, c):
        return ast.Neg.model_construct(span=self.sp(meta), operand=c[0])

    def call(self, meta, c):
        positional, keywords, mappings = c[1] if len(c) > 1 else ([], [], [])
        return ast.Call.model_construct(span=self.sp(meta), func=str(c[0]), args=positional,
                                        keywords=keywords, mappings=mappings)

    def wrapped_call(self, meta, c):
        # reverse(lstm)(x, H = 8): the inner call names the cell, the outer gives its arguments
        name = str(c[0])
        groups = [x for x in c[1:] if isinstance(x, tuple)]
        wrapper_args = groups[0] if len(groups) == 2 else ([], [], [])
        outer = groups[-1] if groups else ([], [], [])
        wrapper = ast.Call.model_construct(span=self.sp(meta), func=name, args=wrapper_args[0],
                                           keywords=wrapper_args[1])
        if not wrapper.args or not isinstance(wrapper.args[0], ast.Name):
            raise _AstError(f"{name}(...)(...) takes a cell name first, as in {name}(lstm)(x, H = 64)",
                            self.sp(meta))
        return ast.Call.model_construct(span=self.sp(meta), func=wrapper.args[0].name, args=outer[0],
                                        keywords=outer[1], wrapper=wrapper)

    def args(self, meta, c):
        positional = [a for a in c if not isinstance(a, (ast.Keyword, ast.Mapping))]
        keywords = [a for a in c if isinstance(a, ast.Keyword)]
        mappings = [a for a in c if isinstance(a, ast.Mapping)]
        return (positional, keywords, mappings)

    def keyword(self, meta, c):
        return ast.Keyword.model_construct(span=self.sp(meta), name=str(c[0]), value=c[1])

    def mapping(self, meta, c):
        return ast.Mapping.model_construct(span=self.sp(meta), key=str(c[0])[1:-1], value=c[1])

