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
"""
Answer forms that math-verify misreads, rewritten to forms it reads (symbolic grading only; pure functions):

- numbers in words, alone or with a magnitude word: `twenty-one` -> `21`, `3 million` -> `3000000`;
- ordinals: `2^{\\text{nd}}`, `3rd` -> `2`, `3`;
- repeating decimals: `0.1\\overline{6}` -> `\\frac{1}{6}`;
- thousands separators: `1{,}000`, `1\\,000`, `12,345,678` -> `1000`, `12345678` (and a decimal comma `1{,}5` -> `1.5`);
- decimals of a complex number: `0.5+0.25i` -> `\\frac{1}{2}+\\frac{1}{4}i` (exact, as its fraction form);
- brace-less binomials: `\\binom52` -> `\\binom{5}{2}`;

and the two comparisons math-verify gets wrong: an equation against a value (only a named left-hand side, `y = ...`,
`f(x) = ...`, `a_n = ...`, stands for its right-hand side: math-verify also accepts `x+y=7` for `7`), and exact
rationals (plain decimals, integers, integer fractions: compared exactly, where math-verify rounds to 6 decimals and
accepts `0.142857` for `\\frac{1}{7}`).

>>> canonical_answer("twenty-one"), canonical_answer("0.\\\\overline{3}"), canonical_answer("1{,}000")
('21', '\\\\frac{1}{3}', '1000')
"""

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction


_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_SMALL = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_MAGNITUDES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_NUMBER = r"\d+(?:\.\d+)?"
_ORDINAL = re.compile(r"^(\d+)(?:\^\{?(?:\\text\{)?(?:st|nd|rd|th)\}?\}?|st|nd|rd|th)$")
_REPEATING = re.compile(r"^(-?)(\d*)\.(\d*)\\overline\{(\d+)\}$")
_THOUSANDS_PLAIN = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_THOUSANDS_TEX = re.compile(r"(?<=\d)(?:\{,\}|\\[,;: ]|\\!,\\!)(?=\d{3}(?!\d))")
_DECIMAL_COMMA = re.compile(r"(?<=\d)\{,\}(?=\d)")
_IMAGINARY_UNIT = re.compile(r"(?<![a-zA-Z\\])i(?![a-zA-Z])")
_DECIMAL = re.compile(r"(?<![\d.])(\d+\.\d+)(?![\d.])")
_BINOM = re.compile(r"\\[dt]?binom(\d)(\d)")
_NAMED_SIDE = re.compile(r"^(?:[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?|[a-zA-Z]\([^()=]*\))$")
_RATIONAL = re.compile(r"^(-?)(?:\\[dt]?frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+)|(\d+(?:\.\d*)?|\.\d+))$")


def _words_to_number(text: str) -> str | None:
    """`twenty-one` -> `21`, `two thousand five hundred` -> `2500`, `2.5 thousand` -> `2500`; else `None`."""
    words = text.lower().replace("-", " ").replace(",", " ").split()
    if not words or not any(word in _SMALL or word in _MAGNITUDES or word == "hundred" for word in words):
        return None
    total, current, seen = Decimal(0), Decimal(0), False
    for word in words:
        if word in ("and", "a") and not seen:
            current = Decimal(1) if word == "a" else current
            continue
        if word in ("and",):
            continue
        if re.fullmatch(_NUMBER, word):
            current += Decimal(word)
        elif word in _SMALL:
            current += _SMALL[word]
        elif word == "hundred":
            current = (current or 1) * 100
        elif word in _MAGNITUDES:
            total += (current or 1) * _MAGNITUDES[word]
            current = Decimal(0)
        else:
            return None
        seen = True
    value = total + current
    return str(value.to_integral_value()) if value == value.to_integral_value() else str(value.normalize())


def _repeating_to_fraction(match: re.Match) -> str:
    sign, whole, fixed, repetend = match.groups()
    value = Fraction(int(whole or "0"))
    value += Fraction(int(fixed + repetend) - int(fixed or "0"), 10 ** len(fixed) * (10 ** len(repetend) - 1))
    value = -value if sign else value
    return _latex_fraction(value)


def _latex_fraction(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _decimal_to_fraction(match: re.Match) -> str:
    value = Fraction(match.group(1))
    return str(value.numerator) if value.denominator == 1 else "{" + _latex_fraction(value) + "}"


def canonical_answer(answer: str) -> str:
    """`answer` with the forms above rewritten; other answers are returned as they are (stripped)."""
    text = answer.strip()
    plain = _TEXT.sub(r"\1", text).strip()
    words = _words_to_number(plain)
    if words is not None:
        return words
    compact = plain.replace(" ", "")
    ordinal = _ORDINAL.match(compact)
    if ordinal:
        return ordinal.group(1)
    repeating = _REPEATING.match(compact)
    if repeating:
        return _repeating_to_fraction(repeating)
    if _THOUSANDS_PLAIN.match(compact):
        return compact.replace(",", "")
    text = _THOUSANDS_TEX.sub("", text)
    text = _DECIMAL_COMMA.sub(".", text)
    text = _BINOM.sub(r"\\binom{\1}{\2}", text)
    if _IMAGINARY_UNIT.search(text):
        text = _DECIMAL.sub(_decimal_to_fraction, text)
    return text


def split_equation(answer: str) -> tuple[str, str] | None:
    """`(lhs, rhs)` of an answer with one top-level `=` (not `\\le`, `\\ne`, ...), else `None`."""
    if answer.count("=") != 1 or re.search(r"[<>!]=|=[<>]|\\(?:le|ge|ne|approx)", answer):
        return None
    lhs, rhs = answer.split("=")
    return lhs.strip(), rhs.strip()


def value_side(answer: str) -> str | None:
    """
    What an answer states as a value: itself without `=`; the right-hand side of `y = ...`, `f(x) = ...`, `a_n = ...`
    (a named left-hand side); `None` for another equation (`x + y = 7` is not the value 7).
    """
    sides = split_equation(answer)
    if sides is None:
        return answer
    lhs, rhs = sides
    return rhs if _NAMED_SIDE.match(lhs.replace(" ", "")) else None


def exact_rational(answer: str) -> Fraction | None:
    """The value of an integer, plain decimal or integer fraction (`-\\frac{3}{4}`, `3/4`, `0.75`), else `None`."""
    match = _RATIONAL.match(answer.replace(" ", ""))
    if not match:
        return None
    sign, frac_num, frac_den, slash_num, slash_den, number = match.groups()
    try:
        if number is not None:
            value = Fraction(Decimal(number))
        else:
            numerator, denominator = (frac_num, frac_den) if frac_num is not None else (slash_num, slash_den)
            if int(denominator) == 0:
                return None
            value = Fraction(int(numerator), int(denominator))
    except (InvalidOperation, ValueError):
        return None
    return -value if sign else value
