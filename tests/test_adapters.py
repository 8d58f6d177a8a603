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

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from trl_plrs.adapters import (
    DEFAULT_ADAPTER,
    FROZEN_ADAPTER,
    add_stage_adapter,
    base_weights,
    concatenate_lora_adapters,
    export_mismatch,
    fuse_into_frozen,
    lora_layers,
    merge_adapter_into_base,
    trainable_adapter_names,
    upcast_base_weights,
)
from trl_plrs.testing import build_tiny_model, build_tokenizer


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(r, **kwargs):
    return LoraConfig(**{"r": r, "lora_alpha": 2 * r, "target_modules": TARGETS, "lora_dropout": 0.0, **kwargs})


def randomize_adapter(model, adapter_name=DEFAULT_ADAPTER, seed=0):
    """Stand-in for training: give the adapter non-zero A and B."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            if adapter_name in layer.lora_A:
                for param in (layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight):
                    param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.05)


@pytest.fixture
def batch(tokenizer):
    return tokenizer(["What is 3 + 4?", "Solve 2x = 8 for x."], return_tensors="pt", padding=True)


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-6)])
def test_merge_then_new_adapter_keeps_the_function(tokenizer, batch, dtype, tolerance):
    model = get_peft_model(build_tiny_model(tokenizer, dtype=dtype), lora_config(16))
    randomize_adapter(model)
    before = logits(model, batch)

    merge_adapter_into_base(model)
    assert list(model.peft_config) == []
    add_stage_adapter(model, lora_config(8), frozen_adapters=[])

    assert torch.allclose(logits(model, batch), before, atol=tolerance, rtol=0)
    assert list(model.peft_config) == [DEFAULT_ADAPTER]
    for layer in lora_layers(model):
        assert layer.lora_A[DEFAULT_ADAPTER].weight.shape[0] == 8
        assert torch.count_nonzero(layer.lora_B[DEFAULT_ADAPTER].weight) == 0  # PEFT's zero init of B


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-6)])
def test_fuse_then_new_adapter_keeps_the_function(tokenizer, batch, dtype, tolerance):
    model = get_peft_model(build_tiny_model(tokenizer, dtype=dtype), lora_config(16, lora_dropout=0.2))
    randomize_adapter(model)
    before = logits(model, batch)

    fuse_into_frozen(model)
    add_stage_adapter(model, lora_config(8), frozen_adapters=[FROZEN_ADAPTER])

    assert torch.allclose(logits(model, batch), before, atol=tolerance, rtol=0)
    assert set(model.peft_config) == {DEFAULT_ADAPTER, FROZEN_ADAPTER}
    assert model.active_adapters == [DEFAULT_ADAPTER, FROZEN_ADAPTER]
    assert trainable_adapter_names(model) == {DEFAULT_ADAPTER}
    for layer in lora_layers(model):
        assert isinstance(layer.lora_dropout[FROZEN_ADAPTER], torch.nn.Identity)
    # Training mode must not change the frozen adapter's contribution (no dropout on it).
    model.train()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, before, atol=tolerance, rtol=0)


def stacked_reference(tokenizer, dtype, configs, seeds):
    """The unfused stack: every stage's adapter kept as its own frozen adapter, all active."""
    model = get_peft_model(build_tiny_model(tokenizer, dtype=dtype), configs[0], adapter_name="s0")
    for index, config in enumerate(configs[1:], start=1):
        model.add_adapter(f"s{index}", config)
    for index, seed in enumerate(seeds):
        randomize_adapter(model, f"s{index}", seed=seed)
    model.base_model.set_adapter([f"s{index}" for index in range(len(configs))])
    return model


