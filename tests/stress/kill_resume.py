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
Kill-and-resume stress test: a 3-stage curriculum (`tests/scripts/curriculum_worker.py`: tiny model, a checkpoint
every step, fraction replay, LoRA dropout) is killed with SIGKILL from outside at seeded-random moments, resumed in a
fresh process (sometimes killed again while resuming), and its stage adapters and final adapter are compared tensor by
tensor with the uninterrupted run of the same scenario. Scenarios: plain stages, stages that end mid-epoch (batch 3),
and stages that stop early (patience 1, best checkpoint loaded), each in merge and in stack mode. Every trial also
checks that no staging leftover (`.*.tmp`) stays and that the root adapter's config and weights agree.

```bash
python tests/stress/kill_resume.py --trials 30            # writes tests/stress/kill_resume_results.md
python tests/stress/kill_resume.py --trials 8 --seed 1     # the seeded subset the test suite runs
```
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from safetensors.torch import load_file


HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(REPO_ROOT, "tests", "scripts", "curriculum_worker.py")
SCENARIOS = {"plain": [], "mid_epoch": ["--per_device_train_batch_size", "3"], "early_stopping": ["--early_stopping"]}
MODES = ("merge", "stack")
ATOL = 1e-6
ADAPTER_DIRS = ("stage-1", "stage-2", "stage-3", ".")


def _env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
    }


def worker_command(output_dir: str, scenario: str, mode: str, resume: bool) -> list[str]:
    command = [sys.executable, WORKER, "--output_dir", output_dir, "--adapter_transition", mode, *SCENARIOS[scenario]]
    return command + (["--resume"] if resume else [])


def has_checkpoint(output_dir: str) -> bool:
    return os.path.isdir(output_dir) and any(
        name.startswith("checkpoint-") and os.path.isfile(os.path.join(output_dir, name, "trainer_state.json"))
        for name in os.listdir(output_dir)
    )


def run_to_end(output_dir: str, scenario: str, mode: str) -> subprocess.CompletedProcess:
    command = worker_command(output_dir, scenario, mode, resume=has_checkpoint(output_dir))
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)


