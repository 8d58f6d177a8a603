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

import gc
import os
import weakref
from collections import Counter
from unittest import mock

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments
from trl import SFTConfig, SFTTrainer

from trl_plrs import CurriculumCallback, CurriculumSFTTrainer, PLRSConfig
from trl_plrs.adapters import (
    DEFAULT_ADAPTER,
    FROZEN_ADAPTER,
    concatenate_lora_adapters,
    lora_layers,
    trainable_adapter_names,
)
from trl_plrs.plrs_trainer import _long_lived_objects_frozen
from trl_plrs.testing import build_tiny_model, save_tiny_model

from .conftest import make_leveled_dataset


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_args(output_dir, **kwargs):
    defaults = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=4,
        max_steps=3,
        warmup_steps=1,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        lora_ranks=[16, 8, 4],
    )
    return PLRSConfig(**{**defaults, **kwargs})


def lora_config(**kwargs):
    return LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": TARGETS, "lora_dropout": 0.1, **kwargs})


def eval_logits(model, batch):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits
    model.train(was_training)
    return out


class Recorder(CurriculumCallback):
    """Records, at every stage boundary, what the tests check."""

    def __init__(self, batch):
        self.batch = batch
        self.trainer = None
        self.begin, self.end, self.optimizer_params, self.first_lr = [], [], [], []

    def on_stage_begin(self, args, state, control, stage, model, **kwargs):
        layers = [layer for layer in lora_layers(model) if DEFAULT_ADAPTER in layer.lora_A]
        base_trainable = [
            name for name, param in model.named_parameters() if param.requires_grad and ".lora_" not in name
        ]
        self.begin.append(
            {
                "stage": stage,
                "global_step": state.global_step,
                "logits": eval_logits(model, self.batch),
                "adapters": sorted(model.peft_config),
                "active": list(model.active_adapters),
                "trainable_adapters": trainable_adapter_names(model),
                "default_ranks": {layer.lora_A[DEFAULT_ADAPTER].weight.shape[0] for layer in layers},
                "default_scaling": {layer.scaling[DEFAULT_ADAPTER] for layer in layers},
                "default_b_nonzero": sum(
                    int(torch.count_nonzero(layer.lora_B[DEFAULT_ADAPTER].weight)) for layer in layers
                ),
                "targets": {name.split(".")[-1] for name, module in model.named_modules() if module in layers},
                "base_trainable": base_trainable,
                "frozen_ranks": {layer.r.get(FROZEN_ADAPTER, 0) for layer in layers},
                "level_counts": Counter(self.trainer.train_dataset["level"]),
                "is_selection": self.trainer.train_dataset._indices is not None,
            }
        )

    def on_stage_end(self, args, state, control, stage, model, **kwargs):
        self.end.append({"stage": stage, "global_step": state.global_step, "logits": eval_logits(model, self.batch)})

    def on_step_begin(self, args, state, control, optimizer, model, **kwargs):
        if state.global_step != self.trainer.curriculum_state.stage_start_step:
            return  # the stage's optimizer exists once its loop runs: checked at its first step
        optimized = {id(param) for group in optimizer.param_groups for param in group["params"]}
        trainable = {id(param) for param in model.parameters() if param.requires_grad}
        self.optimizer_params.append((optimized, trainable))


def run_curriculum(tmp_path, tokenizer, adapter_transition="merge", dtype=torch.float32, **kwargs):
    batch = tokenizer(["What is 3 + 4?", "What is 12 + 30?"], return_tensors="pt", padding=True)
    recorder = Recorder(batch)
    args = make_args(tmp_path / adapter_transition, adapter_transition=adapter_transition, **kwargs)
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer, dtype=dtype),
        args=args,
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    original_map = Dataset.map

    def counting_map(self, *args, **kwargs):
        recorder.maps_during_training += 1
        return original_map(self, *args, **kwargs)

    recorder.maps_during_training = 0
    with mock.patch.object(Dataset, "map", counting_map):
        output = trainer.train()
    return trainer, recorder, output, batch


