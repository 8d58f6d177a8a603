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
Answer transitions between predictions CSVs (two runs, or the stages of one run): which problems were kept, lost,
recovered or newly solved, per level.

Between consecutive CSVs A -> B, a problem (matched by `unique_id`) is:

- `kept`: correct in A and B;
- `lost`: correct in A, wrong in B;
- `recovered`: wrong in A, correct in B, and correct in some CSV before A (it had been solved, then forgotten);
- `newly_solved`: wrong in A, correct in B, and never correct before;
- `still_wrong`: wrong in A and B.

With only two CSVs nothing comes before A, so every wrong -> correct problem counts as newly solved.

```bash
python -m trl_plrs.math.transitions out/stage_eval/after_stage-1/predictions.csv out/stage_eval/after_stage-5/predictions.csv
```
"""

import argparse
import csv
import os
from collections.abc import Sequence

from ..curriculum import parse_level
from .grading import GRADING_MODES


TRANSITIONS = ("kept", "lost", "recovered", "newly_solved", "still_wrong")


def _read_correct(csv_path: str, mode: str) -> dict[str, tuple[str, bool]]:
    if not os.path.isfile(csv_path):
        raise ValueError(f"Predictions CSV {csv_path!r} does not exist.")
    column = f"correct_{mode}"
    with open(csv_path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if rows and not {"unique_id", column} <= set(rows[0]):
        raise ValueError(
            f"{csv_path!r} must have `unique_id` and `{column}` columns (as `evaluate_math` writes them), but has "
            f"{list(rows[0])}."
        )
    return {row["unique_id"]: (row.get("level", ""), row[column].strip().lower() == "true") for row in rows}


def _level_key(level: str) -> str:
    parsed = parse_level(level)
    return str(parsed) if parsed is not None else (level or "unknown")


def _sort_key(level: str):
    return (0, int(level), "") if level.isdigit() else (1, 0, level)


def answer_transitions(predictions_csvs: Sequence[str], mode: str = "strict") -> list[dict]:
    """
    Count the answer transitions between consecutive predictions CSVs, per level and overall.

    Args:
        predictions_csvs (`Sequence[str]`):
            Two or more predictions CSVs written by [`~trl_plrs.math.evaluation.evaluate_math`] (e.g. the
            `output_dir/stage_eval/after_stage-<k>/predictions.csv` of one run), in order.
        mode (`str`, *optional*, defaults to `"strict"`):
            Grading mode whose `correct_<mode>` column is compared: `"strict"` (the paper's metric) or `"symbolic"`.

    Returns:
        `list[dict]`: One entry per consecutive pair: `{"from": path, "to": path, "per_level": {level: counts},
        "overall": counts, "unmatched": n}`, where `counts` maps each of `kept`, `lost`, `recovered`,
        `newly_solved`, `still_wrong` to a number of problems, plus `count`. Only problems present in both CSVs are
        counted; `unmatched` is the number present in only one of them.
    """
    if mode not in GRADING_MODES:
        raise ValueError(f"`mode` must be one of {list(GRADING_MODES)}, but the value passed is {mode!r}.")
    if len(predictions_csvs) < 2:
        raise ValueError(
            f"`predictions_csvs` needs at least two CSVs to compare, but {len(predictions_csvs)} were passed."
        )
    runs = [_read_correct(path, mode) for path in predictions_csvs]
    solved_before: set[str] = set()
    reports = []
    for index in range(1, len(runs)):
        previous, current = runs[index - 1], runs[index]
        shared = [uid for uid in previous if uid in current]

        def empty() -> dict[str, int]:
            return {"count": 0, **dict.fromkeys(TRANSITIONS, 0)}

        overall, per_level = empty(), {}
        for uid in shared:
            level, was_correct = previous[uid]
            is_correct = current[uid][1]
            if was_correct:
                transition = "kept" if is_correct else "lost"
            elif is_correct:
                transition = "recovered" if uid in solved_before else "newly_solved"
            else:
                transition = "still_wrong"
            for group in (overall, per_level.setdefault(_level_key(level), empty())):
                group["count"] += 1
                group[transition] += 1
        solved_before |= {uid for uid, (_, correct) in previous.items() if correct}
        reports.append(
            {
                "from": predictions_csvs[index - 1],
                "to": predictions_csvs[index],
                "per_level": {level: per_level[level] for level in sorted(per_level, key=_sort_key)},
                "overall": overall,
                "unmatched": len(set(previous) ^ set(current)),
            }
        )
    return reports


def transitions_to_markdown(reports: list[dict]) -> str:
    """One markdown table per compared pair: a row per level (and overall), a column per transition."""
    lines = []
    for report in reports:
        lines += [f"**{report['from']} -> {report['to']}**", ""]
        lines += ["| level | count | " + " | ".join(TRANSITIONS) + " |", "|---|---:|" + "---:|" * len(TRANSITIONS)]
        groups = [(f"Level {level}", counts) for level, counts in report["per_level"].items()]
        for name, counts in [*groups, ("**overall**", report["overall"])]:
            lines.append(f"| {name} | {counts['count']} | " + " | ".join(str(counts[t]) for t in TRANSITIONS) + " |")
        if report["unmatched"]:
            lines.append(f"\n{report['unmatched']} problems are in only one of the two CSVs and are not counted.")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Answer transitions (lost, recovered, newly solved) per level.")
    parser.add_argument("predictions_csvs", nargs="+", help="Two or more predictions CSVs, in order.")
    parser.add_argument("--mode", default="strict", choices=list(GRADING_MODES), help="Grading mode to compare.")
    args = parser.parse_args(argv)
    print(transitions_to_markdown(answer_transitions(args.predictions_csvs, mode=args.mode)))


if __name__ == "__main__":
    main()