def run_and_kill(output_dir: str, scenario: str, mode: str, delay: float) -> bool:
    """Start the worker (resuming if there is a checkpoint) and SIGKILL it after `delay` s. Returns whether it was."""
    command = worker_command(output_dir, scenario, mode, resume=has_checkpoint(output_dir))
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=delay)
        return False  # it finished before the kill
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def compare(reference_dir: str, output_dir: str) -> tuple[float, list[str]]:
    """Largest absolute difference over every adapter tensor, and the problems found."""
    problems, worst = [], 0.0
    for name in ADAPTER_DIRS:
        path = os.path.join(output_dir, name, "adapter_model.safetensors")
        if not os.path.isfile(path):
            problems.append(f"{name}: no adapter")
            continue
        expected, actual = load_file(os.path.join(reference_dir, name, "adapter_model.safetensors")), load_file(path)
        if expected.keys() != actual.keys():
            problems.append(f"{name}: other tensors")
            continue
        for key, value in expected.items():
            worst = max(worst, float((actual[key].float() - value.float()).abs().max()))
    with open(os.path.join(output_dir, "adapter_config.json")) as file:
        rank = json.load(file)["r"]
    shapes = {
        tuple(value.shape) for key, value in load_file(os.path.join(output_dir, "adapter_model.safetensors")).items()
    }
    if not any(rank in shape for shape in shapes):
        problems.append(f"root adapter config r={rank} does not match its weights")
    leftovers = [
        os.path.join(root, name)
        for root, dirs, files in os.walk(output_dir)
        for name in dirs + files
        if name.startswith(".") and (name.endswith(".tmp") or name.endswith(".tmp.old"))
    ]
    if leftovers:
        problems.append(f"staging leftovers: {leftovers}")
    if worst > ATOL:
        problems.append(f"max |difference| {worst:.3g} > {ATOL}")
    return worst, problems


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--double_kill_share", type=float, default=0.3, help="Trials whose resume is killed again.")
    parser.add_argument("--output", default=os.path.join(HERE, "kill_resume_results.md"))
    parser.add_argument("--work_dir", default=None, help="Keep the runs here (default: a temporary folder).")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="kill-resume-")
    references, durations, trials = {}, {}, []
    try:
        plan = [(rng.choice(list(SCENARIOS)), rng.choice(MODES)) for _ in range(args.trials)]
        for scenario, mode in sorted(set(plan)):
            reference_dir = os.path.join(work_dir, f"reference-{scenario}-{mode}")
            start = time.perf_counter()
            result = run_to_end(reference_dir, scenario, mode)
            if result.returncode != 0:
                raise RuntimeError(f"reference {scenario}/{mode} failed:\n{result.stderr[-3000:]}")
            references[scenario, mode], durations[scenario, mode] = reference_dir, time.perf_counter() - start
        for index, (scenario, mode) in enumerate(plan):
            output_dir = os.path.join(work_dir, f"trial-{index}")
            kills = []
            for _ in range(2 if rng.random() < args.double_kill_share else 1):
                delay = rng.uniform(1.0, 0.9 * durations[scenario, mode])
                kills.append(round(delay, 2) if run_and_kill(output_dir, scenario, mode, delay) else None)
            result = run_to_end(output_dir, scenario, mode)
            if result.returncode != 0:
                worst, problems = float("nan"), [f"resume failed: {result.stderr.strip().splitlines()[-1:]}"]
            else:
                worst, problems = compare(references[scenario, mode], output_dir)
            trials.append(
                {"trial": index, "scenario": scenario, "mode": mode, "kills_at_s": kills, "max_abs_difference": worst,
                 "exact": not problems, "problems": problems}
            )  # fmt: skip
            print(
                f"trial {index}: {scenario}/{mode} kills {kills} -> {'exact' if not problems else problems}",
                flush=True,
            )
            shutil.rmtree(output_dir, ignore_errors=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    killed = sum(1 for trial in trials for kill in trial["kills_at_s"] if kill is not None)
    exact = sum(trial["exact"] for trial in trials)
    lines = [
        "# Kill-and-resume stress test",
        "",
        f"`python tests/stress/kill_resume.py --trials {args.trials} --seed {args.seed}`: {len(trials)} trials, "
        f"{killed} SIGKILLs at seeded-random moments (uniform between 1 s and 0.9 x the uninterrupted run's wall time), "
        f"{sum(len(t['kills_at_s']) > 1 for t in trials)} trials killed twice. **{exact}/{len(trials)} resumed runs "
        f"exact** (every stage adapter and the final adapter within {ATOL} of the uninterrupted run, no staging "
        "leftover, root config and weights agree).",
        "",
        "| trial | scenario | mode | kills at (s; - = finished first) | max abs difference | result |",
        "|---|---|---|---|---|---|",
    ]
    for trial in trials:
        kills = ", ".join("-" if kill is None else f"{kill}" for kill in trial["kills_at_s"])
        lines.append(
            f"| {trial['trial']} | {trial['scenario']} | {trial['mode']} | {kills} | {trial['max_abs_difference']:.2g} "
            f"| {'exact' if trial['exact'] else '; '.join(trial['problems'])} |"
        )
    reference_times = ", ".join(f"{s}/{m} {t:.0f} s" for (s, m), t in sorted(durations.items()))
    lines += ["", f"Uninterrupted runs (wall time, process start included): {reference_times}."]
    if args.output:
        with open(args.output, "w") as file:
            file.write("\n".join(lines) + "\n")
    return {"trials": trials, "exact": exact, "killed": killed}


if __name__ == "__main__":
    summary = main()
    sys.exit(0 if summary["exact"] == len(summary["trials"]) else 1)
