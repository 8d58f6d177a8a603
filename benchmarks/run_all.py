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
Run every benchmark of the curriculum trainer and write its tables to `benchmarks/results/`, plus a summary
(`results/summary.md`) of each measured figure against its goal.

```bash
OMP_NUM_THREADS=1 python benchmarks/run_all.py --quick    # a few minutes on 2 cores: smaller settings, fewer repeats
OMP_NUM_THREADS=1 python benchmarks/run_all.py            # the committed tables (about half an hour on 2 cores)
OMP_NUM_THREADS=1 python benchmarks/run_all.py --only overhead memory
```

Each benchmark runs in its own process, one after the other. `bench_evaluation.py` (generation and grading) is run
too with `--with_evaluation`; it has no quick mode.
"""

import argparse
import json
import os
import subprocess
import sys
import time


BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ["overhead", "data_prep", "transition", "memory", "packing", "difficulty", "stack"]
GOALS = {
    "overhead": "wall ratio curriculum / SFTTrainer <= 1.03",
    "data_prep": "ours / loop of trainers <= 0.3",
    "transition": "transition + loop re-entry <= 2% of a stage",
    "memory": "peak RSS curriculum / SFTTrainer <= 1.05",
    "packing": "tokens/s packed / padded >= 1.4",
    "difficulty": "base_loss scoring / one epoch <= 0.4",
    "stack": "last stage's step, fused stack / merge <= 1.45 (hidden 1024)",
}


def headline(name: str, results: dict) -> str:
    if name == "overhead":
        ratio = results["ratio"]
        return f"{ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})"
    if name in ("data_prep", "packing", "difficulty"):
        ratio = results["ratio"]
        return f"{ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})"
    if name == "transition":
        worst = max(results["models"], key=lambda record: record["share_of_stage"]["median"])
        return (
            f"at most {100 * worst['share_of_stage']['median']:.2f}% "
            f"({worst['boundary_ms']['median']:.0f} ms per boundary, hidden {worst['hidden_size']} x "
            f"{worst['num_hidden_layers']}, {worst['adapter_transition']})"
        )
    if name == "stack":
        return ", ".join(
            f"{record['stages'][-1]['ratio']['fused']['median']:.2f} fused vs "
            f"{record['stages'][-1]['ratio']['unfused']['median']:.2f} unfused ({shape})"
            for shape, record in results["shapes"].items()
        )
    if name == "memory":
        return ", ".join(
            f"{comparison['peak_rss_ratio']:.3f} ({comparison['curriculum']})" for comparison in results["comparisons"]
        )
    return "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smaller settings and fewer repeats: a few minutes.")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS, help="Benchmarks to run.")
    parser.add_argument("--math_train_path", default=None, help="MATH train .jsonl for the data-preparation one.")
    parser.add_argument("--with_evaluation", action="store_true", help="Also run bench_evaluation.py (slow).")
    parser.add_argument("--output_dir", default=os.path.join(BENCHMARKS_DIR, "results"))
    parser.add_argument("--summary_only", action="store_true", help="Rewrite summary.md from the existing results.")
    args = parser.parse_args(argv)

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; results in {args.output_dir}", flush=True)
    lines = ["# Benchmark summary", "", "| benchmark | measured | goal | table |", "|---|---|---|---|"]
    for name in args.only:
        command = [sys.executable, os.path.join(BENCHMARKS_DIR, f"bench_{name}.py"), "--output_dir", args.output_dir]
        if args.quick:
            command.append("--quick")
        if name in ("data_prep", "packing", "difficulty") and args.math_train_path:
            command += ["--math_train_path", args.math_train_path]
        if not args.summary_only:
            start = time.perf_counter()
            print(f"== {name}: {' '.join(command[1:])}", flush=True)
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
            print(f"== {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
        json_path = os.path.join(args.output_dir, f"{name}.json")
        if name in ("data_prep", "packing", "difficulty") and not os.path.exists(json_path):
            lines.append(f"| {name} | skipped (no MATH train file) | {GOALS[name]} | - |")
            continue
        with open(json_path) as json_file:
            results = json.load(json_file)
        lines.append(f"| {name} | {headline(name, results)} | {GOALS[name]} | [{name}.md]({name}.md) |")
    if args.with_evaluation and not args.summary_only:
        command = [
            sys.executable,
            os.path.join(BENCHMARKS_DIR, "bench_evaluation.py"),
            "--output_dir",
            args.output_dir,
        ]
        subprocess.run(command + (["--repeats", "1"] if args.quick else []), check=True, env=env)
        lines.append("| evaluation | see table | see table | [evaluation.md](evaluation.md) |")
    lines += [
        "",
        "Medians over repeats (min-max); ratios computed within one repeat. Taken on a shared 2-core machine with "
        f"`OMP_NUM_THREADS={env['OMP_NUM_THREADS']}`; each table gives its settings and the machine's description.",
    ]
    summary = "\n".join(lines) + "\n"
    if set(args.only) == set(BENCHMARKS):
        with open(os.path.join(args.output_dir, "summary.md"), "w") as summary_file:
            summary_file.write(summary)
    print(summary)


if __name__ == "__main__":
    main()