@pytest.fixture(scope="module", params=["merge", "stack"])
def trained(request, tmp_path_factory, tokenizer):
    return run_curriculum(tmp_path_factory.mktemp("run"), tokenizer, adapter_transition=request.param)


def test_one_train_call_runs_every_stage_with_growing_global_step(trained):
    trainer, recorder, output, _ = trained
    assert [record["stage"].number for record in recorder.begin] == [1, 2, 3]
    assert [record["global_step"] for record in recorder.end] == [3, 6, 9]
    assert output.global_step == trainer.state.global_step == 9
    steps = [entry["step"] for entry in trainer.state.log_history]
    assert steps == sorted(steps)
    for entry in trainer.state.log_history:
        assert {"stage", "lora_rank", "trainable_params"} <= set(entry)
    by_stage = {entry["stage"]: entry for entry in trainer.state.log_history if "loss" in entry}
    assert {stage: (entry["lora_rank"]) for stage, entry in by_stage.items()} == {1: 16, 2: 8, 3: 4}
    params = [by_stage[stage]["trainable_params"] for stage in (1, 2, 3)]
    assert params[0] == 2 * params[1] == 4 * params[2] > 0


def test_stage_datasets_are_rows_of_the_dataset_tokenized_once(trained):
    trainer, recorder, _, _ = trained
    assert "input_ids" in trainer.curriculum_dataset.column_names
    assert recorder.maps_during_training == 0  # no tokenization (or any other map) once training started
    assert all(record["is_selection"] for record in recorder.begin)  # an index mapping over the tokenized rows


def test_stage_rows_match_the_replay_spec(trained):
    _, recorder, _, _ = trained
    counts = [dict(record["level_counts"]) for record in recorder.begin]
    assert counts == [{"Level 1": 8}, {"Level 1": 8, "Level 2": 8}, {"Level 1": 8, "Level 2": 8, "Level 3": 8}]


def test_each_stage_starts_with_exactly_one_fresh_trainable_adapter(trained):
    trainer, recorder, _, _ = trained
    for record in recorder.begin:
        stage = record["stage"]
        assert record["trainable_adapters"] == {DEFAULT_ADAPTER}
        assert record["default_ranks"] == {stage.lora_rank}
        assert record["default_scaling"] == {stage.lora_alpha / stage.lora_rank}
        assert record["targets"] == set(TARGETS)
        assert record["base_trainable"] == []
        assert record["default_b_nonzero"] == 0
        if trainer.args.adapter_transition == "merge":
            assert record["adapters"] == [DEFAULT_ADAPTER]
            assert record["active"] == [DEFAULT_ADAPTER]
        else:
            # From stage 2 on, one frozen adapter carries every finished stage: its rank is theirs summed.
            frozen = [FROZEN_ADAPTER] if stage.index else []
            assert record["adapters"] == sorted([DEFAULT_ADAPTER, *frozen])
            assert record["active"] == [DEFAULT_ADAPTER, *frozen]
            assert record["frozen_ranks"] == {sum(earlier.lora_rank for earlier in trainer.stages[: stage.index])}


def test_transitions_do_not_change_the_model_function(trained):
    _, recorder, _, _ = trained
    for end, begin in zip(recorder.end[:-1], recorder.begin[1:]):
        torch.testing.assert_close(begin["logits"], end["logits"], atol=1e-4, rtol=0)
    # ... while training did change it
    assert not torch.allclose(recorder.begin[0]["logits"], recorder.end[0]["logits"], atol=1e-3)


def test_transition_is_exact_in_float64(tmp_path, tokenizer):
    _, recorder, _, _ = run_curriculum(
        tmp_path, tokenizer, adapter_transition="merge", dtype=torch.float64, max_steps=2
    )
    for end, begin in zip(recorder.end[:-1], recorder.begin[1:]):
        torch.testing.assert_close(begin["logits"], end["logits"], atol=1e-6, rtol=0)


