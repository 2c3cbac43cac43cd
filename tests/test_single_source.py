"""One source of truth: the options' defaults live in tables.h only. Every Python signature or field that takes an
option reads its default from the table (bandpo._tables, BandConfig, LogitOptions), never a literal copy that
could drift; None (absent) is the one literal allowed. The C++ side has no copy to check: its structs are made
from the rows (options.h), and the C ABI's defaults are written from them (bandpo_default_options)."""

import ast
import os

from bandpo import _tables

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "bandpo")
OPTIONS = {o.name for o in _tables.ALL_OPTIONS + _tables.LOGIT_OPTIONS}


def literal_defaults(tree: ast.AST):
    """(line, name) of every function parameter or class field named like an option whose default is a literal."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults) :], a.defaults))
            pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            for arg, default in pairs:
                if arg.arg in OPTIONS and _is_literal(default):
                    yield node.lineno, arg.arg
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and stmt.target.id in OPTIONS
                    and stmt.value is not None
                    and _is_literal(stmt.value)
                ):
                    yield stmt.lineno, stmt.target.id


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    return isinstance(node, ast.Constant) and node.value is not None


def test_no_option_default_is_written_twice():
    found = []
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                found += [f"{os.path.relpath(path, ROOT)}:{line}: {option}" for line, option in literal_defaults(tree)]
    assert not found, "option defaults written as literals (read them from bandpo._tables):\n" + "\n".join(found)


def test_the_check_finds_a_copy():
    tree = ast.parse("def f(x, *, delta=0.05, ignore_index=-100, normalizer=None):\n    pass\n")
    assert [name for _, name in literal_defaults(tree)] == ["delta", "ignore_index"]
