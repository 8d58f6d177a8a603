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
Run the paper's six baselines (B1-B6) one after another on the same data with `examples/train_plrs.py`, and write one
comparison table (exact match overall and per level, trainable parameters, wall time) as markdown and CSV: the
paper's main table in miniature.

# Offline: tiny model, synthetic leveled data, about 10 minutes on 2 CPU cores
```bash
python examples/run_baselines.py --output_dir outputs/baselines
```

# The paper's experiment: every baseline's recipe on Llama-3.2-1B-Instruct and MATH, each run on 4 GPUs
```bash
python examples/run_baselines.py --output_dir outputs/baselines-llama-1b \
    --launcher "accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 4" \
    --recipe_dir examples/configs
```

Every argument after `--` goes to `train_plrs.py` for every baseline, e.g. `-- --eval_limit 500 --num_train_epochs 1`.
Each baseline runs in its own process (DeepSpeed and CUDA state do not leak between runs) and writes
`<output_dir>/<preset>/run_summary.json`, which this script reads back; a baseline whose summary already exists is not
run again unless `--overwrite`.
"""

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time

from trl_plrs.curriculum import PRESETS


SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_plrs.py")
BASELINE_IDS = {name: f"B{index + 1}" for index, name in enumerate(PRESETS)}
RECIPES = {
    "direct": "b1_direct.yaml",
    "seq_no_replay": "b2_seq_no_replay.yaml",
    "seq_no_replay_shrink": "b3_seq_no_replay_shrink.yaml",
    "seq_full_replay": "b4_seq_full_replay.yaml",
    "replay_shrink": "b5_replay_shrink.yaml",
    "replay_shrink_no_final": "b6_replay_shrink_no_final.yaml",
}
# The offline comparison: the demo's model and settings, with smaller data so that six runs fit in ~10 minutes.
OFFLINE_ARGS = ["--synthetic_rows_per_level", "100", "--disable_tqdm", "true"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    train_args = []
    if "--" in argv:
        split = argv.index("--")
        argv, train_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/baselines", help="Folder of the runs and the tables.")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS), help="Baselines to run.")
    parser.add_argument(
        "--launcher", default=None, help="Command that runs train_plrs.py, e.g. 'accelerate launch --num_processes 4'."
    )
    parser.add_argument(
        "--recipe_dir", default=None, help="Pass each baseline's recipe from this folder as `--config` (GPU runs)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Run again baselines that already have a summary.")
    args = parser.parse_args(argv)
    args.train_args = train_args
    return args


def run_baseline(args: argparse.Namespace, preset: str, first: bool) -> dict:
    output_dir = os.path.join(args.output_dir, preset)
    summary_path = os.path.join(output_dir, "run_summary.json")
    if args.overwrite or not os.path.exists(summary_path):
        launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
        command = [*launcher, SCRIPT]
        if args.recipe_dir is not None:
            command += ["--config", os.path.join(args.recipe_dir, RECIPES[preset])]
        offline = args.recipe_dir is None and "--model_name_or_path" not in args.train_args
        command += OFFLINE_ARGS if offline else []
        # The base model's accuracy is the same for every baseline: measured once, with the first one.
        command += ["--eval_before_training", str(first and offline).lower(), "--eval_after_training", "true"]
        command += [*args.train_args, "--plrs_preset", preset, "--output_dir", output_dir]
        print(f"[{BASELINE_IDS[preset]}] {shlex.join(command)}", flush=True)
        start = time.perf_counter()
        subprocess.run(
            command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        )
        wall_time = time.perf_counter() - start
        with open(summary_path) as file:
            summary = json.load(file)
        summary["wall_time"] = wall_time
        with open(summary_path, "w") as file:
            json.dump(summary, file, indent=2)
    with open(summary_path) as file:
        return json.load(file)


def table_row(baseline: str, preset: str, report: dict | None, summary: dict | None, levels: list[str]) -> dict:
    def accuracy(group):
        return None if group is None else round(100 * group["accuracy_strict"], 2)

    row = {"baseline": baseline, "preset": preset}
    if summary is not None:
        stages = summary["stage_summaries"]
        row["ranks"] = " ".join(str(stage["lora_rank"]) for stage in stages)
        row["stages"] = len(stages)
    else:
        row["ranks"], row["stages"] = "-", 0
    row["EM overall"] = accuracy(report["overall"]) if report else None
    for level in levels:
        row[f"EM L{level}"] = accuracy(report["per_level"].get(level)) if report else None
    if summary is not None:
        trainable = [stage["trainable_params"] for stage in summary["stage_summaries"]]
        row["trainable params (first stage)"] = trainable[0]
        row["trainable params (sum of stages)"] = sum(trainable)
        row["train time (s)"] = round(summary["train_time"], 1)
        row["wall time (s)"] = round(summary.get("wall_time", summary["train_time"]), 1)
    return row


def to_markdown(rows: list[dict]) -> str:
    columns = list(rows[-1])
    lines = ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append("-" if value is None else f"{value:,}" if isinstance(value, int) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine_info() -> str:
    import torch
    import transformers
    import trl

    return (
        f"{platform.platform()}, {os.cpu_count()} CPU cores, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )


def main(args: argparse.Namespace) -> list[dict]:
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.perf_counter()
    summaries = {preset: run_baseline(args, preset, first=index == 0) for index, preset in enumerate(args.presets)}
    total_time = time.perf_counter() - start

    reports = [summary["after"] for summary in summaries.values() if summary["after"]]
    levels = sorted({level for report in reports for level in report["per_level"]}, key=int)
    rows = []
    before = summaries[args.presets[0]].get("before")
    if before:
        rows.append(table_row("base", "(no training)", before, None, levels))
    for preset, summary in summaries.items():
        rows.append(table_row(BASELINE_IDS[preset], preset, summary["after"], summary, levels))

    with open(os.path.join(args.output_dir, "baselines.csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)
    first = summaries[args.presets[0]]
    markdown = (
        f"Exact match (strict, %) on the test split; model: {first['model']}; {first['num_processes']} process(es).\n"
        f"Machine: {machine_info()}. Total wall time: {total_time / 60:.1f} min.\n\n" + to_markdown(rows)
    )
    with open(os.path.join(args.output_dir, "baselines.md"), "w") as file:
        file.write(markdown)
    print("\n" + markdown)
    return rows


if __name__ == "__main__":
    main(parse_args())
