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
The curriculum on a GPU, in the precisions users train in: a model with the shapes of Llama-3.2-1B (built from its
config alone, random weights: no hub needed) trains the 5-stage B5 curriculum (replay, ranks 256 -> 16, alpha = 2r)
for a few steps per stage, next to `SFTTrainer` (rank 32, the paper's direct baseline) for the same number of steps:

- `b5_bf16`: bf16 base under bf16 autocast, `adapter_transition="auto"`, which resolves to `"fp32_merge"` (the
  targeted weights are upcast to fp32 at the first transition, then every finished adapter is merged exactly);
- `b5_bf16_stack`: the same with `"stack"` (finished adapters stay frozen beside the new one: no extra memory, but
  every later step computes them);
- `b5_bf16_merge`: the same with `"merge"` (what the first release did: merged into bf16 weights, learning rounded
  away);
- `4-bit`: NF4 double-quantised base with bf16 compute (QLoRA, as in the paper), stack.

Per stage it reports the step time, tokens/s, the peak GPU memory, the transition time (retire the finished adapter,
add the new one, remix the rows) and the stage-adapter save; per run, the export check: how far the live model is
from the original base + the exported combined adapter (`export_mismatch`, per layer, relative to the exported
delta, 4-bit weights dequantized), and the logits of the combined adapter on a freshly loaded base vs the live model.
Writes `benchmarks/results/gpu.{md,json}` with the GPU's name.

```bash
python benchmarks/bench_gpu.py                 # on a GPU: ~3 min on one H100
python benchmarks/bench_gpu.py --smoke         # tiny shapes on CPU, seconds (the test suite runs it)
```
"""

import argparse
import gc
import os
import statistics
import tempfile
import time

import torch
from common import (
    LORA_TARGETS,
    RESULTS_DIR,
    PhaseClock,
    TimedCurriculumTrainer,
    bench_config_kwargs,
    markdown_table,
    quiet_libraries,
    stage_phases,
    write_results,
)
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

from trl_plrs import CurriculumCallback, PLRSConfig
from trl_plrs.adapters import base_weights, export_mismatch
from trl_plrs.testing import build_tokenizer


# meta-llama/Llama-3.2-1B's config.json (the weights are never needed: the benchmark measures time and memory).
LLAMA_3_2_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling={
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
)
SMOKE_SHAPES = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=True,
)  # fmt: skip
B5_RANKS = [256, 128, 64, 32, 16]
SFT_RANK = 32
LEVELS = (1, 2, 3, 4, 5)
RUNS = {
    # name: (kind, base, adapter_transition)
    "sft_bf16": ("sft", "bf16", None),
    "b5_bf16": ("curriculum", "bf16", "auto"),
    "b5_bf16_stack": ("curriculum", "bf16", "stack"),
    "b5_bf16_merge": ("curriculum", "bf16", "merge"),
    "sft_4bit": ("sft", "4bit", None),
    "b5_4bit": ("curriculum", "4bit", "auto"),
}


def save_random_base(shapes: dict, output_dir: str, device: str) -> str:
    """A Llama with `shapes`, random weights in bf16, saved like a hub checkpoint (built on `device`: seconds)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shapes, pad_token_id=0)).to(torch.bfloat16)
    model.save_pretrained(output_dir)
    del model
    return output_dir


def load_base(base_dir: str, base: str, device: str):
    if base == "4bit":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        return AutoModelForCausalLM.from_pretrained(
            base_dir, quantization_config=quantization, dtype=torch.bfloat16, device_map={"": device}
        )
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16, device_map={"": device})


def token_rows(rows_per_level: int, seq_len: int, vocab: int, seed: int = 0) -> Dataset:
    """Pre-tokenized rows of one length (a quarter prompt, the rest completion), the same cost at every level."""
    generator = torch.Generator().manual_seed(seed)
    prompt_len = seq_len // 4
    rows = []
    for level in LEVELS:
        for _ in range(rows_per_level):
            ids = torch.randint(4, vocab, (seq_len,), generator=generator).tolist()
            rows.append(
                {"input_ids": ids, "completion_mask": [0] * prompt_len + [1] * (seq_len - prompt_len), "level": level}
            )
    return Dataset.from_list(rows)