@pytest.mark.parametrize("use_rslora", [False, True])
def test_fused_stages_equal_the_unfused_stack_in_float64(tokenizer, batch, use_rslora):
    """Four stages (ranks 16, 8, 4, 2, dropout on) folded one by one: one frozen branch of rank 28 per layer, the
    function of four separate adapters, up to float64 rounding."""
    configs = [lora_config(rank, lora_dropout=0.1, use_rslora=use_rslora) for rank in (16, 8, 4, 2)]
    seeds = [11, 12, 13, 14]
    reference = logits(stacked_reference(tokenizer, torch.float64, configs, seeds), batch)

    model = get_peft_model(build_tiny_model(tokenizer, dtype=torch.float64), configs[0])
    randomize_adapter(model, seed=seeds[0])
    for config, seed in zip(configs[1:], seeds[1:]):
        fuse_into_frozen(model)
        add_stage_adapter(model, config, frozen_adapters=[FROZEN_ADAPTER])
        randomize_adapter(model, seed=seed)
    torch.testing.assert_close(logits(model, batch), reference, atol=1e-10, rtol=0)
    fuse_into_frozen(model)  # the last stage too: the frozen adapter then is the whole curriculum
    torch.testing.assert_close(logits(model, batch), reference, atol=1e-10, rtol=0)

    assert model.peft_config[FROZEN_ADAPTER].r == 30 and model.peft_config[FROZEN_ADAPTER].lora_alpha == 30
    for layer in lora_layers(model):
        assert list(layer.lora_A) == [FROZEN_ADAPTER]  # one LoRA branch, however many stages
        assert layer.scaling[FROZEN_ADAPTER] == 1.0


def test_fused_adapter_is_rebuilt_bit_for_bit_from_the_saved_stages(tokenizer, tmp_path):
    """A resume rebuilds the frozen adapter from the stage folders: the same tensors as the live fusion, in bf16 too
    (a QLoRA stage adapter trains in bf16)."""
    model = get_peft_model(build_tiny_model(tokenizer), lora_config(16))
    dirs = []
    for stage, rank in enumerate([16, 8, 4]):
        if stage:
            fuse_into_frozen(model)
            add_stage_adapter(model, lora_config(rank), frozen_adapters=[FROZEN_ADAPTER])
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
        randomize_adapter(model, seed=stage + 20)
        dirs.append(str(tmp_path / f"stage-{stage}"))
        model.save_pretrained(dirs[-1], selected_adapters=[DEFAULT_ADAPTER])
    fuse_into_frozen(model)
    live = {name: param.detach().clone() for name, param in model.named_parameters() if FROZEN_ADAPTER in name}

    rebuilt = get_peft_model(build_tiny_model(tokenizer), lora_config(16))
    rebuilt.delete_adapter(DEFAULT_ADAPTER)
    for path in dirs:
        rebuilt.load_adapter(path, adapter_name=DEFAULT_ADAPTER)
        fuse_into_frozen(rebuilt)
    again = {name: param.detach() for name, param in rebuilt.named_parameters() if FROZEN_ADAPTER in name}
    assert live.keys() == again.keys() and live
    for name, value in live.items():
        assert value.dtype == torch.float32
        assert torch.equal(again[name], value), name


def test_only_the_new_adapter_and_no_base_weight_is_trainable(tokenizer):
    model = get_peft_model(build_tiny_model(tokenizer), lora_config(16))
    fuse_into_frozen(model)
    add_stage_adapter(model, lora_config(8), frozen_adapters=[FROZEN_ADAPTER])
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all(".lora_A.default." in name or ".lora_B.default." in name for name in trainable)
    num_modules = 2 * len(TARGETS)  # 2 layers
    assert len(trainable) == 2 * num_modules


def test_recreating_the_adapter_under_the_same_name_discards_the_earlier_stage(tokenizer, batch):
    """The original notebooks' defect, replayed: `get_peft_model` again on the adapter named "default"."""
    base = build_tiny_model(tokenizer)
    base_logits = logits(base, batch)

    stage_1 = get_peft_model(base, lora_config(16))
    randomize_adapter(stage_1)
    trained_logits = logits(stage_1, batch)
    assert not torch.allclose(trained_logits, base_logits, atol=1e-3)

    # Notebook call sequence: get_peft_model on the model again, same adapter name, new rank.
    stage_2 = get_peft_model(stage_1.get_base_model(), lora_config(8))
    defective_logits = logits(stage_2, batch)
    assert torch.allclose(defective_logits, base_logits, atol=1e-6)  # stage 1 silently gone

    # Ours: stage 1 is carried into stage 2.
    ours = get_peft_model(build_tiny_model(tokenizer), lora_config(16))
    randomize_adapter(ours)
    merge_adapter_into_base(ours)
    add_stage_adapter(ours, lora_config(8), frozen_adapters=[])
    assert torch.allclose(logits(ours, batch), trained_logits, atol=1e-5)


