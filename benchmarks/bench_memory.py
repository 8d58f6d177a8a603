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
Memory of the curriculum: peak RSS of the 5-stage run against a plain `SFTTrainer` run of the same total steps
(goal <= 1.05x: no optimizer state or adapter of a finished stage is kept alive), and, stage by stage as the rank
shrinks, the trainable parameters, the adapter's size on disk, the optimizer state, the resident memory and the
step time.

Every run is a separate child process (`resource.getrusage` of the child), so that runs do not inherit each other's
peak. The children also count the optimizers alive at each stage's start (after the Trainer's own cleanup).

```bash
OMP_NUM_THREADS=1 python benchmarks/bench_memory.py            # writes benchmarks/results/memory.{md,json}
OMP_NUM_THREADS=1 python benchmarks/bench_memory.py --quick
```
"""

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import (
    LORA_TARGETS,
    RESULTS_DIR,
    PhaseClock,
    TimedCurriculumTrainer,
    bench_config_kwargs,
    markdown_table,
    quiet_libraries,
    stage_phases,
    uniform_leveled_rows,
    write_results,
)


PLRS_RANKS = [256, 128, 64, 32, 16]
FIXED_RANK = 32
# (label, kind, ranks, adapter transition): each curriculum run is compared with the SFT run of its first rank.
RUNS = [
    ("SFTTrainer r=256", "sft", [256], None),
    ("PLRS 256->16, merge", "curriculum", PLRS_RANKS, "merge"),
    ("SFTTrainer r=32", "sft", [FIXED_RANK], None),
    ("curriculum r=32 every stage, merge", "curriculum", [FIXED_RANK], "merge"),
]
# The last event before the sampled peak, in words.
PEAK_PHASES = {
    "save_start": "final adapter write (concatenation)",
    "train_end": "`save_model`",
    "step_end": "training steps",
    "train_begin": "training steps",
    "on_stage_begin_start": "stage transition",
    "on_stage_begin_done": "training-loop re-entry",
    "on_stage_end_start": "stage adapter save",
}
FULL_ONLY_RUNS = [("PLRS 256->16, stack", "curriculum", PLRS_RANKS, "stack")]


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples the resident memory every few milliseconds in a thread; remembers the peak and the phase it fell in."""

    def __init__(self, clock, interval: float = 0.002):
        self.clock, self.interval = clock, interval
        self.peak_mb, self.peak_phase = 0.0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        with open("/proc/self/statm") as statm:
            while not self._stop.is_set():
                statm.seek(0)
                rss = int(statm.read().split()[1]) * page_mb
                if rss > self.peak_mb:
                    marks = self.clock.marks
                    self.peak_mb, self.peak_phase = rss, (marks[-1][0] if marks else "start")
                time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def child(config: dict) -> dict:
    """One run, in this (fresh) process."""
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from trl_plrs import PLRSConfig
    from trl_plrs.testing import build_tiny_model, build_tokenizer

    class MemoryProbe(TrainerCallback):
        def __init__(self):
            self.live_optimizers, self.stage_rss = [], []

        def on_train_begin(self, args, state, control, **kwargs):
            # accelerate's `AcceleratedOptimizer` wraps (and subclasses) the torch optimizer: count the torch ones.
            self.live_optimizers.append(
                sum(
                    isinstance(obj, torch.optim.Optimizer) and type(obj).__module__.startswith("torch.optim")
                    for obj in gc.get_objects()
                )
            )
            self.stage_rss.append(current_rss_mb())

        def on_step_end(self, args, state, control, **kwargs):
            self.stage_rss[-1] = max(self.stage_rss[-1], current_rss_mb())

    quiet_libraries()
    tokenizer = build_tokenizer()
    rows = uniform_leveled_rows(rows_per_level=8 * config["batch_size"], equations=config["equations"])
    model = build_tiny_model(tokenizer, hidden_size=config["hidden_size"], num_hidden_layers=config["num_layers"])
    rank = config["ranks"][0]
    peft_config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    probe, clock = MemoryProbe(), PhaseClock()
    with tempfile.TemporaryDirectory() as work_dir:
        if config["kind"] == "sft":
            trainer = SFTTrainer(
                model,
                args=SFTConfig(**bench_config_kwargs(work_dir, 5 * config["steps_per_stage"], config["batch_size"])),
                train_dataset=rows,
                processing_class=tokenizer,
                peft_config=peft_config,
                callbacks=[probe, clock],
            )
        else:
            trainer = TimedCurriculumTrainer(
                model,
                args=PLRSConfig(
                    **bench_config_kwargs(work_dir, config["steps_per_stage"], config["batch_size"]),
                    plrs_preset="replay_shrink",
                    lora_ranks=config["ranks"],
                    adapter_transition=config["transition"],
                ),
                train_dataset=rows,
                processing_class=tokenizer,
                peft_config=peft_config,
                callbacks=[probe, clock],
            )
            trainer.clock = clock
        trainer.pop_callback(PrinterCallback)
        rss_before_train = current_rss_mb()
        with RssSampler(clock) as sampler:
            trainer.train()
            if config["kind"] == "sft":
                trainer.save_model()
                clock.mark("saved")
        result = {
            **config,
            "rss_before_train_mb": rss_before_train,
            "peak_rss_mb": peak_rss_mb(),
            "live_optimizers_at_stage_start": probe.live_optimizers,
            # Where the sampled peak fell: the last event before it (e.g. `step_end`, `on_stage_begin_start`).
            "sampled_peak_rss_mb": sampler.peak_mb,
            "sampled_peak_after": sampler.peak_phase,
            "steps_peak_rss_mb": max(probe.stage_rss),
        }
        if config["kind"] == "sft":
            step_ends = [time_ for name, time_ in clock.marks if name == "step_end"]
            result["step_ms"] = 1e3 * statistics.median(b - a for a, b in zip(step_ends, step_ends[1:]))
            result["trainable_params"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        else:
            stages = []
            for phases, summary, rss in zip(stage_phases(clock), trainer.stage_summaries, probe.stage_rss):
                adapter_file = os.path.join(work_dir, f"stage-{summary.stage}", "adapter_model.safetensors")
                steps = phases["step_seconds"][1:] or phases["step_seconds"]
                stages.append(
                    {
                        "stage": summary.stage,
                        "levels": summary.levels,
                        "rows": summary.rows,
                        "lora_rank": summary.lora_rank,
                        "trainable_params": summary.trainable_params,
                        "adapter_mb": os.path.getsize(adapter_file) / 2**20,
                        # fp32 weights, gradients and AdamW's two moments of the trainable parameters
                        "training_state_mb": 4 * 4 * summary.trainable_params / 2**20,
                        "stage_peak_rss_mb": rss,
                        "step_ms": 1e3 * statistics.median(steps),
                    }
                )
            result["stages"] = stages
            result["final_adapter_mb"] = os.path.getsize(os.path.join(work_dir, "adapter_model.safetensors")) / 2**20
    return result


def run_child(config: dict) -> dict:
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bench_memory(runs, hidden_size, num_layers, steps_per_stage, batch_size, equations) -> dict:
    results = []
    for label, kind, ranks, transition in runs:
        config = {
            "label": label,
            "kind": kind,
            "ranks": ranks,
            "transition": transition,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "steps_per_stage": steps_per_stage,
            "batch_size": batch_size,
            "equations": equations,
        }
        result = run_child(config)
        results.append(result)
        print(f"{label}: peak RSS {result['peak_rss_mb']:.0f} MB", file=sys.stderr)
    comparisons = []
    for result in results:
        if result["kind"] != "curriculum":
            continue
        baseline = next(r for r in results if r["kind"] == "sft" and r["ranks"][0] == result["ranks"][0])
        comparisons.append(
            {
                "curriculum": result["label"],
                "baseline": baseline["label"],
                "peak_rss_ratio": result["peak_rss_mb"] / baseline["peak_rss_mb"],
                "steps_peak_rss_ratio": result["steps_peak_rss_mb"] / baseline["steps_peak_rss_mb"],
            }
        )
    return {
        "settings": {
            "hidden_size": hidden_size,
            "num_hidden_layers": num_layers,
            "steps_per_stage": steps_per_stage,
            "batch_size": batch_size,
            "equations_per_row": equations,
        },
        "runs": results,
        "comparisons": comparisons,
    }


def to_markdown(results: dict) -> str:
    settings = results["settings"]
    runs = {run["label"]: run for run in results["runs"]}
    rss_rows, listed = [], set()
    for comparison in results["comparisons"]:
        for label in (comparison["baseline"], comparison["curriculum"]):
            if label in listed:
                continue
            listed.add(label)
            run = runs[label]
            rss_rows.append(
                [
                    label,
                    f"{run['rss_before_train_mb']:.0f}",
                    f"{run['peak_rss_mb']:.0f}",
                    PEAK_PHASES.get(run["sampled_peak_after"], run["sampled_peak_after"]),
                    f"{run['steps_peak_rss_mb']:.0f}",
                    run["live_optimizers_at_stage_start"],
                    f"**{comparison['peak_rss_ratio']:.3f}** / {comparison['steps_peak_rss_ratio']:.3f}"
                    if label == comparison["curriculum"]
                    else "1",
                ]
            )
    worst = max(comparison["peak_rss_ratio"] for comparison in results["comparisons"])
    plrs = runs["PLRS 256->16, merge"]
    stage_rows = [
        [
            stage["stage"],
            ",".join(map(str, stage["levels"])),
            stage["rows"],
            stage["lora_rank"],
            f"{stage['trainable_params']:,}",
            f"{stage['adapter_mb']:.1f}",
            f"{stage['training_state_mb']:.1f}",
            f"{stage['stage_peak_rss_mb']:.0f}",
            f"{stage['step_ms']:.0f}",
        ]
        for stage in plrs["stages"]
    ]
    lines = [
        "# Memory: peak RSS and the per-stage footprint as the rank shrinks",
        "",
        f"Llama-style model, hidden {settings['hidden_size']} x {settings['num_hidden_layers']} layers, LoRA on the 7 "
        f"projections, alpha = 2r, batch {settings['batch_size']}, {settings['steps_per_stage']} steps per stage "
        "(5 stages; the SFT runs train 5x as many steps), each run in its own child process.",
        "",
        f"**Peak RSS, curriculum / SFTTrainer at the curriculum's first rank: at most {worst:.3f}** (goal <= 1.05).",
        "",
        markdown_table(
            [
                "run",
                "RSS before train() (MB)",
                "peak RSS (MB)",
                "peak reached during",
                "peak RSS at step ends (MB)",
                "optimizers alive at each stage start",
                "ratio: peak / at step ends",
            ],
            rss_rows,
        ),
        "",
        "One optimizer is alive at each stage start: the finished stage's optimizer (and its AdamW state) has been "
        "freed by then, as has the merged adapter (`tests/test_plrs_trainer.py` checks both with weak references). "
        "The peak is `ru_maxrss` of the child; a thread sampling the RSS every 2 ms tells during which phase it was "
        "reached. While training, the curriculum's RSS is that of the SFT run (merge mode; stack mode keeps the "
        "finished adapters' weights, frozen and without optimizer state, by design); its peak, if above, comes at the "
        "end, when the final adapter (rank = the sum of the stage ranks) is built and serialized: about twice its "
        "size, once.",
        "",
        "## Per stage, PLRS 256 -> 16 (merge)",
        "",
        markdown_table(
            [
                "stage",
                "levels",
                "rows",
                "rank",
                "trainable params",
                "adapter on disk (MB)",
                "weights+grads+AdamW (MB)",
                "peak RSS in stage (MB)",
                "step (ms)",
            ],
            stage_rows,
        ),
        "",
        f"The final adapter (the concatenation of the 5 stage adapters, rank {sum(PLRS_RANKS)}) is "
        f"{plrs['final_adapter_mb']:.1f} MB. The peak RSS of a stage is the process's resident memory sampled after "
        "every step of that stage: it falls after the first stage, as the rank-256 adapter's training state is freed.",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="A smaller model, fewer steps, no stack run.")
    parser.add_argument("--hidden_size", type=int, default=None)
    parser.add_argument("--num_hidden_layers", type=int, default=4)
    parser.add_argument("--steps_per_stage", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--output_dir", default=RESULTS_DIR)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return None
    hidden_size = args.hidden_size or (512 if args.quick else 1024)
    steps_per_stage = args.steps_per_stage or (3 if args.quick else 4)
    runs = RUNS if args.quick else RUNS + FULL_ONLY_RUNS
    equations = 2
    results = bench_memory(runs, hidden_size, args.num_hidden_layers, steps_per_stage, args.batch_size, equations)
    markdown = to_markdown(results)
    write_results("memory", markdown, results, args.output_dir)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