class GpuMemory(CurriculumCallback):
    """Peak GPU memory of each stage (of the whole run for `SFTTrainer`)."""

    def __init__(self):
        self.peaks = []

    def on_train_begin(self, args, state, control, **kwargs):
        self._reset()

    def on_stage_begin(self, args, state, control, stage, **kwargs):
        self._reset()

    def on_stage_end(self, args, state, control, stage, **kwargs):
        self.peaks.append(self._peak())

    def on_train_end(self, args, state, control, **kwargs):
        if not self.peaks:  # SFTTrainer: one "stage"
            self.peaks.append(self._peak())

    @staticmethod
    def _reset():
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    @staticmethod
    def _peak() -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def config_kwargs(output_dir: str, steps: int, batch_size: int, seq_len: int, on_gpu: bool) -> dict:
    # The shared benchmark settings, on the GPU in bf16 (autocast), at the paper's learning rate.
    return {
        **bench_config_kwargs(output_dir, steps, batch_size, max_length=seq_len),
        "use_cpu": not on_gpu,
        "bf16": on_gpu,
        "learning_rate": 5e-5,
    }


def run_one(name, base_dir, rows, tokenizer, args, work_dir, device) -> dict:
    kind, base, transition = RUNS[name]
    on_gpu = device == "cuda"
    clock, memory = PhaseClock(), GpuMemory()
    model = load_base(base_dir, base, device)
    lora = dict(target_modules=LORA_TARGETS, lora_dropout=0.0)
    output_dir = os.path.join(work_dir, name)
    stages = len(B5_RANKS)
    if kind == "sft":
        trainer = SFTTrainer(
            model,
            args=SFTConfig(
                **config_kwargs(output_dir, stages * args.steps_per_stage, args.batch_size, args.seq_len, on_gpu)
            ),
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=SFT_RANK, lora_alpha=2 * SFT_RANK, **lora),
            callbacks=[clock, memory],
        )
    else:
        live = LiveModelCheck()
        trainer = TimedCurriculumTrainer(
            model,
            args=PLRSConfig(
                **config_kwargs(output_dir, args.steps_per_stage, args.batch_size, args.seq_len, on_gpu),
                plrs_preset="replay_shrink",
                adapter_transition=transition,
            ),
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=LoraConfig(**lora),
            callbacks=[memory, live],
        )
        live.trainer, live.original = trainer, base_weights(trainer.model)
        trainer.add_callback(clock)
        trainer.clock = clock
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start

    tokens_per_step = args.batch_size * args.seq_len
    record = {"name": name, "kind": kind, "base": base, "wall_s": wall, "stages": []}
    if kind == "sft":
        step_seconds = _step_seconds(clock)
        record["stages"].append(
            {"steps": len(step_seconds), "lora_rank": SFT_RANK, **_step_stats(step_seconds, tokens_per_step)}
        )
        record["stages"][0]["peak_gib"] = memory.peaks[0]
    else:
        record["adapter_transition"] = trainer.adapter_transition
        for stage, phases, peak, summary in zip(
            trainer.stages, stage_phases(clock), memory.peaks, trainer.stage_summaries, strict=True
        ):
            record["stages"].append(
                {
                    "levels": list(stage.levels),
                    "lora_rank": stage.lora_rank,
                    "rows": summary.rows,
                    "steps": len(phases["step_seconds"]),
                    **_step_stats(phases["step_seconds"], tokens_per_step),
                    "peak_gib": peak,
                    "transition_s": phases.get("transition", 0.0),
                    "stage_save_s": phases.get("stage_save", 0.0),
                    "merge_rounding_loss": summary.merge_rounding_loss,
                }
            )
        record["export"] = export_check(trainer, live, base_dir, base, device)
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def _step_seconds(clock: PhaseClock) -> list[float]:
    marks = [time_ for name, time_ in clock.marks if name in ("train_begin", "step_end")]
    return [later - earlier for earlier, later in zip(marks, marks[1:])]


