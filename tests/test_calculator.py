"""Safe calculator: arithmetic agrees with Python on allowed input; everything else is refused, never raised."""

import random
from fractions import Fraction

import pytest

from iqlearn_jax import calculator


@pytest.mark.parametrize(
    "expr,want",
    [
        ("48/2", "24"),
        ("48 / 2", "24"),
        ("2+3*4", "14"),
        ("(2+3)*4", "20"),
        ("-3+5", "2"),
        ("--3", "3"),
        ("10/4", "2.5"),
        ("1/3", "0.333333"),
        ("2/3", "0.666667"),
        ("0.1+0.2", "0.3"),
        ("1,000*3", "3000"),
        ("$5*2", "10"),
        ("-7/2", "-3.5"),
        ("1.50*2", "3"),
    ],
)
def test_arithmetic(expr, want):
    result = calculator.evaluate_expression(expr)
    assert result.ok, result.error
    assert calculator.format_number(result.value) == want


def test_random_expressions_match_python_fractions():
    rng = random.Random(0)
    for _ in range(200):
        nums = [rng.randint(-50, 50) for _ in range(4)]
        ops = [rng.choice("+-*/") for _ in range(3)]
        expr = f"({nums[0]} {ops[0]} {nums[1]}) {ops[1]} {nums[2]} {ops[2]} {nums[3]}"
        fexpr = "".join(
            f"Fraction({t})" if t.lstrip("-").isdigit() else t
            for t in expr.replace("(", "( ").split()
        )
        try:
            want = eval(
                fexpr, {"Fraction": Fraction}
            )  # independent reference: Python's own evaluator
        except ZeroDivisionError:
            assert calculator.evaluate_expression(expr).error == "division by zero"
            continue
        assert calculator.evaluate_expression(expr).value == want


@pytest.mark.parametrize(
    "expr,fragment",
    [
        ("__import__('os').system('echo hi')", "not allowed"),
        ("x+1", "Name is not allowed"),
        ("abs(-3)", "not allowed"),
        ("(1).__class__", "not allowed"),
        ("2**10", "Pow is not allowed"),
        ("9**9**9**9", "Pow is not allowed"),
        ("10//3", "FloorDiv"),
        ("7%3", "Mod"),
        ("1/0", "division by zero"),
        ("5/(3-3)", "division by zero"),
        ("'a'*3", "not a number"),
        ("True+1", "not a number"),
        ("99999999*99999999*99999999", "exceeds the bound"),
        ("1e300*1e300", "exceeds the bound"),
        ("1" + "+1" * 150, "more than"),
        ("(" * 90 + "1" + ")" * 90, ""),
        ("1 +", "cannot parse"),
        ("", "empty"),
        ("1<2", "not allowed"),
        ("[1,2]", "not allowed"),
        ("lambda: 1", "not allowed"),
    ],
)
def test_refused(expr, fragment):
    result = calculator.evaluate_expression(expr)
    if expr.startswith("((("):  # deep but short nesting is legal arithmetic
        assert result.ok and result.value == 1
        return
    assert not result.ok and result.value is None
    assert fragment in result.error


def test_completion_hook():
    assert calculator.calculator_completion("She sold 48/2 = <<48/2=") == "24>>"
    assert calculator.calculator_completion("<<1/2=0.5>> then <<3*(2+1)=") == "9>>"
    assert calculator.calculator_completion("total <<5*3=15>>") is None  # closed annotation
    assert calculator.calculator_completion("x = 3") is None  # no annotation
    assert calculator.calculator_completion("<<48/2") is None  # no '=' yet
    assert calculator.calculator_completion("<<a=b=") is None
    # Refused expressions leave the text alone instead of raising into the decode loop.
    assert calculator.calculator_completion("<<__import__('os')=") is None
    assert calculator.calculator_completion("<<1/0=") is None
    assert calculator.calculator_completion("<<9**99999=") is None
    assert calculator.calculator_completion("<<" + "9" * 300 + "=") is None