def test_peft_merge_adapter_then_set_adapter_silently_unmerges(tokenizer, batch):
    """Why `merge_adapter_into_base` does not use PEFT's `merge_adapter` (documented trap of PEFT 0.21)."""
    model = get_peft_model(build_tiny_model(tokenizer), lora_config(16))
    randomize_adapter(model)
    trained_logits = logits(model, batch)
    model.merge_adapter()
    model.add_adapter("next", lora_config(8))
    model.set_adapter("next")  # un-merges "default"
    assert not any(layer.merged for layer in lora_layers(model))
    model.delete_adapter("default")
    assert not torch.allclose(logits(model, batch), trained_logits, atol=1e-3)


def test_concatenated_adapter_matches_peft_cat_and_the_stacked_model(tokenizer, batch, tmp_path):
    base = build_tiny_model(tokenizer)
    original = copy.deepcopy(base)
    model = get_peft_model(base, lora_config(16))
    randomize_adapter(model, seed=1)
    dirs = []
    for stage, rank in enumerate([16, 8, 4]):
        if stage:
            fuse_into_frozen(model)
            add_stage_adapter(model, lora_config(rank), frozen_adapters=[FROZEN_ADAPTER])
            randomize_adapter(model, seed=stage + 1)
        dirs.append(str(tmp_path / f"stage-{stage}"))
        model.save_pretrained(dirs[-1], selected_adapters=[DEFAULT_ADAPTER])
    stacked_logits = logits(model, batch)
    # The live frozen adapter is the export of the finished stages, bit for bit.
    concatenate_lora_adapters(dirs[:2], str(tmp_path / "first-two"))
    exported = PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path / "first-two"))
    for layer_live, layer_exported in zip(lora_layers(model), lora_layers(exported), strict=True):
        for part in ("lora_A", "lora_B"):
            live = getattr(layer_live, part)[FROZEN_ADAPTER].weight
            assert torch.equal(live, getattr(layer_exported, part)["default"].weight)

    config = concatenate_lora_adapters(dirs, str(tmp_path / "final"))
    assert (config.r, config.lora_alpha) == (28, 28)
    loaded = PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path / "final"))
    assert torch.allclose(logits(loaded, batch), stacked_logits, atol=1e-5)

    # PEFT's own "cat" combination of the same adapters gives the same weights.
    oracle = PeftModel.from_pretrained(copy.deepcopy(original), dirs[0], adapter_name="a0")
    for index, path in enumerate(dirs[1:], start=1):
        oracle.load_adapter(path, adapter_name=f"a{index}")
    oracle.add_weighted_adapter(["a0", "a1", "a2"], [1.0, 1.0, 1.0], "cat", combination_type="cat")
    for layer_ours, layer_oracle in zip(lora_layers(loaded), lora_layers(oracle)):
        torch.testing.assert_close(layer_ours.lora_A["default"].weight, layer_oracle.lora_A["cat"].weight)
        torch.testing.assert_close(layer_ours.lora_B["default"].weight, layer_oracle.lora_B["cat"].weight)


