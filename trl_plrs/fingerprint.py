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
What identifies one curriculum run: a checkpoint carries this fingerprint, and a resume continues it only when the
trainer's is the same. It covers everything that changes the trained result: the model (its id and config), the LoRA
settings shared by the stages, the optimizer, the learning-rate schedule and batch, the stage plan, the data and the
seed. Pure functions over plain values, so that a difference can be named field by field.
"""

import hashlib
import json
import os
from typing import Any

import numpy as np
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainingArguments


# LoRA settings that every stage shares (rank and alpha are per stage, in the stage plan).
LORA_FIELDS = (
    "target_modules",
    "exclude_modules",
    "lora_dropout",
    "use_rslora",
    "init_lora_weights",
    "bias",
    "layers_to_transform",
    "layers_pattern",
    "fan_in_fan_out",
)
OPTIMIZER_FIELDS = ("optim", "optim_args", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm")
SCHEDULE_FIELDS = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "world_size",
)
# Model config entries that do not change the model's function.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "architectures", "_commit_hash"}


def as_json(value: Any) -> Any:
    """`value` as it reads back from a JSON file (tuples become lists, sets sorted lists, enums and dtypes strings)."""

    def default(item):
        if isinstance(item, (set, frozenset)):
            return sorted(item, key=str)
        return str(item)

    return json.loads(json.dumps(value, default=default, sort_keys=True))


def model_fingerprint(name_or_path: str, config_dict: dict) -> dict[str, str]:
    """
    The model's id, or the name of its local folder (not its path: a run moved with its base, e.g. the demo's
    `output_dir/base_model`, is still the same run), and a SHA-256 of its config (the entries that change its function).
    """
    if os.path.isdir(name_or_path):
        name_or_path = os.path.basename(os.path.normpath(name_or_path))
    config = {key: value for key, value in config_dict.items() if key not in _VOLATILE_CONFIG_KEYS}
    digest = hashlib.sha256(json.dumps(as_json(config), sort_keys=True).encode()).hexdigest()
    return {"name_or_path": name_or_path, "config_sha256": digest}


def data_fingerprint(dataset: Dataset) -> str:
    """SHA-256 of the tokenized rows (`input_ids`, and `labels` when present), in order."""
    digest = hashlib.sha256()
    columns = [column for column in ("input_ids", "labels") if column in dataset.column_names]
    for column in columns:
        for row in dataset[column][:]:
            array = np.asarray(row, dtype=np.int64)
            digest.update(np.int64(array.size).tobytes())
            digest.update(array.tobytes())
    return digest.hexdigest()


def training_fingerprint(args: TrainingArguments, lora_config: LoraConfig) -> dict[str, dict]:
    """The LoRA settings, optimizer and schedule/batch fields of a run, as JSON values."""
    return as_json(
        {
            "lora": {name: getattr(lora_config, name, None) for name in LORA_FIELDS},
            "optimizer": {name: getattr(args, name, None) for name in OPTIMIZER_FIELDS},
            "schedule": {name: getattr(args, name, None) for name in SCHEDULE_FIELDS},
        }
    )


def fingerprint_differences(saved: dict, current: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """`(field, saved value, current value)` for every leaf that differs, with nested fields named `a.b`."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += fingerprint_differences(old, new, prefix=f"{name}.")
        elif old != new:
            differences.append((name, old, new))
    return differences
