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
Benchmark of the evaluation pipeline. It measures, it does not assert:

1. batched greedy generation (batch 32, left padding) against a one-by-one loop on the tiny model (goal: >= 8x);
2. time to grade the 5,000 MATH test answers against themselves and against perturbed forms, in strict and symbolic
   modes (goal: <= 2 s strict);
3. re-scoring the 5,000 gold solutions (completion = reference solution) with `rescore_predictions` (goal: 100% in
   both modes), and with math-verify alone (no strict fast path) for information.

```bash
python benchmarks/bench_evaluation.py                      # writes benchmarks/results/evaluation.{md,json}
python benchmarks/bench_evaluation.py --math_test_path /data/math/test.jsonl --repeats 5
```

Part 2 and 3 need the real MATH test file (default `../shared/data/math/test.jsonl`, relative to the repository root);
they are skipped with a message when it is absent.
"""

import argparse
import csv
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import datasets
import torch
import transformers

from trl_plrs.math import grading
from trl_plrs.math.data import load_math, make_synthetic_math, math_corpus
from trl_plrs.math.evaluation import generate_completions, rescore_predictions
from trl_plrs.math.grading import extract_boxed_answer, is_equiv
from trl_plrs.testing import build_tiny_model, build_tokenizer


REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(function, repeats: int, before_each=None) -> tuple[dict, object]:
    seconds, result = [], None
    for _ in range(repeats):
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds)}, result


def machine_description() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "math_verify": importlib.metadata.version("math-verify"),
    }


def bench_generation(batch_size: int, max_new_tokens: int, repeats: int) -> dict:
    dataset = make_synthetic_math(num_per_level=batch_size // 5 + 1).shuffle(seed=0).select(range(batch_size))
    tokenizer = build_tokenizer(math_corpus(make_synthetic_math(num_per_level=50)))
    model = build_tiny_model(tokenizer, architecture="llama", hidden_size=64, num_hidden_layers=2)
    problems = dataset["problem"]
    generate_completions(model, tokenizer, problems[:2], max_new_tokens=2)  # warm-up

    batched_time, batched = timed(
        lambda: generate_completions(model, tokenizer, problems, max_new_tokens=max_new_tokens), repeats
    )
    loop_time, one_by_one = timed(
        lambda: [generate_completions(model, tokenizer, [p], max_new_tokens=max_new_tokens)[0] for p in problems],
        repeats,
    )
    prompt_lengths = [len(tokenizer(problem)["input_ids"]) for problem in problems]
    return {
        "model": "tiny llama, hidden 64, 2 layers, float32",
        "num_prompts": batch_size,
        "max_new_tokens": max_new_tokens,
        "problem_token_lengths": [min(prompt_lengths), max(prompt_lengths)],
        "batched": batched_time,
        "one_by_one": loop_time,
        "speedup_median": loop_time["median_s"] / batched_time["median_s"],
        "identical_completions": sum(a == b for a, b in zip(batched, one_by_one, strict=True)),
    }


def _perturb_cosmetic(answer: str) -> str:
    # Same answer written the way models often write it: extra spaces, \dfrac, \left( \right), a `$` unit sign.
    text = answer.replace("\\frac", "\\dfrac").replace("(", "\\left(").replace(")", "\\right)")
    return f" {text} "


def _perturb_decimal(answer: str) -> str | None:
    # Integers written as decimals: equal in value but not as strings (strict rejects them, symbolic accepts them).
    return f"{answer}.0" if answer.lstrip("-").isdigit() else None


def _perturb_wrong(answer: str) -> str | None:
    # Change the last digit: a different answer that both modes must reject.
    for index in range(len(answer) - 1, -1, -1):
        if answer[index].isdigit():
            return answer[:index] + str((int(answer[index]) + 1) % 10) + answer[index + 1 :]
    return None


def bench_grading(golds: list[str], repeats: int) -> dict:
    conditions = {
        "self": [(gold, gold) for gold in golds],
        "cosmetic (spaces, \\dfrac, \\left( \\right))": [(_perturb_cosmetic(gold), gold) for gold in golds],
        "integer written as N.0": [(_perturb_decimal(gold), gold) for gold in golds if _perturb_decimal(gold)],
        "last digit changed (wrong)": [(_perturb_wrong(gold), gold) for gold in golds if _perturb_wrong(gold)],
    }
    results = {}
    for name, pairs in conditions.items():
        for mode in grading.GRADING_MODES:
            # math-verify parses are cached; clear the cache so that each repeat pays for them.
            timing, graded = timed(
                lambda pairs=pairs, mode=mode: [is_equiv(pred, gold, mode=mode) for pred, gold in pairs],
                repeats,
                before_each=grading._parse_answer.cache_clear,
            )
            results[f"{name} | {mode}"] = {"pairs": len(pairs), "graded_equal": sum(graded), **timing}
    return results


def bench_rescoring(dataset: datasets.Dataset) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        csv_path = os.path.join(folder, "predictions.csv")
        with open(csv_path, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=["unique_id", "level", "type", "problem", "gold", "completion"])
            writer.writeheader()
            for row in dataset:
                writer.writerow(
                    {
                        "unique_id": row["unique_id"],
                        "level": row["level"],
                        "type": row["type"],
                        "problem": row["problem"],
                        "gold": row["answer"],
                        "completion": row["solution"],
                    }
                )
        grading._parse_answer.cache_clear()
        start = time.perf_counter()
        summary = rescore_predictions(csv_path, output_dir=os.path.join(folder, "rescored"))
        seconds = time.perf_counter() - start

    grading._parse_answer.cache_clear()
    start = time.perf_counter()
    math_verify_only = [
        grading._symbolic_equal(extract_boxed_answer(solution), answer)
        for solution, answer in zip(dataset["solution"], dataset["answer"], strict=True)
    ]
    math_verify_seconds = time.perf_counter() - start
    failing = [uid for uid, ok in zip(dataset["unique_id"], math_verify_only, strict=True) if not ok]
    return {
        "rows": summary["overall"]["count"],
        "seconds": seconds,
        "accuracy_strict": summary["overall"]["accuracy_strict"],
        "accuracy_symbolic": summary["overall"]["accuracy_symbolic"],
        "math_verify_only_accuracy": sum(math_verify_only) / len(math_verify_only),
        "math_verify_only_seconds": math_verify_seconds,
        "math_verify_only_failing_ids": failing[:20],
    }


def _timing(timing: dict) -> str:
    return f"{timing['median_s']:.3f} s ({timing['min_s']:.3f}-{timing['max_s']:.3f})"


def to_markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        "# Evaluation benchmark",
        "",
        f"Produced by `python benchmarks/bench_evaluation.py` (medians over {results['repeats']} repeats, min-max in "
        "brackets).",
        "",
        f"Machine: {machine['cpu_count']} CPUs ({machine['processor']}), torch threads {machine['torch_threads']}, "
        f"{machine['platform']}; Python {machine['python']}, torch {machine['torch']}, transformers "
        f"{machine['transformers']}, datasets {machine['datasets']}, math-verify {machine['math_verify']}.",
        "",
        "## 1. Batched generation vs a one-by-one loop (goal >= 8x)",
        "",
    ]
    generation = results["generation"]
    lines += [
        f"{generation['num_prompts']} synthetic problems of {generation['problem_token_lengths'][0]}-"
        f"{generation['problem_token_lengths'][1]} tokens, {generation['model']}, greedy, max_new_tokens "
        f"{generation['max_new_tokens']}.",
        "",
        "| loop | time |",
        "|---|---:|",
        f"| batched (one batch of {generation['num_prompts']}, left padding) | {_timing(generation['batched'])} |",
        f"| one by one | {_timing(generation['one_by_one'])} |",
        "",
        f"**Speed-up: {generation['speedup_median']:.1f}x** (ratio of medians). Identical completions: "
        f"{generation['identical_completions']}/{generation['num_prompts']}.",
        "",
    ]
    if "grading" not in results:
        lines += [f"Parts 2 and 3 skipped: {results['skipped']}", ""]
        return "\n".join(lines)
    lines += [
        "## 2. Grading the 5,000 MATH test answers (goal <= 2 s strict)",
        "",
        "Each prediction is compared with the gold answer by `is_equiv`; math-verify's parse cache is cleared "
        "before each repeat.",
        "",
        "| predictions | mode | pairs | graded equal | time |",
        "|---|---|---:|---:|---:|",
    ]
    for key, value in results["grading"].items():
        condition, mode = key.split(" | ")
        lines.append(f"| {condition} | {mode} | {value['pairs']} | {value['graded_equal']} | {_timing(value)} |")
    rescoring = results["rescoring"]
    lines += [
        "",
        "Wrong answers still graded equal are only changed unit exponents (`440\\text{ cm}^3` for `440\\text{ cm}^2`: the "
        "number is right, units are ignored by design) and, in symbolic mode, `\\frac{1}{2005!}` for `\\frac{1}{2004!}` "
        "(math-verify compares the tiny difference to zero).",
    ]
    lines += [
        "",
        "## 3. Re-scoring the gold solutions (goal 100% in both modes)",
        "",
        f"`rescore_predictions` on a CSV of the {rescoring['rows']} test rows with completion = reference solution "
        f"({rescoring['seconds']:.2f} s):",
        "",
        f"- strict: **{100 * rescoring['accuracy_strict']:.2f}%**",
        f"- symbolic: **{100 * rescoring['accuracy_symbolic']:.2f}%**",
        f"- math-verify alone, without the strict fast path (for information): "
        f"{100 * rescoring['math_verify_only_accuracy']:.2f}% ({rescoring['math_verify_only_seconds']:.1f} s)",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--math_test_path", default=os.path.join("..", "shared", "data", "math", "test.jsonl"))
    parser.add_argument("--output_dir", default=os.path.join(REPOSITORY_ROOT, "benchmarks", "results"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    args = parser.parse_args()

    results = {"machine": machine_description(), "repeats": args.repeats}
    results["generation"] = bench_generation(args.batch_size, args.max_new_tokens, args.repeats)
    print(f"generation speed-up: {results['generation']['speedup_median']:.1f}x")

    math_test_path = args.math_test_path
    if not os.path.isabs(math_test_path) and not os.path.exists(math_test_path):
        math_test_path = os.path.join(REPOSITORY_ROOT, math_test_path)
    if os.path.exists(math_test_path):
        dataset = load_math(math_test_path)
        results["grading"] = bench_grading(list(dataset["answer"]), args.repeats)
        results["rescoring"] = bench_rescoring(dataset)
        print(json.dumps(results["rescoring"], indent=2))
    else:
        results["skipped"] = f"MATH test file not found at {args.math_test_path!r} (pass --math_test_path)."
        print(results["skipped"])

    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "evaluation.json"), "w") as file:
        json.dump(results, file, indent=2)
    with open(os.path.join(args.output_dir, "evaluation.md"), "w") as file:
        file.write(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
