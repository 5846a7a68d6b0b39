"""Safe arithmetic for GSM8k calculator annotations (``<<48/2=24>>``) during decoding.

``evaluate_expression`` accepts GSM8k's arithmetic and nothing else. Grammar (whitespace ignored)::

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := ("+" | "-")* primary
    primary := number | "(" expr ")"
    number  := digits ["." digits] | "." digits          (digits: 0-9 only)

so underscores, exponents (``1e15``), hex/octal/binary (``0x10``), ``**``, ``//``, ``%``, names and calls are refused.
Before parsing, a ``$`` and thousands separators between digits (``1,000``) are dropped, as GSM8k writes them.
Values are exact rationals (``fractions.Fraction``: 0.1+0.2 is 0.3).

Limits are deterministic (they depend on the expression only, never on time or machine load): at most
``MAX_EXPRESSION_CHARS`` characters; every literal and intermediate result at most ``MAX_ABS_VALUE`` in magnitude
with at most ``MAX_DENOMINATOR_DIGITS`` denominator digits. So an evaluation is at most ~100 operations on integers
below 10^45: microseconds, with no wall-clock deadline. Errors come back as a ``CalcResult`` with ``error`` set;
nothing is ever raised into the decoding loop.

``calculator_completion(text)`` is the text-level hook: if the generated text ends inside an unclosed annotation
``<<expr=``, it returns the text to append (``"24>>"``), else None. Numbers are formatted as integers without
``.0`` when exact, otherwise with up to 6 decimals, trailing zeros removed (``10/4`` → ``2.5``, ``1/3`` →
``0.333333``).
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

MAX_EXPRESSION_CHARS = 200
MAX_ABS_VALUE = Fraction(10) ** 15
MAX_DENOMINATOR_DIGITS = 30
DECIMALS = 6

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?|\.\d+)|(?P<op>[-+*/()]))")
_ALLOWED = "digits, '.', + - * / and parentheses"


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


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """[(kind 'number' | 'op', text, 1-based position)]; any other character is refused by position."""
    tokens, i = [], 0
    while i < len(text):
        if text[i:].strip() == "":
            break
        match = _TOKEN.match(text, i)
        if match is None or match.end() == i:
            j = i + len(text[i:]) - len(text[i:].lstrip())
            raise _Refused(
                f"character {text[j]!r} at position {j + 1} is not allowed (only {_ALLOWED})"
            )
        kind = "number" if match.group("number") is not None else "op"
        tokens.append((kind, match.group(kind), match.start(kind) + 1))
        i = match.end()
    return tokens


def _check(x: Fraction) -> Fraction:
    if abs(x) > MAX_ABS_VALUE:
        raise _Refused(
            f"magnitude of {format_number(x)} exceeds the bound {format_number(MAX_ABS_VALUE)}"
        )
    if len(str(x.denominator)) > MAX_DENOMINATOR_DIGITS:
        raise _Refused(f"result needs more than {MAX_DENOMINATOR_DIGITS} digits of precision")
    return x


class _Parser:
    """Recursive descent over the tokens; recursion only through parentheses (at most 100 deep)."""

    def __init__(self, tokens: list[tuple[str, str, int]]):
        self.tokens, self.i = tokens, 0

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _unexpected(self, expected: str) -> _Refused:
        token = self._peek()
        if token is None:
            return _Refused(f"expression ends early: expected {expected}")
        return _Refused(
            f"{token[1]!r} at position {token[2]} is not allowed here: expected {expected}"
        )

    def parse(self) -> Fraction:
        value = self.expr()
        if self._peek() is not None:
            raise self._unexpected("an operator + - * / or the end")
        return value

    def expr(self) -> Fraction:
        value = self.term()
        while (token := self._peek()) is not None and token[1] in "+-":
            self.i += 1
            right = self.term()
            value = _check(value + right if token[1] == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while (token := self._peek()) is not None and token[1] in "*/":
            self.i += 1
            right = self.unary()
            if token[1] == "/" and right == 0:
                raise _Refused("division by zero")
            value = _check(value * right if token[1] == "*" else value / right)
        return value

    def unary(self) -> Fraction:
        negative = False
        while (token := self._peek()) is not None and token[1] in "+-":
            negative ^= token[1] == "-"
            self.i += 1
        value = self.primary()
        return -value if negative else value

    def primary(self) -> Fraction:
        token = self._peek()
        if token is not None and token[0] == "number":
            self.i += 1
            return _check(Fraction(token[1]))
        if token is not None and token[1] == "(":
            self.i += 1
            value = self.expr()
            if (close := self._peek()) is None or close[1] != ")":
                raise self._unexpected("')'")
            self.i += 1
            return value
        raise self._unexpected("a number or '('")


def evaluate_expression(expr: str) -> CalcResult:
    """Evaluates an arithmetic expression of the grammar above; never raises (errors in ``CalcResult.error``)."""
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
        return CalcResult(value=_Parser(_tokenize(cleaned)).parse())
    except _Refused as e:
        return CalcResult(error=str(e))


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