def test_learning_is_carried_across_stages(trained, tokenizer):
    """After stage 2 the model is base + stage-1 delta + stage-2 delta."""
    trainer, recorder, _, batch = trained
    first_two = [os.path.join(trainer.args.output_dir, f"stage-{number}") for number in (1, 2)]
    combined = os.path.join(trainer.args.output_dir, "first-two")
    concatenate_lora_adapters(first_two, combined)
    model = PeftModel.from_pretrained(build_tiny_model(tokenizer), combined)
    torch.testing.assert_close(eval_logits(model, batch), recorder.end[1]["logits"], atol=1e-4, rtol=0)
    # and stage 1 alone is not enough: stage 2 added to it
    only_first = PeftModel.from_pretrained(build_tiny_model(tokenizer), first_two[0])
    assert not torch.allclose(eval_logits(only_first, batch), recorder.end[1]["logits"], atol=1e-3)


def test_optimizer_is_rebuilt_over_the_current_adapter_and_warmup_restarts(trained):
    trainer, recorder, _, _ = trained
    assert len(recorder.optimizer_params) == 3
    for optimized, trainable in recorder.optimizer_params:
        assert optimized == trainable
    first_lrs = {}
    for entry in trainer.state.log_history:
        if "learning_rate" in entry:
            first_lrs.setdefault(entry["stage"], entry["learning_rate"])
    assert first_lrs == {1: 0.0, 2: 0.0, 3: 0.0}  # warmup_steps=1: every stage starts its warmup again


class FinishedStageWatcher(TrainerCallback):
    """
    At each stage's first step, records whether the previous stage's optimizer and trainable adapter are still alive.
    """

    def __init__(self):
        self.previous_stage_refs, self.previous_stage_alive, self.gc_frozen = [], [], []
        self.trainer = None

    def on_step_begin(self, args, state, control, optimizer, model, **kwargs):
        if state.global_step != self.trainer.curriculum_state.stage_start_step:
            return
        self.previous_stage_alive.append([ref() is not None for ref in self.previous_stage_refs])
        self.gc_frozen.append(gc.get_freeze_count() > 0)
        layer = next(layer for layer in lora_layers(model) if DEFAULT_ADAPTER in layer.lora_A)
        self.previous_stage_refs = [
            weakref.ref(optimizer),
            weakref.ref(getattr(optimizer, "optimizer", optimizer)),
            weakref.ref(layer.lora_A[DEFAULT_ADAPTER]),
            weakref.ref(layer.lora_B[DEFAULT_ADAPTER].weight),
        ]


@pytest.mark.parametrize("adapter_transition", ["merge", "stack"])
def test_nothing_trainable_of_a_finished_stage_stays_alive(tmp_path, tokenizer, adapter_transition):
    watcher = FinishedStageWatcher()
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, adapter_transition=adapter_transition, max_steps=1),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[watcher],
    )
    watcher.trainer = trainer
    trainer.train()
    assert watcher.previous_stage_alive == [[], [False] * 4, [False] * 4]
    # The objects that predate training are hidden from the collector during the curriculum only.
    assert watcher.gc_frozen == [True, True, True]
    assert gc.get_freeze_count() == 0


def test_long_lived_objects_frozen_leaves_a_callers_freeze_alone(monkeypatch):
    # The freeze count itself is not stable (a frozen object that is deallocated leaves the permanent generation; a
    # CI run saw it drop by 2), so the test checks that the block neither freezes nor unfreezes.
    gc.freeze()
    try:
        calls = []
        monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
        monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
        with _long_lived_objects_frozen():
            assert gc.get_freeze_count() > 0
        assert calls == [] and gc.get_freeze_count() > 0
    finally:
        monkeypatch.undo()
        gc.unfreeze()


