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
What the frozen stack costs per training step, stage by stage, before and after the finished stages were fused into
one frozen adapter, against merge mode: PLRS ranks 256, 128, 64, 32, 16 (alpha = 2r) on the 7 projections of a
Llama-style model (hidden 1024 x 4 layers, and one layer of Llama-3.2-1B's shapes), one training step = forward, backward and AdamW step on a fixed batch.

Each layout holds, at stage k, what a curriculum holds then:
- *merge*: one trainable adapter of rank r_k (the finished ones are in the base weights);
- *stack, unfused* (before): one frozen adapter per finished stage (ranks r_1..r_{k-1}, no dropout) + the trainable
  one, as PEFT runs separate adapters (built with PEFT's own `add_adapter`/`set_adapter`);
- *stack, fused* (now): one frozen adapter of rank r_1 + ... + r_{k-1} + the trainable one, built by the trainer's own
  `fuse_into_frozen` and `add_stage_adapter`.
Each layout runs in its own process (so that its peak RSS is its own), all five stages in order; the three processes
run back to back, in alternating order, once per repeat, and ratios are taken within a repeat.

```bash
python benchmarks/bench_stack.py              # writes benchmarks/results/stack.{md,json}
python benchmarks/bench_stack.py --quick      # a small model, 1 repeat: a smoke run
```
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from common import RESULTS_DIR, fmt, markdown_table, quiet_libraries, summarize, write_results


PLRS_RANKS = [256, 128, 64, 32, 16]
LAYOUTS = ["merge", "unfused", "fused"]
LAYOUT_NAMES = {"merge": "merge", "unfused": "stack, unfused (before)", "fused": "stack, fused (now)"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# Model shapes: (hidden, MLP, attention heads, key/value heads, head width, layers).
SHAPES = {
    # `trl_plrs.testing.build_tiny_model(hidden_size=1024, num_hidden_layers=4)`, as the CPU measurement.
    "hidden1024": (1024, 2048, 64, 32, 16, 4),
    # One decoder layer of Llama-3.2-1B's shapes: the share of the finished ranks in the arithmetic is the real one.
    "llama-1b-layer": (2048, 8192, 32, 8, 64, 1),
    "quick": (256, 512, 16, 8, 16, 2),
}


def build_model(shape: str, tokenizer):
    from trl_plrs.testing import build_tiny_model

    hidden, intermediate, heads, kv_heads, head_dim, layers = SHAPES[shape]
    assert hidden == heads * head_dim
    return build_tiny_model(
        tokenizer,
        hidden_size=hidden,
        num_hidden_layers=layers,
        head_dim=head_dim,
        intermediate_size=intermediate,
        num_key_value_heads=kv_heads,
    )


def lora_config(rank: int, dropout: float = 0.05):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, lora_dropout=dropout)


def randomize_trainable(model, seed: int) -> None:
    """Stand-in for a stage's training: non-zero A and B, so that fusing and merging move real values."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def begin_stage(model, layout: str, stage_index: int):
    """Turn the model holding stage `stage_index - 1`'s trained adapter into the layout's model of stage
    `stage_index`."""
    import torch

    from trl_plrs.adapters import (
        DEFAULT_ADAPTER,
        FROZEN_ADAPTER,
        add_stage_adapter,
        fuse_into_frozen,
        merge_adapter_into_base,
    )

    config = lora_config(PLRS_RANKS[stage_index])
    if layout == "merge":
        merge_adapter_into_base(model)
        add_stage_adapter(model, config, frozen_adapters=[])
    elif layout == "fused":
        fuse_into_frozen(model)
        add_stage_adapter(model, config, frozen_adapters=[FROZEN_ADAPTER])
    else:
        # What the stack was before fusion: the finished adapter copied to a frozen one of its own, without dropout.
        frozen = [f"stage_{number}" for number in range(1, stage_index + 1)]
        model.add_adapter(frozen[-1], lora_config(PLRS_RANKS[stage_index - 1], dropout=0.0))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if f".{frozen[-1]}." in name:
                    source = dict(model.named_parameters())[name.replace(f".{frozen[-1]}.", f".{DEFAULT_ADAPTER}.")]
                    param.copy_(source)
        model.delete_adapter(DEFAULT_ADAPTER)
        add_stage_adapter(model, config, frozen_adapters=frozen)
    return model


def worker(args) -> dict:
    """One layout's five stages in this process: step times, and the peak RSS at the end of each stage."""
    import torch
    from peft import get_peft_model

    from trl_plrs.adapters import lora_layers
    from trl_plrs.testing import build_tokenizer

    quiet_libraries()
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = get_peft_model(build_model(args.shape, tokenizer), lora_config(PLRS_RANKS[0]))
    batch = torch.randint(3, len(tokenizer), (args.batch_size, args.sequence_length))
    stages = []
    for stage_index, rank in enumerate(PLRS_RANKS):
        if stage_index:
            randomize_trainable(model, seed=stage_index)
            model = begin_stage(model, args.layout, stage_index)
        model.train()
        optimizer = torch.optim.AdamW([param for param in model.parameters() if param.requires_grad], lr=1e-4)
        times = []
        for step in range(args.warmup_steps + args.steps):
            start = time.perf_counter()
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= args.warmup_steps:
                times.append(time.perf_counter() - start)
        layers = list(lora_layers(model))
        layer = layers[0]
        frozen_rank = sum(layer.r[name] for name in layer.active_adapters if name != "default")
        base_macs = sum(layer.in_features * layer.out_features for layer in layers)
        stages.append(
            {
                "stage": stage_index + 1,
                # Multiply-adds per token of the finished stages' LoRA branches, as a share of the targeted layers'.
                "frozen_share_of_linear_macs": frozen_rank
                * sum(layer.in_features + layer.out_features for layer in layers)
                / base_macs,
                "trainable_rank": rank,
                "lora_branches_per_layer": len(layer.active_adapters),
                "frozen_rank": frozen_rank,
                "step_seconds": statistics.median(times),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        del optimizer
    return {"layout": args.layout, "stages": stages}


def run_worker(args, shape: str, layout: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--shape", shape, "--layout", layout]
    for option in ("batch_size", "sequence_length", "steps", "warmup_steps"):
        command += [f"--{option}", str(getattr(args, option))]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def ratios(repeats: list[dict], layout: str, stage_indices: list[int]) -> dict:
    """`layout`'s step time over merge's (summed over `stage_indices`), within each repeat."""
    return summarize(
        [
            sum(repeat[layout]["stages"][index]["step_seconds"] for index in stage_indices)
            / sum(repeat["merge"]["stages"][index]["step_seconds"] for index in stage_indices)
            for repeat in repeats
        ]
    )


def shape_section(args, shape: str, repeats: list[dict]) -> tuple[str, dict]:
    hidden, intermediate, heads, kv_heads, head_dim, layers = SHAPES[shape]
    tokens = args.batch_size * args.sequence_length
    rows, data_stages = [], []
    for index, rank in enumerate(PLRS_RANKS):
        per_layout = {layout: [repeat[layout]["stages"][index] for repeat in repeats] for layout in LAYOUTS}
        step = {layout: summarize([stage["step_seconds"] for stage in per_layout[layout]]) for layout in LAYOUTS}
        ratio = {layout: ratios(repeats, layout, [index]) for layout in ("unfused", "fused")}
        rss = {layout: max(stage["peak_rss_mib"] for stage in per_layout[layout]) for layout in LAYOUTS}
        branches = " / ".join(str(per_layout[layout][0]["lora_branches_per_layer"]) for layout in LAYOUTS)
        fused = per_layout["fused"][0]
        rows.append(
            [
                f"{index + 1} (r={rank}, frozen {fused['frozen_rank']})",
                branches,
                f"{fused['frozen_share_of_linear_macs']:.0%}",
                fmt(step["merge"], 1000, 0),
                fmt(step["unfused"], 1000, 0),
                fmt(step["fused"], 1000, 0),
                f"**{fmt(ratio['unfused'])}**",
                f"**{fmt(ratio['fused'])}**",
                " / ".join(f"{tokens / step[layout]['median']:,.0f}" for layout in LAYOUTS),
                " / ".join(f"{rss[layout]:,.0f}" for layout in LAYOUTS),
            ]
        )
        data_stages.append(
            {
                "stage": index + 1,
                "rank": rank,
                "frozen_rank": fused["frozen_rank"],
                "frozen_share_of_linear_macs": fused["frozen_share_of_linear_macs"],
                "step_seconds": step,
                "ratio": ratio,
                "peak_rss_mib": rss,
            }
        )
    every_stage = list(range(len(PLRS_RANKS)))
    curriculum = {layout: ratios(repeats, layout, every_stage) for layout in ("unfused", "fused")}
    header = [
        "stage",
        "LoRA branches per layer (merge / unfused / fused)",
        "finished ranks' share of the targeted layers' multiply-adds",
        "merge step (ms)",
        "stack unfused step (ms)",
        "stack fused step (ms)",
        "unfused / merge",
        "fused / merge",
        "tokens/s (merge / unfused / fused)",
        "peak RSS MiB (merge / unfused / fused)",
    ]
    last = data_stages[-1]["ratio"]
    markdown = f"""## {shape}: hidden {hidden}, MLP {intermediate}, {heads} heads / {kv_heads} key-value heads of {head_dim}, {layers} layer(s)

**Last stage: stack {fmt(last["unfused"])}x merge's step before fusion, {fmt(last["fused"])}x after.** Whole
curriculum (the five stages' step times summed): unfused {fmt(curriculum["unfused"])}x, fused
{fmt(curriculum["fused"])}x merge's.

{markdown_table(header, rows)}
"""
    return markdown, {"shape": SHAPES[shape], "stages": data_stages, "curriculum": curriculum, "repeats": repeats}


def report(args, results: dict[str, list[dict]]) -> tuple[str, dict]:
    sections, data = [], {"settings": vars(args), "shapes": {}}
    for shape, repeats in results.items():
        markdown, data["shapes"][shape] = shape_section(args, shape, repeats)
        sections.append(markdown)
    body = "\n".join(sections)
    markdown = f"""# The frozen stack's cost per step: fused vs unfused vs merge

PLRS ranks {PLRS_RANKS} (alpha = 2r, dropout 0.05 on the trainable adapter), LoRA on the 7 projections of a
Llama-style model in fp32; one training step (forward, backward, AdamW) on a batch of {args.batch_size} x
{args.sequence_length} tokens; median of {args.steps} steps after {args.warmup_steps} warm-up per stage,
{args.repeats} repeat(s), ratios within a repeat. Written by `benchmarks/bench_stack.py`.

{body}
What fusion removes is the per-branch work of PEFT's LoRA forward: one dropout, input cast, two small matmuls,
scaling and add per adapter and layer, each with its backward. What it cannot remove is the arithmetic of the finished
ranks (the "share" column: frozen rank x (in + out) / (in x out), summed over the targeted layers), which every step
of a stack computes, forward and for the input gradient; merge mode computes none of it, which is why it stays the
fastest where it is exact (fp32 weights, or `fp32_merge` under autocast at 2 more bytes per targeted weight).
"""
    return markdown, data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["hidden1024", "llama-1b-layer"])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--sequence_length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup_steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small model, 1 repeat, 1 step: a smoke run")
    parser.add_argument("--output_dir", default=RESULTS_DIR)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.shapes, args.repeats, args.steps, args.sequence_length = ["quick"], 1, 1, 64
    results = {}
    for shape in args.shapes:
        results[shape] = []
        for repeat in range(args.repeats):
            order = LAYOUTS if repeat % 2 == 0 else LAYOUTS[::-1]
            results[shape].append({layout: run_worker(args, shape, layout) for layout in order})
            print(f"{shape}: repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    markdown, data = report(args, results)
    paths = write_results("stack", markdown, data, args.output_dir)
    print(markdown)
    print("Wrote " + " and ".join(paths))
    return data


if __name__ == "__main__":
    main()
