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
What every benchmark shares: one thread per process, quiet libraries, the machine's description, median/min/max
summaries, the fixed-length rows that make two runs' steps cost the same, and writing `results/<name>.{md,json}`.

Import this module before torch: it sets `OMP_NUM_THREADS=1` (unless already set), since on a small shared machine
several threads per process only contend for the cores and make tiny-model timings meaningless.
"""

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from importlib.metadata import version  # noqa: E402

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
REPOSITORY_ROOT = os.path.dirname(BENCHMARKS_DIR)
RESULTS_DIR = os.path.join(BENCHMARKS_DIR, "results")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHARED_MACHINE_NOTE = (
    "Timings were taken on a shared machine (other engineers' jobs ran concurrently), with one thread per process "
    "(`OMP_NUM_THREADS=1`); figures are medians over repeats, with min-max, and every ratio is computed within one "
    "repeat (both sides measured back to back, order alternating) before taking the median."
)


DEFAULT_MATH_TRAIN = os.path.join("..", "shared", "data", "math", "train.jsonl")


def resolve_math_path(path: str) -> str | None:
    """`path` as given or relative to the repository root, if it exists (MATH is not shipped with the repository)."""
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(REPOSITORY_ROOT, path)]
    return next((candidate for candidate in candidates if os.path.exists(candidate)), None)


def quiet_libraries() -> None:
    """Silence progress bars and info logs, which would otherwise be timed too."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict:
    """CPU, cores, load, thread settings and library versions: what a reader needs to compare a table to theirs."""
    packages = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers"]
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1_5_15": [round(load, 2) for load in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch_num_threads": torch.get_num_threads(),
        "shared_machine": True,
        **{package: version(package) for package in packages},
    }


def machine_markdown(machine: dict) -> str:
    versions = ", ".join(
        f"{package} {machine[package]}"
        for package in ["torch", "transformers", "trl", "peft", "accelerate", "datasets"]
        if package in machine
    )
    return (
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores of {machine['cpu_count']}, "
        f"load average {machine['load_average_1_5_15'][0]} at start; `OMP_NUM_THREADS={machine['OMP_NUM_THREADS']}`, "
        f"torch threads {machine['torch_num_threads']}; Python {machine['python']}, {versions}; {machine['date_utc']} "
        "UTC.\n\n" + SHARED_MACHINE_NOTE
    )


