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
Cost of one stage transition of the PLRS curriculum (ranks 256, 128, 64, 32, 16), and how it grows with the model:
the retirement of the finished adapter (merge into the base weights, or freeze in stack mode), the new adapter, the
stage's dataset (replay remix), then the training loop's re-entry (new optimizer, scheduler, dataloader, accelerate
prepare). Reported in milliseconds per transition, and as a share of a stage's training time. Goal: <= 2%.

The share assumes a stage of `--assumed_stage_steps` optimizer steps (default 141: one epoch of MATH Level 1, the
smallest stage of the paper, at batch 4; the paper trains 5 epochs per stage) at the step time measured here on rows
of ~90 tokens (~50 with `--quick`); MATH rows are longer, so real steps are slower and the share smaller. Saving the
stage's adapter is listed apart: it happens once per stage too, but it is I/O that any run saving per-stage adapters pays.

```bash
OMP_NUM_THREADS=1 python benchmarks/bench_transition.py            # writes benchmarks/results/transition.{md,json}
OMP_NUM_THREADS=1 python benchmarks/bench_transition.py --quick
```
"""

import argparse
import statistics
import sys
import tempfile

from common import (
    LORA_TARGETS,
    RESULTS_DIR,
    PhaseClock,
    TimedCurriculumTrainer,
    bench_config_kwargs,
    fmt,
    markdown_table,
    quiet_libraries,
    stage_phases,
    summarize,
    uniform_leveled_rows,
    write_results,
)
from peft import LoraConfig
from transformers.trainer_callback import PrinterCallback

from trl_plrs import PLRSConfig
from trl_plrs.testing import build_tiny_model, build_tokenizer


PLRS_RANKS = [256, 128, 64, 32, 16]
QUICK_MODELS = [(256, 4, "merge"), (512, 4, "merge"), (1024, 4, "merge"), (512, 4, "stack")]
FULL_MODELS = [
    (256, 4, "merge"),
    (512, 4, "merge"),
    (1024, 4, "merge"),
    (1024, 8, "merge"),
    (512, 4, "stack"),
    (1024, 8, "stack"),
]


def run_curriculum(tokenizer, rows, hidden_size, num_layers, transition, steps_per_stage, batch_size, work_dir):
    """One timed 5-stage PLRS run; returns the per-stage phases and the model's size."""
    model = build_tiny_model(tokenizer, hidden_size=hidden_size, num_hidden_layers=num_layers)
    num_params = sum(param.numel() for param in model.parameters())
    clock = PhaseClock()
    trainer = TimedCurriculumTrainer(
        model,
        args=PLRSConfig(
            **bench_config_kwargs(work_dir, steps_per_stage, batch_size),
            plrs_preset="replay_shrink",
            lora_ranks=PLRS_RANKS,
            adapter_transition=transition,
        ),
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS),
    )
    trainer.clock = clock
    trainer.add_callback(clock)
    trainer.pop_callback(PrinterCallback)
    trainer.train()
    stages = stage_phases(clock)
    for stage, summary in zip(stages, trainer.stage_summaries):
        stage.update(lora_rank=summary.lora_rank, trainable_params=summary.trainable_params)
        # The first step of a stage also creates the dataloader's iterator: the steady step time is the median.
        stage["step"] = statistics.median(stage["step_seconds"][1:] or stage["step_seconds"])
    return stages, num_params, len(trainer.curriculum_dataset[0]["input_ids"])