def test_stage_adapters_and_final_adapter_are_saved(trained, tokenizer):
    trainer, recorder, _, batch = trained
    output_dir = trainer.args.output_dir
    for stage in trainer.stages:
        config = LoraConfig.from_pretrained(os.path.join(output_dir, f"stage-{stage.number}"))
        assert (config.r, config.lora_alpha) == (stage.lora_rank, stage.lora_alpha)
    final = LoraConfig.from_pretrained(output_dir)
    assert final.r == 16 + 8 + 4
    weights = load_file(os.path.join(output_dir, "adapter_model.safetensors"))
    assert not any("embed" in key for key in weights)  # no resized embeddings saved with the adapter
    loaded = PeftModel.from_pretrained(build_tiny_model(tokenizer), output_dir)
    torch.testing.assert_close(eval_logits(loaded, batch), recorder.end[-1]["logits"], atol=1e-4, rtol=0)
    # After `train()`, `trainer.model` is the base with that combined adapter: the same function, up to float rounding.
    assert list(trainer.model.peft_config) == ["default"] and trainer.model.peft_config["default"].r == 28
    torch.testing.assert_close(eval_logits(trainer.model, batch), recorder.end[-1]["logits"], atol=1e-5, rtol=0)


def test_save_model_after_training_writes_the_combined_adapter(trained, tmp_path):
    trainer, _, _, _ = trained
    trainer.save_model(str(tmp_path / "export"))
    assert LoraConfig.from_pretrained(str(tmp_path / "export")).r == 28


def test_stack_mode_never_changes_the_base_weights(tmp_path, tokenizer):
    trainer, _, _, _ = run_curriculum(tmp_path, tokenizer, adapter_transition="stack", max_steps=2)
    original = build_tiny_model(tokenizer).state_dict()
    for name, value in trainer.model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        original_name = name.replace(".base_layer", "")
        torch.testing.assert_close(value, original[original_name], atol=0, rtol=0)


def train_one_stage_beside_sft(tmp_path, tokenizer, sft_lora, our_lora, curriculum_kwargs, dataset=None, **overrides):
    """`SFTTrainer` and a one-stage curriculum on the same rows, seed and settings; both trained."""
    dataset = make_leveled_dataset() if dataset is None else dataset
    common = {
        **dict(
            use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=4, max_steps=4,
            learning_rate=5e-3, save_strategy="no", disable_tqdm=True, seed=3,
        ),
        **overrides,
    }  # fmt: skip
    sft = SFTTrainer(
        build_tiny_model(tokenizer),
        args=SFTConfig(str(tmp_path / "sft"), **common),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=sft_lora,
    )
    sft.train()
    ours = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=PLRSConfig(str(tmp_path / "ours"), **curriculum_kwargs, **common),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=our_lora,
    )
    ours.train()
    return sft, ours


def test_one_stage_curriculum_matches_sft_trainer(tmp_path, tokenizer):
    # The `direct` preset: one stage with every level at rank 32, alpha 64.
    sft, ours = train_one_stage_beside_sft(
        tmp_path, tokenizer, lora_config(r=32, lora_alpha=64), lora_config(), {"plrs_preset": "direct"}
    )
    assert len(ours.stages) == 1 and ours.stages[0].levels == (1, 2, 3)
    assert_same_adapter(sft.model, os.path.join(ours.args.output_dir, "stage-1"))


def assert_same_adapter(sft_model, stage_adapter_dir, atol=1e-6):
    """The trained adapter of an `SFTTrainer` model equals a curriculum's saved stage adapter."""
    sft_weights = {n.replace(".default", ""): p for n, p in sft_model.named_parameters() if "lora_" in n}
    stage_weights = load_file(os.path.join(stage_adapter_dir, "adapter_model.safetensors"))
    assert sft_weights.keys() == stage_weights.keys()
    for name, param in sft_weights.items():
        torch.testing.assert_close(stage_weights[name], param.detach(), atol=atol, rtol=0)


def test_subclass_can_override_the_stage_dataset(tmp_path, tokenizer):
    class FirstRowsOnly(CurriculumSFTTrainer):
        def build_stage_dataset(self, stage):
            rows = super().build_stage_dataset(stage)
            return rows.select(range(2 * stage.number))

    sizes = []

    class StageSizes(CurriculumCallback):
        def on_stage_end(self, args, state, control, stage, metrics, **kwargs):
            sizes.append((stage.number, len(trainer.train_dataset), metrics["train_loss"] > 0))

    trainer = FirstRowsOnly(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, max_steps=1),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[StageSizes()],
    )
    trainer.train()
    assert sizes == [(1, 2, True), (2, 4, True), (3, 6, True)]
    assert [summary.rows for summary in trainer.stage_summaries] == [2, 4, 6]


