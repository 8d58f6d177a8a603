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
Exact-match grading of MATH answers: extraction of the last `\\boxed{}`, Hendrycks-style normalisation, and two
equality modes.

- `"strict"`: equality of the normalised strings. This is the paper's metric (the original MATH grader's rules,
  re-implemented here from their description).
- `"symbolic"`: strict equality first (fast path), then [math-verify](https://github.com/huggingface/Math-Verify) for
  answers that are equal but written differently (`0.5` and `\\frac12`, `\\{1,2\\}` and `\\{2,1\\}`, intervals).

Unreduced fractions: `\\frac{2}{4}` and `\\frac{1}{2}` are NOT equal in strict mode (the original grader compares
strings, and MATH's reference answers are reduced) and ARE equal in symbolic mode (same number).

>>> from trl_plrs.math.grading import extract_boxed_answer, is_equiv
>>> extract_boxed_answer("So $x = \\boxed{\\frac{1}{2}}$.")
'\\\\frac{1}{2}'
>>> is_equiv("0.5", "\\frac{1}{2}", mode="strict"), is_equiv("5", "500", mode="symbolic")
(True, False)
"""

import functools
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Literal

from .answer_forms import canonical_answer, exact_rational, split_equation, value_side


GRADING_MODES = ("strict", "symbolic")
# Seconds math-verify may spend on one parse or comparison. Its timeout uses `signal.alarm`, which only works in the
# main thread, so elsewhere (e.g. a data-loader or server thread) it runs without one.
MATH_VERIFY_TIMEOUT_SECONDS = 5

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed_answer(text: str | None) -> str | None:
    """
    Return the content of the last `\\boxed{...}` in `text` (nested braces matched by depth), or of the last
    `\\fbox{...}` when there is no `\\boxed`.

    The brace-less form `\\boxed 9` gives the text after `\\boxed ` up to the next `$` (or the end of the text).
    Returns `None` when there is no box or its braces are unbalanced: a missing answer is graded wrong.

    >>> extract_boxed_answer("First $\\boxed{1}$, then $\\boxed{\\frac{a}{b}}$.")
    '\\\\frac{a}{b}'
    >>> extract_boxed_answer("The answer is $\\boxed 9$.")
    '9'
    >>> extract_boxed_answer("no answer") is None
    True
    """
    if not text:
        return None
    for command in _BOX_COMMANDS:
        start = text.rfind(command)
        # Skip longer commands that merely start with the name, such as a hypothetical `\boxedfoo`.
        while start != -1 and text[start + len(command) : start + len(command) + 1].isalpha():
            start = text.rfind(command, 0, start)
        if start != -1:
            break
    else:
        return None
    rest = text[start + len(command) :]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        depth = 0
        for index, char in enumerate(stripped):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return stripped[1:index]
        return None
    if rest[:1] == " ":
        answer = rest[1:].split("$")[0].strip()
        return answer or None
    return None


# --------------------------------------------------------------------------------------------------------------------
# Normalisation (the rules of the original MATH grader, Hendrycks et al. 2021)

_SQRT_SINGLE = re.compile(r"\\sqrt(?!\{)(\s*)([^\s\\{])")
_UNIT_EXPONENT = re.compile(r"^\s*\^\s*\{?\s*\d\s*\}?")
_TEX_COMMAND = re.compile(r"\\[a-zA-Z]+")
_BASE_SUBSCRIPT = re.compile(r"_\{?(\d+)\}?$")
_FRAC_SPACE = re.compile(r"\\[dt]?frac\s+")


def _remove_trailing_units(text: str) -> str:
    # `5\text{ cm}` and `440\text{ cm}^2` -> `5`, `440`. Unlike the original grader, only a trailing unit is removed:
    # in `19 \text{ and }43` the `\text{ ` is not a unit, and cutting there would accept `19 \text{ and }44`.
    start = text.find("\\text{ ")
    if start == -1:
        return text
    depth = 0
    for index in range(start + len("\\text"), len(text)):
        depth += text[index] == "{"
        depth -= text[index] == "}"
        if depth == 0:
            rest = _UNIT_EXPONENT.sub("", text[index + 1 :])
            return text[:start] if not any(char.isdigit() for char in rest) else text
    return text[:start]


_INTEGER_SLASH_INTEGER = re.compile(r"^(-?(?:0|[1-9][0-9]*))/(0|[1-9][0-9]*)$")


def _fix_fracs(text: str) -> str:
    # `\frac12` -> `\frac{1}{2}`, `\frac1{72}` -> `\frac{1}{72}`, `\frac{1}2` -> `\frac{1}{2}`.
    pieces = text.split("\\frac")
    result = pieces[0]
    for piece in pieces[1:]:
        result += "\\frac"
        arguments = []
        rest = piece
        for _ in range(2):
            if rest.startswith("{"):
                depth = 0
                for index, char in enumerate(rest):
                    depth += char == "{"
                    depth -= char == "}"
                    if depth == 0:
                        arguments.append(rest[: index + 1])
                        rest = rest[index + 1 :]
                        break
                else:
                    arguments = None
                    break
            elif rest:
                # a brace-less argument is one character or one command: `\frac\pi4` -> `\frac{\pi}{4}`
                command = _TEX_COMMAND.match(rest)
                length = command.end() if command else 1
                arguments.append("{" + rest[:length] + "}")
                rest = rest[length:]
            else:
                arguments = None
                break
        # Malformed `\frac` (missing arguments): leave the text as written.
        result += piece if arguments is None else "".join(arguments) + rest
    return result


def normalize_answer(answer: str | None) -> str | None:
    """
    Normalise an answer string with the rules of the original MATH grader (Hendrycks et al., 2021), in this order:

    1. strip surrounding whitespace; remove line breaks and `\\!`; `\\\\` becomes `\\`;
    2. `\\tfrac` and `\\dfrac` become `\\frac`; `\\left` and `\\right` are removed;
    3. degrees `^{\\circ}` / `^\\circ`, dollar signs `\\$` and percent signs `\\%` are removed;
    4. units: a trailing `\\text{ ...}` (with a space), with an optional exponent, is removed (`5 \\text{ cm}^2` -> `5`);
    5. a leading `.` or one after a space or `{` gets a `0` (`.5` -> `0.5`);
    6. a short left-hand side is dropped: `x = 3` -> `3` (exactly one `=` and at most two characters before it);
    7. `\\sqrt3` -> `\\sqrt{3}`; spaces are removed; `\\frac12` -> `\\frac{1}{2}`, `\\frac\\pi4` -> `\\frac{\\pi}{4}`;
    8. `0.5` -> `\\frac{1}{2}`, and an integer ratio `a/b` -> `\\frac{a}{b}`.

    Differences from the original grader, each closing a false positive or a false negative seen on MATH: surrounding
    whitespace is stripped first (so `\\boxed{ x = 4}` still drops `x =`); a `\\text{ ` is cut only when it is a
    trailing unit (the original cut `19 \\text{ and }43` to `19`, accepting `19 \\text{ and }44`); a brace-less `\\frac`
    argument may be a command (the original turned `\\frac\\pi4` into `\\frac{\\}{p}i4`).

    Returns `None` for `None`.
    """
    if answer is None:
        return None
    text = answer.strip().replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "")
    text = _remove_trailing_units(text)
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if text.startswith("."):
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _SQRT_SINGLE.sub(lambda match: "\\sqrt{" + match.group(2) + "}", text)
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    match = _INTEGER_SLASH_INTEGER.match(text)
    if match:
        text = f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}"
    return text


# --------------------------------------------------------------------------------------------------------------------
# Equality


def _math_verify_timeout() -> int | None:
    return MATH_VERIFY_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _math_verify():
    """math-verify, imported when symbolic grading first needs it (strict grading does not)."""
    try:
        import math_verify
    except ImportError as error:
        raise ImportError(
            "Symbolic grading (`mode='symbolic'`, and `evaluate_math`'s `correct_symbolic`) needs math-verify: "
            "`pip install trl_plrs[math]` (or `pip install math-verify`)."
        ) from error
    return math_verify


@functools.lru_cache(maxsize=65536)
def _parse_answer(answer: str, timeout_seconds: int | None) -> tuple:
    # The answer is already extracted: box it again so that math-verify reads the whole of it as one LaTeX answer.
    math_verify = _math_verify()
    parsed = math_verify.parse(
        f"\\boxed{{{answer}}}",
        extraction_config=[
            math_verify.LatexExtractionConfig(boxed_match_priority=0),
            math_verify.ExprExtractionConfig(),
        ],
        parsing_timeout=timeout_seconds,
    )
    return tuple(parsed)


def _symbolic_equal(pred: str, gold: str) -> bool:
    # Forms math-verify misreads (numbers in words, ordinals, repeating decimals, thousands separators, decimals of a
    # complex number) are rewritten first; an equation stands for a value only with a named left-hand side.
    pred, gold = canonical_answer(pred), canonical_answer(gold)
    if (split_equation(pred) is None) != (split_equation(gold) is None):
        pred, gold = value_side(pred), value_side(gold)
        if pred is None or gold is None:
            return False
    pred_normalized, gold_normalized = normalize_answer(pred), normalize_answer(gold)
    if not pred_normalized or not gold_normalized:
        return False
    if pred_normalized == gold_normalized:
        return True
    # Two exact rationals (integers, plain decimals, integer fractions) are compared exactly: math-verify rounds floats
    # to 6 decimals, so it would accept `0.0000673` for `0.0000672`, or `0.142857` for `\frac{1}{7}`.
    # (Percent signs are gone after normalisation, so answers with one, `3\%` = `0.03`, are left to math-verify.)
    pred_value, gold_value = exact_rational(pred_normalized), exact_rational(gold_normalized)
    if pred_value is not None and gold_value is not None and "%" not in pred + gold:
        return pred_value == gold_value
    # math-verify drops a base subscript (`1202_3` parses as 1202): an answer in another base, or in none, differs.
    pred_base, gold_base = _BASE_SUBSCRIPT.search(pred_normalized), _BASE_SUBSCRIPT.search(gold_normalized)
    if (pred_base is None) != (gold_base is None) or (pred_base and pred_base.group(1) != gold_base.group(1)):
        return False
    timeout_seconds = _math_verify_timeout()
    # Brace-less fractions with a command argument (`\frac \pi4`) are misread by math-verify; brace them first.
    gold_parsed = _parse_answer(_fix_fracs(_FRAC_SPACE.sub(r"\\frac", gold)), timeout_seconds)
    pred_parsed = _parse_answer(_fix_fracs(_FRAC_SPACE.sub(r"\\frac", pred)), timeout_seconds)
    if not gold_parsed or not pred_parsed:
        return False
    if _math_verify().verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout_seconds):
        return True
    return _equal_complex_numbers(gold_parsed[0], pred_parsed[0])


def _equal_complex_numbers(gold, pred) -> bool:
    """Two constant expressions with the imaginary unit, equal once simplified (math-verify rejects `\\frac{1-3i}{4}`
    for `\\frac{1}{4}-\\frac{3}{4}i`: it compares complex numbers numerically and fails)."""
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
        return False
    # A parsed `i` may be a plain symbol: it is the imaginary unit here.
    gold, pred = (expr.xreplace({s: sympy.I for s in expr.free_symbols if s.name == "i"}) for expr in (gold, pred))
    if gold.free_symbols or pred.free_symbols or not (gold.has(sympy.I) and pred.has(sympy.I)):
        return False
    try:
        return sympy.simplify(gold - pred) == 0
    except (TypeError, ValueError, ArithmeticError):
        return False


def is_equiv(pred: str | None, gold: str | None, mode: Literal["strict", "symbolic"] = "symbolic") -> bool:
    """
    Whether a predicted answer equals the reference answer (both already extracted, e.g. by
    [`extract_boxed_answer`]).

    Args:
        pred (`str` or `None`):
            Predicted answer; `None` (no box found) or an empty answer is always wrong.
        gold (`str` or `None`):
            Reference answer; `None` or empty never matches.
        mode (`str`, *optional*, defaults to `"symbolic"`):
            `"strict"`: equality of the strings after [`normalize_answer`] (the paper's metric). `"symbolic"`: strict
            equality, else math-verify's `verify` (equal values written differently). Both keep `5` != `500` and
            `3` != `0.03`; `\\frac{2}{4}` equals `\\frac{1}{2}` in symbolic mode only. Symbolic mode also guards
            math-verify's own traps: two plain decimals are compared exactly (math-verify rounds to 6 decimals, so
            `0.0000673` would equal `0.0000672`), and different base subscripts (`1202_3`, `1202_4`) are unequal.

    >>> is_equiv("\\dfrac{1}{2}", "0.5", mode="strict")
    True
    >>> is_equiv("\\{2, 1\\}", "\\{1, 2\\}", mode="strict"), is_equiv("\\{2, 1\\}", "\\{1, 2\\}", mode="symbolic")
    (False, True)
    """
    if mode not in GRADING_MODES:
        raise ValueError(f"`mode` must be one of {GRADING_MODES}, but the value passed is {mode!r}.")
    pred_normalized, gold_normalized = normalize_answer(pred), normalize_answer(gold)
    if not pred_normalized or not gold_normalized:
        return False
    if mode == "strict":
        return pred_normalized == gold_normalized
    # Not a superset of strict: strict drops any short left-hand side (`2x = 7` is `7`); symbolic keeps only a named
    # one (`x = 7`, `f(x) = 7`).
    return _symbolic_equal(pred, gold)


def grade_completion(completion: str | None, gold: str | None) -> dict[str, object]:
    """
    Extract the answer of a completion and grade it in every mode.

    Returns:
        `dict`: `prediction` (the extracted answer or `None`), `correct_strict` and `correct_symbolic` (`bool`).
    """
    prediction = extract_boxed_answer(completion)
    grades = {f"correct_{mode}": is_equiv(prediction, gold, mode=mode) for mode in GRADING_MODES}
    return {"prediction": prediction, **grades}


# --------------------------------------------------------------------------------------------------------------------
# Report


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def accuracy_report(records: Iterable[Mapping], modes: Iterable[str] = GRADING_MODES) -> dict:
    """
    Accuracy overall, per level and per subject, with counts, for each grading mode.

    Args:
        records (`Iterable[Mapping]`):
            Graded rows with `level`, `type` and `correct_<mode>` (bools, or `"True"`/`"False"` as read from a CSV).
        modes (`Iterable[str]`, *optional*, defaults to `("strict", "symbolic")`):
            Grading modes to report.

    Returns:
        `dict`: `{"overall": group, "per_level": {level: group}, "per_subject": {subject: group}}`, where a group is
        `{"count": n, "correct_<mode>": k, "accuracy_<mode>": k / n}`.
    """
    modes = list(modes)

    def empty_group() -> dict:
        return {"count": 0, **{f"correct_{mode}": 0 for mode in modes}}

    overall, per_level, per_subject = empty_group(), {}, {}
    for record in records:
        level = str(record.get("level", ""))
        subject = str(record.get("type", ""))
        for group in (
            overall,
            per_level.setdefault(level, empty_group()),
            per_subject.setdefault(subject, empty_group()),
        ):
            group["count"] += 1
            for mode in modes:
                group[f"correct_{mode}"] += _as_bool(record[f"correct_{mode}"])

    def finish(group: dict) -> dict:
        for mode in modes:
            group[f"accuracy_{mode}"] = group[f"correct_{mode}"] / group["count"] if group["count"] else 0.0
        return group

    def level_key(level: str):
        return (0, int(level), "") if level.lstrip("-").isdigit() else (1, 0, level)

    return {
        "overall": finish(overall),
        "per_level": {level: finish(per_level[level]) for level in sorted(per_level, key=level_key)},
        "per_subject": {subject: finish(per_subject[subject]) for subject in sorted(per_subject)},
    }


def report_to_markdown(report: dict, modes: Iterable[str] = GRADING_MODES) -> str:
    """A markdown table of an [`accuracy_report`]: one row per group, accuracy in % and counts per mode."""
    modes = list(modes)
    header = "| group | count | " + " | ".join(f"{mode} EM % (correct)" for mode in modes) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(modes)]

    def row(name: str, group: dict) -> str:
        cells = [f"{100 * group[f'accuracy_{mode}']:.2f} ({group[f'correct_{mode}']})" for mode in modes]
        return f"| {name} | {group['count']} | " + " | ".join(cells) + " |"

    lines.append(row("**overall**", report["overall"]))
    lines += [row(f"Level {level}", group) for level, group in report["per_level"].items()]
    lines += [row(subject, group) for subject, group in report["per_subject"].items()]
    return "\n".join(lines) + "\n"