def _step_stats(step_seconds: list[float], tokens_per_step: int) -> dict:
    # The first step of a stage pays for the new optimizer's state and kernels' warm-up: reported apart.
    steady = step_seconds[1:] or step_seconds
    median = statistics.median(steady)
    return {"first_step_s": step_seconds[0], "step_s": median, "tokens_per_s": tokens_per_step / median}


PROBE = torch.randint(4, 512, (2, 64), generator=torch.Generator().manual_seed(1))


class LiveModelCheck(CurriculumCallback):
    """
    At the last stage's end, while the stages' adapters are live (after `train()` the trainer replaces them by the
    exported adapter): `export_mismatch` against the stage adapters, and the logits on a probe batch.
    """

    def __init__(self):
        self.trainer, self.original, self.check = None, None, {}

    def on_stage_end(self, args, state, control, stage, model, **kwargs):
        trainer = self.trainer
        if stage.index != len(trainer.stages) - 1:
            return
        stage_dirs = [os.path.join(args.output_dir, f"stage-{each.number}") for each in trainer.stages]
        self.check["max_layer_mismatch"] = max(export_mismatch(model, self.original, stage_dirs).values())
        model.eval()
        with torch.no_grad():
            self.check["live_logits"] = model(input_ids=PROBE.to(model.device)).logits.float().cpu()
        model.train()


def export_check(trainer, live: LiveModelCheck, base_dir, base, device) -> dict:
    """The live model at the last stage's end vs the original base + the exported combined adapter."""
    check = {"max_layer_mismatch": live.check["max_layer_mismatch"]}
    live_logits = live.check["live_logits"]
    trainer.model = None
    gc.collect()
    fresh = PeftModel.from_pretrained(load_base(base_dir, base, device), trainer.args.output_dir).eval()
    with torch.no_grad():
        reloaded = fresh(input_ids=PROBE.to(device)).logits.float().cpu()
        with fresh.disable_adapter():
            untrained = fresh(input_ids=PROBE.to(device)).logits.float().cpu()
    check["logits_max_abs_difference"] = float((reloaded - live_logits).abs().max())
    check["logits_moved_by_training"] = float((live_logits - untrained).abs().max())
    del fresh
    return check