@pytest.mark.parametrize(
    "preset",
    ["direct", "seq_no_replay", "seq_no_replay_shrink", "seq_full_replay", "replay_shrink", "replay_shrink_no_final"],
)
def test_every_preset_runs_end_to_end(tmp_path, tokenizer, preset):
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, plrs_preset=preset, lora_ranks=None, max_steps=1, per_device_train_batch_size=2),
        train_dataset=make_leveled_dataset(levels=(1, 2, 3, 4, 5), rows_per_level=2),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    trainer.train()
    expected_stages = 1 if preset == "direct" else 5
    assert len(trainer.stage_summaries) == expected_stages
    assert trainer.state.global_step == expected_stages
    replayed = preset in {"seq_full_replay", "replay_shrink", "replay_shrink_no_final"}
    rows = [summary.rows for summary in trainer.stage_summaries]
    assert rows == ([10] if preset == "direct" else [2, 4, 6, 8, 10] if replayed else [2] * 5)
    assert LoraConfig.from_pretrained(trainer.args.output_dir).r == sum(stage.lora_rank for stage in trainer.stages)


def test_model_given_as_a_path(tmp_path, tokenizer):
    path = save_tiny_model(str(tmp_path / "tiny"))
    trainer = CurriculumSFTTrainer(
        path,
        args=make_args(tmp_path / "out", max_steps=1, curriculum_stages=[[1, 2], [3]], lora_ranks=[8, 4]),
        train_dataset=make_leveled_dataset(),
        peft_config=lora_config(),
    )
    trainer.train()
    assert [summary.levels for summary in trainer.stage_summaries] == [[1, 2], [3]]


def test_unknown_levels_are_dropped_or_rejected(tmp_path, tokenizer, caplog):
    dataset = make_leveled_dataset().add_item(
        {
            "prompt": [{"role": "user", "content": "?"}],
            "completion": [{"role": "assistant", "content": "?"}],
            "level": "Level ?",
            "row_id": "x",
        }
    )
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    assert len(trainer.curriculum_dataset) == 24
    with pytest.raises(ValueError, match="1 rows of the training dataset have a `level` value that is not a level"):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path, drop_unknown_levels=False),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(),
        )


def test_single_level_dataset_is_one_stage(tmp_path, tokenizer):
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, lora_ranks=None, max_steps=1),
        train_dataset=make_leveled_dataset(levels=(2,)),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    trainer.train()
    assert [stage.levels for stage in trainer.stages] == [(2,)]


@pytest.mark.parametrize(
    "peft_config, match",
    [
        # Without a fresh LoRA adapter per stage (full fine-tuning, another PEFT method) a rank schedule is refused.
        (None, "`lora_ranks` is \\[16, 8, 4\\], but with full fine-tuning"),
        (
            PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
            "with an adapter carried through every stage",
        ),
        ({"r": 8}, "`peft_config` must be a `peft.PeftConfig`"),
        (LoraConfig(target_modules=TARGETS, use_dora=True), "`peft_config.use_dora` is not supported"),
        (LoraConfig(target_modules=TARGETS, modules_to_save=["lm_head"]), "`peft_config.modules_to_save`"),
        # Refused before any model surgery (it once failed deep in the constructor on a mixture-of-experts model).
        (LoraConfig(target_modules=[], target_parameters=["mlp.gate_proj.weight"]), "`peft_config.target_parameters`"),
    ],
)
def test_invalid_peft_configs_are_rejected(tmp_path, tokenizer, peft_config, match):
    with pytest.raises(ValueError, match=match):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path),
            train_dataset=make_leveled_dataset(),
            processing_class=tokenizer,
            peft_config=peft_config,
        )


def test_a_peft_model_with_a_peft_config_is_refused(tmp_path, tokenizer):
    model = get_peft_model(build_tiny_model(tokenizer), lora_config())
    with pytest.raises(ValueError, match="`model` is already a `PeftModel` and a `peft_config` was passed too"):
        CurriculumSFTTrainer(
            model,
            args=make_args(tmp_path),
            train_dataset=make_leveled_dataset(),
            processing_class=tokenizer,
            peft_config=lora_config(),
        )


