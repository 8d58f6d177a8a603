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
"""The model card's curriculum section and the paper's metadata, as `save_model` writes them into `README.md`."""

import os
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .resume import StageSummary


PAPER_TITLE = "Sequential Fine-Tuning with Progressive LoRA Rank Shrinking for Math Word Problems"
PAPER_URL = "https://openreview.net/forum?id=Pf7sa41jkz"
PAPER_BIBTEX = """@inproceedings{plrs2025,
    title     = {{Sequential Fine-Tuning with Progressive LoRA Rank Shrinking for Math Word Problems}},
    booktitle = {AI for Math Workshop at ICML 2025},
    year      = 2025,
    url       = {https://openreview.net/forum?id=Pf7sa41jkz}
}"""


def curriculum_card_section(
    summaries: "list[StageSummary]", replay: str | float, adapter_transition: str, output_dir: str
) -> str:
    """The model card's curriculum section: what was trained, stage by stage (and the forgetting heatmap, if any)."""
    lines = [
        "### Curriculum",
        "",
        f"Trained with `trl_plrs`' `CurriculumSFTTrainer`: curriculum sequential fine-tuning with "
        f"Progressive LoRA Rank Shrinking, from [{PAPER_TITLE}]({PAPER_URL}) (AI4MATH @ ICML 2025). "
        + (
            "Each stage continued training the same parameters (full fine-tuning, or one PEFT adapter) on its levels "
            f"(plus replay: `{replay}`), with a fresh optimizer and schedule."
            if adapter_transition == "carry"
            else f"Each stage trained a fresh LoRA adapter on its levels (plus replay: `{replay}`); finished adapters "
            f"were carried by `{adapter_transition}`. This repository holds one LoRA adapter equal to the sum of the "
            "stage adapters, for the original base model."
        ),
        "",
        "| stage | levels | rows | rank | alpha | steps | train loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        loss = summary.train_loss
        lines.append(
            f"| {summary.stage} | {', '.join(map(str, summary.levels))} | {summary.rows:,} | "
            f"{'-' if summary.lora_rank is None else summary.lora_rank} | "
            f"{'-' if summary.lora_alpha is None else f'{summary.lora_alpha:g}'} | {summary.steps} | "
            f"{'-' if loss is None else f'{loss:.4f}'} |"
        )
    if os.path.isfile(os.path.join(output_dir, "forgetting_heatmap.png")):
        lines += [
            "",
            "Evaluation per level after every stage (the forgetting matrix):",
            "",
            "![](forgetting_heatmap.png)",
        ]
    return "\n".join(lines) + "\n\n"


def insert_card_section(card: str, section: str) -> str:
    """TRL's model card with `section` before its framework versions (or at its end)."""
    marker = "### Framework versions"
    return card.replace(marker, section + marker, 1) if marker in card else card + "\n" + section


def model_name(args) -> str:
    """The name the model card gives the model: the hub id's last part, else the output folder's name."""
    return (
        args.hub_model_id.split("/")[-1] if args.hub_model_id else os.path.basename(os.path.abspath(args.output_dir))
    )


def name_local_models(card: str, base_model: str, model_path: str) -> str:
    """
    TRL's card links the base model and the pipeline's model as hub ids, and writes `None` for a base loaded from a
    local folder (or built in memory) and for a model not pushed: name them instead, `base_model` as given (its path or
    class) and `model_path` the folder that holds the adapter.
    """
    card = card.replace(
        "This model is a fine-tuned version of [None](https://huggingface.co/None)",
        f"This model is a fine-tuned version of `{base_model}` (a local model)",
    )
    return card.replace('model="None"', f"model={model_path!r}")
