# Copyright 2026 The trl_plrs Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The answer rewrites of symbolic grading, one by one (their effect on grading: tests/test_grading.py's suite)."""

from fractions import Fraction

import pytest

from trl_plrs.math.answer_forms import canonical_answer, exact_rational, split_equation, value_side


@pytest.mark.parametrize(
    "answer, canonical",
    [
        ("five", "5"),
        ("\\text{Twenty-One}", "21"),
        ("two thousand five hundred", "2500"),
        ("a hundred", "100"),
        ("3\\text{ million}", "3000000"),
        ("2.5 thousand", "2500"),
        ("2^{\\text{nd}}", "2"),
        ("21st", "21"),
        ("0.\\overline{3}", "\\frac{1}{3}"),
        ("0.1\\overline{6}", "\\frac{1}{6}"),
        ("-1.\\overline{09}", "-\\frac{12}{11}"),
        ("0.\\overline{9}", "1"),
        ("12,345,678", "12345678"),
        ("1{,}000", "1000"),
        ("1\\,000.5", "1000.5"),
        ("1{,}5", "1.5"),
        ("0.5+0.25i", "{\\frac{1}{2}}+{\\frac{1}{4}}i"),
        ("2.0-3.0i", "2-3i"),
        ("\\binom52", "\\binom{5}{2}"),
        # left as written
        ("3^{2}", "3^{2}"),
        ("1,2", "1,2"),
        ("0.25", "0.25"),
        ("x+1", "x+1"),
        ("\\text{east}", "\\text{east}"),
        ("one of them", "one of them"),
        ("\\pi i", "\\pi i"),
    ],
)
def test_canonical_answer(answer, canonical):
    assert canonical_answer(answer) == canonical


@pytest.mark.parametrize(
    "answer, value",
    [("y = 2x+3", "2x+3"), ("f(x)=x^2", "x^2"), ("a_n=3n+1", "3n+1"), ("x+y=7", None), ("2x=7", None), ("7", "7")],
)
def test_value_side(answer, value):
    assert value_side(answer) == value


def test_split_equation_ignores_inequalities():
    assert split_equation("x \\le 3") is None and split_equation("x>=3") is None and split_equation("a=b=c") is None
    assert split_equation("y = 1") == ("y", "1")


@pytest.mark.parametrize(
    "answer, value",
    [("0.75", Fraction(3, 4)), ("-\\frac{3}{4}", Fraction(-3, 4)), ("3/4", Fraction(3, 4)), (".5", Fraction(1, 2))],
)
def test_exact_rational(answer, value):
    assert exact_rational(answer) == value


@pytest.mark.parametrize("answer", ["\\frac{x}{2}", "\\sqrt{2}", "1/0", "1,000", "2\\pi"])
def test_not_an_exact_rational(answer):
    assert exact_rational(answer) is None