@pytest.mark.parametrize("config_class", [SFTConfig, TrainingArguments])
def test_sft_config_and_training_arguments_are_converted(tmp_path, tokenizer, config_class):
    """As `SFTTrainer` converts `TrainingArguments` to `SFTConfig`: a TRL script's config works unchanged."""
    args = config_class(str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=2, learning_rate=3e-3)
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=args,
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    assert isinstance(trainer.args, PLRSConfig)
    assert (trainer.args.max_steps, trainer.args.learning_rate, trainer.args.output_dir) == (2, 3e-3, str(tmp_path))
    assert [stage.levels for stage in trainer.stages] == [(1,), (2,), (3,)]  # the curriculum's defaults


def test_non_training_args_and_optimizers_are_rejected(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="`args` must be a `PLRSConfig`"):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args={"output_dir": str(tmp_path)},
            train_dataset=make_leveled_dataset(),
            processing_class=tokenizer,
            peft_config=lora_config(),
        )
    with pytest.raises(ValueError, match="`optimizers` cannot be passed"):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path),
            train_dataset=make_leveled_dataset(),
            processing_class=tokenizer,
            peft_config=lora_config(),
            optimizers=(object(), None),
        )


def make_trainer(tmp_path, tokenizer, dataset=None, model=None, peft_config=None, **kwargs):
    return CurriculumSFTTrainer(
        model if model is not None else build_tiny_model(tokenizer),
        args=make_args(tmp_path, **kwargs),
        train_dataset=make_leveled_dataset() if dataset is None else dataset,
        processing_class=tokenizer,
        peft_config=peft_config if peft_config is not None else lora_config(),
    )


@pytest.mark.parametrize(
    "dataset_kwargs, config_kwargs, match",
    [
        ({}, {"curriculum_column": "difficulty"}, "`curriculum_column` is 'difficulty', but the training dataset has"),
        # Data without levels (GSM8K-like): the fix is named.
        ({}, {"curriculum_column": "difficulty"}, "set `curriculum_difficulty='base_loss'` \\(or 'length'\\)"),
        ({}, {"curriculum_stages": [[1], [4]]}, "`curriculum_stages` names levels \\[4\\] that have no rows"),
        ({}, {"lora_ranks": [16, 8]}, "`lora_ranks` has 2 entries .* but the curriculum has 3 stages"),
        ({}, {"max_steps": -1, "num_train_epochs": 0}, "`num_train_epochs` is 0 and `max_steps` is -1"),
        (
            {"rows_per_level": 3},
            {"per_device_train_batch_size": 4, "dataloader_drop_last": True},
            "Stage 1 \\(levels \\[1\\]\\) has 3 rows, fewer than one batch",
        ),
    ],
)
def test_bad_inputs_raise_before_training(tmp_path, tokenizer, dataset_kwargs, config_kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, tokenizer, dataset=make_leveled_dataset(**dataset_kwargs), **config_kwargs)


def test_empty_and_streaming_datasets_are_rejected(tmp_path, tokenizer):
    empty = make_leveled_dataset().select([])
    with pytest.raises(ValueError, match="`train_dataset` is empty"):
        make_trainer(tmp_path, tokenizer, dataset=empty)
    with pytest.raises(ValueError, match="`train_dataset` must be a map-style `datasets.Dataset`"):
        make_trainer(tmp_path, tokenizer, dataset=make_leveled_dataset().to_iterable_dataset())


def test_stage_left_without_rows_after_truncation(tmp_path, tokenizer):
    long_prompt = "Consider this very long preamble. " * 40
    dataset = make_leveled_dataset().map(
        lambda row: (
            {"prompt": [{"role": "user", "content": long_prompt + row["prompt"][0]["content"]}]}
            if row["level"] == "Level 3"
            else {}
        )
    )
    with pytest.raises(ValueError, match="Stage 3 \\(levels \\[3\\]\\) has no training rows left"):
        make_trainer(tmp_path, tokenizer, dataset=dataset, max_length=64)


