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
        ("__import__('os').system('echo hi')", "character '_' at position 1 is not allowed"),
        ("x+1", "character 'x' at position 1 is not allowed"),
        ("abs(-3)", "character 'a' at position 1 is not allowed"),
        ("(1).__class__", "character '.' at position 4 is not allowed"),
        ("2**10", "'*' at position 3 is not allowed here"),
        ("9**9**9**9", "'*' at position 3 is not allowed here"),
        ("10//3", "'/' at position 4 is not allowed here"),
        ("7%3", "character '%'"),
        ("1/0", "division by zero"),
        ("5/(3-3)", "division by zero"),
        ("'a'*3", 'character "\'" at position 1'),
        ("True+1", "character 'T'"),
        ("99999999*99999999*99999999", "magnitude of 9999999800000001 exceeds the bound"),
        ("1" + "+1" * 150, "more than 200"),
        ("1 +", "expression ends early"),
        ("(1", "expected ')'"),
        ("1 2", "'2' at position 3 is not allowed here"),
        ("", "empty"),
        ("1<2", "character '<'"),
        ("[1,2]", "character '['"),
        ("lambda: 1", "character 'l'"),
        # GSM8k's grammar is plain decimal numbers: none of Python's other literal forms.
        ("1_000", "character '_' at position 2 is not allowed"),
        ("0x10", "character 'x' at position 2 is not allowed"),
        ("0o17", "character 'o' at position 2 is not allowed"),
        ("0b101", "character 'b' at position 2 is not allowed"),
        ("1e15+1", "character 'e' at position 2 is not allowed"),
        ("1e300*1e300", "character 'e'"),
        ("0." + "0" * 30 + "1", "more than 30 digits of precision"),
    ],
)
def test_refused(expr, fragment):
    result = calculator.evaluate_expression(expr)
    assert not result.ok and result.value is None
    assert fragment in result.error, result.error


def test_magnitude_message_prints_the_real_value():
    result = calculator.evaluate_expression("1000000000000000+1")
    assert result.error == "magnitude of 1000000000000001 exceeds the bound 1000000000000000"
    assert (
        calculator.evaluate_expression("1000000000000000").value == 10**15
    )  # the bound itself is legal


def test_limits_depend_on_the_expression_only():
    """No wall-clock deadline: the longest and deepest legal inputs always give the same answer."""
    cases = {
        "-" * 199 + "1": Fraction(-1),
        "(" * 99 + "1" + ")" * 99: Fraction(1),
        "*".join(["3"] * 31): Fraction(3) ** 31,  # 617673396283947 < 1e15
        "/".join(["7"] * 30): Fraction(1, 7**28),
    }
    assert "time" not in vars(calculator)  # nothing in the evaluator can read a clock
    for expr, want in cases.items():
        assert len(expr) <= calculator.MAX_EXPRESSION_CHARS
        results = {calculator.evaluate_expression(expr) for _ in range(300)}
        assert results == {calculator.CalcResult(value=want)}, (expr[:20], results)


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
