"""Safe arithmetic for GSM8k calculator annotations (``<<48/2=24>>``) during decoding.

``evaluate_expression`` accepts only number literals, binary + - * /, unary + and -, and parentheses, parsed with
``ast`` and evaluated with exact rational arithmetic (``fractions.Fraction``, so 0.1+0.2 is 0.3). Everything else —
names, calls, attributes, ``**``, ``//``, ``%``, comparisons, strings, ``__import__`` — is refused. Bounds: at most
``MAX_EXPRESSION_CHARS`` characters, ``MAX_ABS_VALUE`` in magnitude for every literal and intermediate result,
``MAX_DENOMINATOR_DIGITS`` digits of denominator, and a wall-clock deadline. Errors come back as a ``CalcResult``
with ``error`` set; nothing is ever raised into the decoding loop.

``calculator_completion(text)`` is the text-level hook: if the generated text ends inside an unclosed annotation
``<<expr=``, it returns the text to append (``"24>>"``), else None. Numbers are formatted as integers without
``.0`` when exact, otherwise with up to 6 decimals, trailing zeros removed (``10/4`` → ``2.5``, ``1/3`` →
``0.333333``).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import time
from fractions import Fraction

MAX_EXPRESSION_CHARS = 200
MAX_ABS_VALUE = Fraction(10) ** 15
MAX_DENOMINATOR_DIGITS = 30
TIME_LIMIT_S = 0.05
DECIMALS = 6

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


@dataclasses.dataclass(frozen=True)
class CalcResult:
    """Outcome of ``evaluate_expression``: exactly one of ``value`` / ``error`` is set."""

    value: Fraction | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Refused(Exception):
    pass


class _Evaluator:
    def __init__(self, deadline: float):
        self.deadline = deadline

    def _check(self, x: Fraction) -> Fraction:
        if abs(x) > MAX_ABS_VALUE:
            raise _Refused(f"magnitude {float(x):.3g} exceeds the bound {float(MAX_ABS_VALUE):.0e}")
        if len(str(x.denominator)) > MAX_DENOMINATOR_DIGITS:
            raise _Refused("result needs too much precision")
        if time.perf_counter() > self.deadline:
            raise _Refused(f"time limit of {TIME_LIMIT_S}s exceeded")
        return x

    def eval(self, node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return self.eval(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise _Refused(f"literal {node.value!r} is not a number")
            return self._check(
                Fraction(node.value) if isinstance(node.value, int) else Fraction(str(node.value))
            )
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            v = self.eval(node.operand)
            return self._check(-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp) and isinstance(
            node.op, ast.Add | ast.Sub | ast.Mult | ast.Div
        ):
            a = self.eval(node.left)
            b = self.eval(node.right)
            if isinstance(node.op, ast.Add):
                return self._check(a + b)
            if isinstance(node.op, ast.Sub):
                return self._check(a - b)
            if isinstance(node.op, ast.Mult):
                return self._check(a * b)
            if b == 0:
                raise _Refused("division by zero")
            return self._check(a / b)
        what = (
            type(node.op).__name__
            if isinstance(node, ast.BinOp | ast.UnaryOp)
            else type(node).__name__
        )
        raise _Refused(
            f"{what} is not allowed (only numbers, + - * /, unary minus and parentheses)"
        )


def evaluate_expression(expr: str) -> CalcResult:
    """Evaluates an arithmetic expression safely; never raises (errors are returned in ``CalcResult.error``).

    Thousands separators between digits (``1,000``) and a leading ``$`` on numbers are accepted, as they occur
    in GSM8k annotations.
    """
    if not isinstance(expr, str):
        return CalcResult(error=f"expression must be a string, got {type(expr).__name__}")
    if len(expr) > MAX_EXPRESSION_CHARS:
        return CalcResult(
            error=f"expression has {len(expr)} characters, more than {MAX_EXPRESSION_CHARS}"
        )
    cleaned = _THOUSANDS.sub("", expr.replace("$", "")).strip()
    if not cleaned:
        return CalcResult(error="empty expression")
    try:
        tree = ast.parse(cleaned, mode="eval")
        value = _Evaluator(time.perf_counter() + TIME_LIMIT_S).eval(tree)
    except _Refused as e:
        return CalcResult(error=str(e))
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as e:
        return CalcResult(error=f"cannot parse {expr!r}: {type(e).__name__}")
    return CalcResult(value=value)


def format_number(value: Fraction) -> str:
    """Integers without ``.0``; other values with up to ``DECIMALS`` decimals, trailing zeros stripped."""
    if value.denominator == 1:
        return str(value.numerator)
    rounded = round(value, DECIMALS)
    if rounded.denominator == 1:
        return str(rounded.numerator)
    sign = "-" if rounded < 0 else ""
    scaled = abs(rounded) * 10**DECIMALS  # exact integer after rounding to DECIMALS places
    whole, frac = divmod(int(scaled), 10**DECIMALS)
    return f"{sign}{whole}.{str(frac).rjust(DECIMALS, '0').rstrip('0')}"


def calculator_completion(text: str) -> str | None:
    """Text to append when ``text`` ends with an unclosed ``<<expr=``, e.g. ``"…<<48/2="`` → ``"24>>"``.

    Returns None when the text does not end in an open annotation or the expression is refused (the model then
    simply continues generating on its own).
    """
    if not text.endswith("="):
        return None
    start = text.rfind("<<")
    if start < 0 or text.rfind(">>") > start:
        return None
    expr = text[start + 2 : -1]
    if "=" in expr:
        return None
    result = evaluate_expression(expr)
    if not result.ok:
        return None
    return format_number(result.value) + ">>"