def test_target_modules_matching_nothing(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="target_modules` \\(\\{'nonexistent'\\}.* matches no layer"):
        make_trainer(tmp_path, tokenizer, peft_config=LoraConfig(target_modules=["nonexistent"]))


def test_merge_mode_is_refused_on_a_quantized_base(tmp_path, tokenizer):
    model = build_tiny_model(tokenizer)
    model.is_loaded_in_4bit = True  # what transformers sets on a bitsandbytes 4-bit model
    with pytest.raises(ValueError, match="`adapter_transition='merge'` cannot be used with a quantized"):
        make_trainer(tmp_path, tokenizer, model=model, adapter_transition="merge")


def test_resume_errors(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(ValueError, match="which holds no curriculum_state.json"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_resume_with_a_different_curriculum_is_refused(tmp_path, tokenizer):
    make_trainer(tmp_path, tokenizer, max_steps=1, save_strategy="steps", save_steps=1).train()
    other = make_trainer(tmp_path, tokenizer, max_steps=1, lora_ranks=[32, 8, 4])
    with pytest.raises(ValueError, match=r"every checkpoint in `output_dir` .* belongs to another run.*\['stages'\]"):
        other.train(resume_from_checkpoint=True)
    with pytest.raises(
        ValueError, match=r"belongs to another run, whose fields \['stages'\] differ .*stages: checkpoint"
    ):
        other.train(resume_from_checkpoint=os.path.join(tmp_path, "checkpoint-1"))


def test_training_twice_needs_a_new_trainer_or_a_checkpoint(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, max_steps=1)
    trainer.train()
    with pytest.raises(ValueError, match="has already run its curriculum"):
        trainer.train()


def test_resume_with_different_stage_rows_is_refused(tmp_path, tokenizer):
    make_trainer(tmp_path, tokenizer, max_steps=1, save_strategy="steps", save_steps=1, replay=0.5).train()

    class FewerRows(CurriculumSFTTrainer):
        def stage_rows(self, stage):
            return super().stage_rows(stage)[1:]

    other = FewerRows(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, max_steps=1, replay=0.5),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    with pytest.raises(ValueError, match="the rows of stage 3 \\(its levels plus the replay sample\\) differ"):
        other.train(resume_from_checkpoint=True)


def test_raw_math_rows_get_one_error_naming_to_prompt_completion(tmp_path, tokenizer):
    from trl_plrs.math.data import make_synthetic_math

    with pytest.raises(ValueError, match=r"raw MATH columns .* `dataset.map\(to_prompt_completion\)`"):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path),
            train_dataset=make_synthetic_math(num_per_level=2, levels=(1, 2, 3)),
            processing_class=tokenizer,
            peft_config=lora_config(),
        )


def test_rows_dropped_by_truncation_are_reported(tmp_path, tokenizer, caplog):
    dataset = make_leveled_dataset()
    long_prompt = [{"role": "user", "content": "What is " + " + ".join(["12"] * 60) + "?"}]
    dataset = dataset.map(lambda row, index: {"prompt": long_prompt} if index < 3 else {}, with_indices=True)
    with caplog.at_level("WARNING"):
        trainer = CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path, max_length=48),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(),
        )
    assert len(trainer.curriculum_dataset) == len(dataset) - 3
    assert f"dropped 3 of {len(dataset)} training rows" in caplog.text


def test_target_modules_that_match_nothing_list_the_layer_names(tmp_path, tokenizer):
    """One error naming the option and the layers that exist, instead of PEFT's traceback."""
    for model in (build_tiny_model(tokenizer), save_tiny_model(str(tmp_path / "base"))):  # a model, or its path
        with pytest.raises(ValueError, match="matches no layer of the model") as error:
            CurriculumSFTTrainer(
                model,
                args=make_args(tmp_path),
                train_dataset=make_leveled_dataset(),
                processing_class=tokenizer,
                peft_config=LoraConfig(target_modules=["query", "value"]),
            )
        assert "'q_proj'" in str(error.value) and "'down_proj'" in str(error.value)
        assert error.value.__cause__ is None and error.value.__suppress_context__