def to_markdown(results: dict) -> str:
    gpu = results["device_name"]
    lines = [
        "# The curriculum on a GPU: bf16 and 4-bit bases",
        "",
        f"Device: **{gpu}**. Model: {results['model']}, random weights; rows of {results['seq_len']} tokens, batch "
        f"{results['batch_size']}, {results['steps_per_stage']} steps per stage (5 stages), learning rate 5e-5; "
        f"`SFTTrainer` runs the same {5 * results['steps_per_stage']} steps at rank {SFT_RANK}. Step times are "
        "medians without each stage's first step (reported apart); TRL's default gradient checkpointing is on.",
        "",
    ]
    failed = [record for record in results["records"] if "error" in record]
    records = {record["name"]: record for record in results["records"] if "error" not in record}
    summary_rows = []
    for name, record in records.items():
        steps = record["stages"]
        total_step = sum(stage["step_s"] * stage["steps"] for stage in steps)
        sft = records.get("sft_" + record["base"])
        ratio = ""
        if record["kind"] == "curriculum" and sft is not None:
            sft_total = sum(stage["step_s"] * stage["steps"] for stage in sft["stages"])
            ratio = f"{total_step / sft_total:.2f}"
        export = record.get("export", {})
        summary_rows.append(
            [
                name,
                record.get("adapter_transition", "-"),
                f"{record['wall_s']:.1f}",
                f"{total_step:.2f}",
                ratio or "-",
                f"{max(stage['peak_gib'] for stage in steps):.2f}",
                f"{export['max_layer_mismatch']:.4f}" if "max_layer_mismatch" in export else "-",
                (
                    f"{export['logits_max_abs_difference']:.4f} / {export['logits_moved_by_training']:.4f}"
                    if export
                    else "-"
                ),
            ]
        )
    lines += [
        markdown_table(
            [
                "run",
                "transition",
                "wall (s)",
                "steps (s)",
                "step time / SFT",
                "peak GPU memory (GiB)",
                "export: max layer mismatch",
                "export: logits |reloaded - live| / moved",
            ],
            summary_rows,
        ),
        "",
        "Export mismatch: per LoRA-targeted layer, ||W_live - (W_0 + delta_exported)|| / ||delta_exported|| (0 = the "
        "exported adapter is exactly what the model learned; 4-bit weights dequantized). The logits column compares "
        "the combined adapter on a freshly loaded base with the live model, next to how far training moved the "
        "logits; bf16 logits carry rounding of ~0.4% of their value, so small moves compare loosely there.",
        "",
    ]
    lines += [
        "Per stage below, the last stage's adapter save also counts this benchmark's export check (it runs in that "
        "stage's `on_stage_end`, while the stage adapters are live).",
        "",
    ]
    lines += [f"**{record['name']} failed**: `{record['error']}`\n" for record in failed]
    for name, record in records.items():
        if record["kind"] != "curriculum":
            continue
        lines += [f"## {name} (per stage)", ""]
        rows = [
            [
                index,
                ",".join(map(str, stage["levels"])),
                stage["lora_rank"],
                stage["rows"],
                f"{1000 * stage['step_s']:.1f}",
                f"{1000 * stage['first_step_s']:.1f}",
                f"{stage['tokens_per_s']:,.0f}",
                f"{stage['peak_gib']:.2f}",
                f"{1000 * stage['transition_s']:.0f}",
                f"{1000 * stage['stage_save_s']:.0f}",
                "-" if stage["merge_rounding_loss"] is None else f"{stage['merge_rounding_loss']:.0%}",
            ]
            for index, stage in enumerate(record["stages"])
        ]
        lines += [
            markdown_table(
                [
                    "stage",
                    "levels",
                    "rank",
                    "rows",
                    "step (ms)",
                    "first step (ms)",
                    "tokens/s",
                    "peak GiB",
                    "transition (ms)",
                    "adapter save (ms)",
                    "merge rounded away",
                ],
                rows,
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes, CPU allowed: checks the script runs.")
    parser.add_argument("--steps_per_stage", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=None)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--output_dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    quiet_libraries()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.smoke and device != "cuda":
        parser.error("no GPU: run with --smoke for the CPU check of the script")
    shapes = SMOKE_SHAPES if args.smoke else LLAMA_3_2_1B
    args.steps_per_stage = args.steps_per_stage or (2 if args.smoke else 6)
    args.seq_len = args.seq_len or (32 if args.smoke else 512)
    tokenizer = build_tokenizer()
    rows = token_rows(rows_per_level=args.steps_per_stage * args.batch_size, seq_len=args.seq_len, vocab=512)
    records = []
    with tempfile.TemporaryDirectory() as work_dir:
        base_dir = save_random_base(shapes, os.path.join(work_dir, "base"), device)
        for name in args.runs:
            print(f"[bench_gpu] {name} ...", flush=True)
            try:
                records.append(run_one(name, base_dir, rows, tokenizer, args, work_dir, device))
            except Exception as error:  # one failed setting (e.g. no bitsandbytes build for this GPU) is reported
                if args.smoke:
                    raise
                records.append({"name": name, "error": f"{type(error).__name__}: {error}"})
                gc.collect()
                torch.cuda.empty_cache()
            print(f"[bench_gpu] {name}: {records[-1]}"[:2000], flush=True)
    results = {
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run, tiny shapes)",
        "model": "Llama-3.2-1B shapes" if not args.smoke else "tiny Llama (smoke)",
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "steps_per_stage": args.steps_per_stage,
        "records": records,
    }
    markdown_path, _ = write_results("gpu", to_markdown(results), results, args.output_dir)
    print(open(markdown_path).read())
    return results


if __name__ == "__main__":
    main()