def test_concatenation_honours_rslora_scaling(tokenizer, batch, tmp_path):
    model = get_peft_model(build_tiny_model(tokenizer), lora_config(16, use_rslora=True))
    randomize_adapter(model)
    model.save_pretrained(str(tmp_path / "a"))
    expected = logits(model, batch)
    concatenate_lora_adapters([str(tmp_path / "a")], str(tmp_path / "cat"))
    loaded = PeftModel.from_pretrained(build_tiny_model(tokenizer), str(tmp_path / "cat"))
    assert torch.allclose(logits(loaded, batch), expected, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Precision: the default transition keeps every stage's learning whatever the base dtype


def test_upcast_base_weights_is_exact_and_idempotent():
    model = get_peft_model(build_tiny_model(build_tokenizer(), dtype=torch.bfloat16), lora_config(8))
    before = {id(layer): layer.get_base_layer().weight.detach().clone() for layer in lora_layers(model)}
    upcast = upcast_base_weights(model)
    assert upcast == sum(weight.numel() for weight in before.values())
    for layer in lora_layers(model):
        weight = layer.get_base_layer().weight
        assert weight.dtype == torch.float32 and not weight.requires_grad
        assert torch.equal(weight.to(torch.bfloat16), before[id(layer)])
    assert upcast_base_weights(model) == 0


def test_merge_reports_the_share_rounded_away():
    model = get_peft_model(build_tiny_model(build_tokenizer(), dtype=torch.bfloat16), lora_config(8))
    randomize_adapter(model, seed=3)
    for layer in lora_layers(model):
        with torch.no_grad():
            layer.lora_B[DEFAULT_ADAPTER].weight.mul_(1e-3)  # an update ~1e-3 of the weights, as at lr 5e-5
    assert 0.3 < merge_adapter_into_base(model) < 1.0

    model = get_peft_model(build_tiny_model(build_tokenizer(), dtype=torch.float32), lora_config(8))
    randomize_adapter(model, seed=3)
    assert merge_adapter_into_base(model) == 0.0  # fp32 weights: not measured, nothing is rounded away


def _train_at_paper_learning_rate(tmp_path, tokenizer, dtype, **kwargs):
    """Train 3 stages at lr 5e-5; return the trainer and `export_mismatch` of the live model at the last stage's end."""
    from trl_plrs import CurriculumCallback, CurriculumSFTTrainer
    from trl_plrs.transitions import stage_dir

    from .conftest import make_leveled_dataset
    from .test_plrs_trainer import lora_config as trainer_lora_config
    from .test_plrs_trainer import make_args

    class LiveMismatch(CurriculumCallback):
        """Measured while the stage adapters are live (after `train()` the exported adapter replaces them)."""

        def on_stage_end(self, args, state, control, stage, model, **kwargs):
            if stage.index == len(trainer.stages) - 1:
                stage_dirs = [stage_dir(args.output_dir, stage.number) for stage in trainer.stages]
                self.mismatch = export_mismatch(model, original, stage_dirs)

    live = LiveMismatch()
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer, dtype=dtype),
        args=make_args(tmp_path, learning_rate=5e-5, max_steps=4, **kwargs),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=trainer_lora_config(lora_dropout=0.0),
        callbacks=[live],
    )
    original = base_weights(trainer.model)
    trainer.train()
    return trainer, live.mismatch


@pytest.mark.parametrize(
    "dtype, autocast, transition",
    [
        (torch.bfloat16, False, "stack"),
        (torch.float16, False, "stack"),
        (torch.bfloat16, True, "fp32_merge"),
        (torch.float32, False, "merge"),
        (torch.float32, True, "merge"),
    ],
)
def test_default_transition_keeps_every_stage_in_any_dtype(tmp_path, tokenizer, dtype, autocast, transition):
    trainer, mismatch = _train_at_paper_learning_rate(tmp_path, tokenizer, dtype, bf16=autocast)
    assert trainer.adapter_transition == transition
    # The upcast lasts the curriculum: at the end the base weights are back in their dtype (with the exported adapter).
    assert {layer.get_base_layer().weight.dtype for layer in lora_layers(trainer.model)} == {dtype}
    assert len(mismatch) == 14  # 7 projections x 2 layers
    # The live model (base + active adapters) is the original base + the exported adapter, layer by layer: at most
    # 5% of the exported delta apart (measured: 0 in stack mode, ~1e-7 for fp32 merges, upcast ones included).
    assert max(mismatch.values()) <= 0.05, mismatch


def test_explicit_merge_into_bf16_warns_with_the_share_lost(tmp_path, tokenizer, caplog):
    with caplog.at_level("WARNING"):
        trainer, mismatch = _train_at_paper_learning_rate(
            tmp_path, tokenizer, torch.bfloat16, adapter_transition="merge"
        )
    assert trainer.adapter_transition == "merge"
    assert "`adapter_transition='merge'` with bfloat16 base weights" in caplog.text
    assert "rounded away" in caplog.text
    losses = [summary.merge_rounding_loss for summary in trainer.stage_summaries[:-1]]
    assert all(loss > 0.3 for loss in losses), losses  # what the warning reports, kept in the run summary
    # ... and the live model has lost it: far more than 5% of the exported delta is missing.
    assert max(mismatch.values()) > 0.3