def summarize(values: Sequence[float]) -> dict:
    """Median, min, max and count of `values`."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": list(values),
    }


def fmt(summary: dict, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """`median (min-max)` of a summary, e.g. `1.02 (0.99-1.05)`."""
    median, low, high = (summary[key] * scale for key in ("median", "min", "max"))
    return f"{median:.{digits}f}{unit} ({low:.{digits}f}-{high:.{digits}f})"


class Stopwatch:
    """`with Stopwatch() as watch: ...` then `watch.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def time_call(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def uniform_leveled_rows(
    rows_per_level: int, levels: Sequence[int] = (1, 2, 3, 4, 5), equations: int = 1, seed: int = 0
) -> Dataset:
    """
    Prompt/completion rows of one fixed token length at every level (sums of three-digit numbers, digits tokenized one
    by one; `equations` sums per completion sets the length), so that a step costs the same whichever stage's rows it
    draws and two runs differ only by what is compared.
    """
    import random

    rng = random.Random(seed)
    rows = []
    for level in levels:
        for _ in range(rows_per_level):
            sums = [(rng.randrange(100, 1000), rng.randrange(100, 1000)) for _ in range(equations)]
            work = " ".join(f"{a} + {b} = {a + b:04d}." for a, b in sums)
            a, b = sums[-1]
            rows.append(
                {
                    "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                    "completion": [{"role": "assistant", "content": f"{work} \\boxed{{{a + b:04d}}}"}],
                    "level": level,
                }
            )
    return Dataset.from_list(rows)


def bench_config_kwargs(output_dir: str, max_steps: int, batch_size: int, max_length: int = 512) -> dict:
    """`SFTConfig` arguments shared by every benchmark run: CPU, no logging, checkpointing or progress bar."""
    return dict(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        warmup_steps=0,
        learning_rate=1e-3,
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        seed=7,
        max_length=max_length,
        dataloader_num_workers=0,
    )


def write_results(name: str, markdown: str, data: dict, output_dir: str = RESULTS_DIR) -> tuple[str, str]:
    """Write `output_dir/<name>.md` and `output_dir/<name>.json` (with the machine's description); return the paths."""
    os.makedirs(output_dir, exist_ok=True)
    machine = data.setdefault("machine", machine_description())
    markdown_path = os.path.join(output_dir, f"{name}.md")
    json_path = os.path.join(output_dir, f"{name}.json")
    with open(markdown_path, "w") as markdown_file:
        markdown_file.write(markdown.rstrip() + "\n\n" + machine_markdown(machine) + "\n")
    with open(json_path, "w") as json_file:
        json.dump(data, json_file, indent=2)
        json_file.write("\n")
    return markdown_path, json_path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class StepClock(TrainerCallback):
    """
    Wall time of the optimizer steps, from the first step's start to the last step's end, and the tokens trained in
    between (`state.num_input_tokens_seen`: counted with `include_num_input_tokens_seen`, else 0).
    """

    def __init__(self):
        self.start, self.end, self.tokens_at_start, self.tokens = None, None, 0, 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is None:
            self.start, self.tokens_at_start = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        self.end, self.tokens = time.perf_counter(), state.num_input_tokens_seen - self.tokens_at_start


class PhaseClock(TrainerCallback):
    """Timestamps the training-loop events (and, through [`TimedCurriculumTrainer`], the stage events)."""

    def __init__(self):
        self.marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU work is asynchronous: a mark waits for what was queued before it
        self.marks.append((name, time.perf_counter()))

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark("train_begin")

    def on_step_begin(self, args, state, control, **kwargs):
        # A curriculum sends `on_train_begin` once: a later stage's loop has begun at its first step.
        if self.marks and self.marks[-1][0] == "on_stage_begin_done":
            self.mark("train_begin")

    def on_step_end(self, args, state, control, **kwargs):
        self.mark("step_end")

    def on_train_end(self, args, state, control, **kwargs):
        self.mark("train_end")


def _timed_curriculum_trainer():
    from trl_plrs import CurriculumSFTTrainer

    class TimedCurriculumTrainer(CurriculumSFTTrainer):
        """Marks the stage events and the final save on `self.clock`; the behaviour is the library's."""

        clock: PhaseClock

        def _call_stage_event(self, event, stage, **kwargs):
            self.clock.mark(f"{event}_start")
            super()._call_stage_event(event, stage, **kwargs)
            self.clock.mark(f"{event}_done")

        def save_model(self, output_dir=None, _internal_call=False):
            self.clock.mark("save_start")
            super().save_model(output_dir, _internal_call=_internal_call)
            self.clock.mark("save_done")

    return TimedCurriculumTrainer


TimedCurriculumTrainer = _timed_curriculum_trainer()

# (mark that opens an interval, mark that closes it): the phase the interval belongs to.
PHASE_OF_INTERVAL = {
    ("on_stage_begin_start", "on_stage_begin_done"): "transition",
    ("on_stage_begin_done", "train_begin"): "loop_entry",
    ("start", "train_begin"): "loop_entry",
    ("train_begin", "step_end"): "steps",
    ("step_end", "step_end"): "steps",
    ("step_end", "train_end"): "loop_exit",
    ("train_end", "on_stage_end_start"): "loop_exit",
    ("step_end", "on_stage_end_start"): "loop_exit",  # a curriculum sends `on_train_end` once, at its very end
    ("save_done", "train_end"): "other",
    ("on_stage_end_start", "on_stage_end_done"): "stage_save",
    ("save_start", "save_done"): "final_save",
    ("train_end", "end"): "save",  # `SFTTrainer`: `save_model()` after `train()`
}


def split_phases(clock: PhaseClock, start: float, end: float, kind: str) -> dict:
    """Sum the intervals between consecutive marks by phase; what no phase claims is `other`."""
    marks = [("start", start), *clock.marks, ("end", end)]
    if kind == "sft":
        phases = dict.fromkeys(["loop_entry", "steps", "loop_exit", "save", "other"], 0.0)
    else:
        phases = dict.fromkeys(["transition", "loop_entry", "steps", "loop_exit", "stage_save", "final_save"], 0.0)
        phases["other"] = 0.0
    for (previous_name, previous_time), (name, time_) in zip(marks, marks[1:]):
        phase = PHASE_OF_INTERVAL.get((previous_name, name))
        phases[phase if phase in phases else "other"] += time_ - previous_time
    phases["steps_count"] = sum(1 for name, _ in clock.marks if name == "step_end")
    return phases


def stage_phases(clock: PhaseClock) -> list[dict]:
    """Per stage of a curriculum run: transition, loop entry, step times (seconds), stage save."""
    stages = []
    for name, time_ in clock.marks:
        if name == "on_stage_begin_start":
            stages.append({"begin": time_, "step_ends": []})
        elif not stages:
            continue
        current = stages[-1]
        if name == "on_stage_begin_done":
            current["transition"] = time_ - current["begin"]
            current["begin_done"] = time_
        elif name == "train_begin":
            current["loop_entry"] = time_ - current["begin_done"]
            current["train_begin"] = time_
        elif name == "step_end":
            current["step_ends"].append(time_)
        elif name == "on_stage_end_start":
            current["save_begin"] = time_
        elif name == "on_stage_end_done":
            current["stage_save"] = time_ - current["save_begin"]
    for current in stages:
        ends = [current["train_begin"], *current["step_ends"]]
        current["step_seconds"] = [later - earlier for earlier, later in zip(ends, ends[1:])]
    return stages


def prompt_completion_rows(math_train_path: str | None, limit: int, keep_level: bool = True):
    """
    Up to `limit` shuffled rows of MATH train (synthetic MATH-like rows without a path) as prompt/completion rows,
    with the `level` column unless `keep_level=False`, and the text corpus a local tokenizer is trained on.
    """
    from datasets import Dataset

    from trl_plrs.math import load_math, make_synthetic_math, math_corpus, to_prompt_completion

    math = load_math(math_train_path) if math_train_path else make_synthetic_math(num_per_level=limit // 5)
    math = math.shuffle(seed=0).select(range(min(limit, len(math))))
    dropped = ["problem", "solution", "answer", "type", "unique_id"] + ([] if keep_level else ["level"])
    rows = math.map(to_prompt_completion, remove_columns=dropped)
    return Dataset.from_list(rows.to_list()), math_corpus(math)