def bench_transition(models, repeats, steps_per_stage, batch_size, assumed_stage_steps, equations) -> dict:
    quiet_libraries()
    tokenizer = build_tokenizer()
    rows = uniform_leveled_rows(rows_per_level=8 * batch_size, equations=equations)
    results = []
    for hidden_size, num_layers, transition in models:
        transitions, loop_entries, saves, boundaries, first_steps, last_steps, shares = [], [], [], [], [], [], []
        for repeat in range(repeats):
            with tempfile.TemporaryDirectory() as work_dir:
                stages, num_params, row_tokens = run_curriculum(
                    tokenizer, rows, hidden_size, num_layers, transition, steps_per_stage, batch_size, work_dir
                )
            for stage in stages[1:]:
                boundary = stage["transition"] + stage["loop_entry"]
                transitions.append(stage["transition"])
                loop_entries.append(stage["loop_entry"])
                saves.append(stage["stage_save"])
                boundaries.append(boundary)
                # Share of the stage the transition opens, at that stage's own step time.
                shares.append(boundary / (assumed_stage_steps * stage["step"]))
            first_steps.append(stages[0]["step"])
            last_steps.append(stages[-1]["step"])
        record = {
            "hidden_size": hidden_size,
            "num_hidden_layers": num_layers,
            "adapter_transition": transition,
            "base_params": num_params,
            "trainable_params_per_stage": [stage["trainable_params"] for stage in stages],
            "transition_ms": summarize([1e3 * value for value in transitions]),
            "loop_entry_ms": summarize([1e3 * value for value in loop_entries]),
            "boundary_ms": summarize([1e3 * value for value in boundaries]),
            "stage_save_ms": summarize([1e3 * value for value in saves]),
            "step_ms_rank_256": summarize([1e3 * value for value in first_steps]),
            "step_ms_rank_16": summarize([1e3 * value for value in last_steps]),
            "share_of_stage": summarize(shares),
            "per_transition": [
                {"to_rank": stage["lora_rank"], "transition_ms": 1e3 * stage["transition"]} for stage in stages[1:]
            ],
        }
        results.append(record)
        print(
            f"hidden {hidden_size} x {num_layers} ({transition}): boundary {record['boundary_ms']['median']:.0f} ms, "
            f"step {record['step_ms_rank_256']['median']:.0f} -> {record['step_ms_rank_16']['median']:.0f} ms, "
            f"share {100 * record['share_of_stage']['median']:.2f}%",
            file=sys.stderr,
        )
    return {
        "settings": {
            "ranks": PLRS_RANKS,
            "steps_per_stage_measured": steps_per_stage,
            "assumed_stage_steps": assumed_stage_steps,
            "batch_size": batch_size,
            "repeats": repeats,
            "row_tokens": row_tokens,
            "replay": "full",
        },
        "models": results,
    }


def to_markdown(results: dict) -> str:
    settings = results["settings"]
    rows = []
    for record in results["models"]:
        rows.append(
            [
                f"{record['hidden_size']} x {record['num_hidden_layers']} ({record['base_params'] / 1e6:.0f}M)",
                record["adapter_transition"],
                fmt(record["transition_ms"], digits=0),
                fmt(record["loop_entry_ms"], digits=0),
                f"**{record['boundary_ms']['median']:.0f}**",
                f"{record['step_ms_rank_256']['median']:.0f} / {record['step_ms_rank_16']['median']:.0f}",
                f"**{100 * record['share_of_stage']['median']:.2f}%** ({100 * record['share_of_stage']['min']:.2f}-"
                f"{100 * record['share_of_stage']['max']:.2f}%)",
                fmt(record["stage_save_ms"], digits=0),
            ]
        )
    worst = max(record["share_of_stage"]["median"] for record in results["models"])
    lines = [
        "# Stage transition cost",
        "",
        f"PLRS curriculum, ranks {settings['ranks']} (alpha = 2r), full replay, LoRA on the 7 projections of a "
        f"Llama-style model, batch {settings['batch_size']}, rows of {settings['row_tokens']} tokens, "
        f"{settings['steps_per_stage_measured']} measured steps per stage, {settings['repeats']} run(s) per model; "
        "each run has 4 transitions (256->128->64->32->16), all pooled in the medians.",
        "",
        "- *transition*: retiring the finished adapter (merge / freeze), adding the new one, selecting the stage's "
        "rows (PLRSCallback.on_stage_begin);",
        "- *loop re-entry*: from there to the first step's start (gc, dataloader, new optimizer and scheduler, "
        "accelerate prepare);",
        f"- *share*: (transition + re-entry) / ({settings['assumed_stage_steps']} steps x the new stage's step time), "
        f"a stage of {settings['assumed_stage_steps']} steps being one epoch of MATH Level 1 (564 rows) at batch 4, "
        "the paper's smallest stage (it trains 5 epochs per stage). Scale to your setting with the milliseconds.",
        "",
        f"**Largest share: {100 * worst:.2f}% of a stage** (goal <= 2%).",
        "",
        markdown_table(
            [
                "model (hidden x layers, params)",
                "mode",
                "transition (ms)",
                "loop re-entry (ms)",
                "per boundary (ms)",
                "step ms at r=256 / r=16",
                f"share of a {settings['assumed_stage_steps']}-step stage",
                "stage adapter save (ms)",
            ],
            rows,
        ),
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Four model settings, one run each.")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps_per_stage", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--assumed_stage_steps", type=int, default=141)
    parser.add_argument("--output_dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    steps_per_stage = args.steps_per_stage or (3 if args.quick else 4)
    equations = 2 if args.quick else 4
    models = QUICK_MODELS if args.quick else FULL_MODELS
    results = bench_transition(models, repeats, steps_per_stage, args.batch_size, args.assumed_stage_steps, equations)
    markdown = to_markdown(results)
    write_results("transition", markdown, results, args.output_dir)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
