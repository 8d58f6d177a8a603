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
Everything about `adapter_transition`: what a finished stage's adapter becomes when the next stage begins.

- `"merge"`: added to the base weights and deleted (exact into fp32 weights only).
- `"fp32_merge"`: the LoRA-targeted 16-bit weights are upcast to fp32 once, then every finished adapter is merged.
- `"stack"`: folded into one frozen, active adapter that carries every finished stage (`adapters.fuse_into_frozen`).
- `"auto"`: the exact one that fits (see [`choose_adapter_transition`]).

[`StageAdapters`] carries out the chosen transition on the model: it retires a finished adapter and adds the next,
rebuilds the finished stages on a resume, activates the adapters after a checkpoint is loaded, and at the end installs
the combined adapter, the merged stages subtracted again. The merge and its inverse sit side by side in it, as PEFT
keeps `merge`/`unmerge` together on the layer that owns the weights.
"""

import dataclasses
import os
import tempfile
from collections.abc import Callable

import torch
from accelerate.logging import get_logger
from peft import LoraConfig, PeftConfig, PeftModel
from torch import nn

from .adapters import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    DEFAULT_ADAPTER,
    FROZEN_ADAPTER,
    activate_stage_adapters,
    adapter_state_dict,
    add_stage_adapter,
    concatenate_lora_adapters,
    fuse_into_frozen,
    lora_layers,
    merge_adapter_into_base,
    named_lora_layers,
    upcast_base_weights,
)
from .checkpointing import atomic_path, install_files
from .curriculum import PRESETS, Stage
from .trainer_internals import cast_adapter_like_sft


logger = get_logger(__name__)

ADAPTER_TRANSITIONS = ("auto", "merge", "fp32_merge", "stack")
# What a curriculum without a fresh LoRA adapter per stage does at a transition: its trainable parameters carry on.
CARRY = "carry"
MERGE_TRANSITIONS = ("merge", "fp32_merge")
# Share of a merged update rounded away above which a merge warns (fp32 weights lose ~1e-7, bf16 ones up to ~0.8).
MERGE_LOSS_WARNING_THRESHOLD = 0.01
# `init_lora_weights` values that start a new adapter at B = 0 without touching the base weights, so that adding it
# leaves the model's function unchanged.
EXACT_LORA_INITS = (True, "gaussian")
# Name under which the combined adapter is loaded while the stage adapters are replaced by it, at the end.
COMBINED_ADAPTER = "curriculum_combined"


def stage_dir(output_dir: str, stage_number: int) -> str:
    """Folder where the adapter trained at stage `stage_number` (from 1) is saved."""
    return os.path.join(output_dir, f"stage-{stage_number}")


def stage_lora_config(peft_config: LoraConfig, stage: Stage) -> LoraConfig:
    """The user's [`~peft.LoraConfig`] with the stage's rank and alpha."""
    return dataclasses.replace(peft_config, r=stage.lora_rank, lora_alpha=stage.lora_alpha)


# `"auto"` upcasts 16-bit targeted weights to fp32 (`"fp32_merge"`) only when the copy takes at most this share of the
# device memory free at construction; above it, the fused stack (no extra memory) is the better trade. See README's
# precision section for the figures behind it.
FP32_COPY_MAX_SHARE = 0.25


def choose_adapter_transition(
    requested: str,
    base_dtypes: set[torch.dtype],
    quantized: bool,
    engine: str | None,
    autocast: bool,
    fp32_copy_fits: bool = True,
) -> str:
    """
    The transition a curriculum uses: `requested`, or for `"auto"` the one that keeps every stage's learning.

    Merging adds each stage's update to the base weights; in bf16 (8 bits of mantissa) an update much smaller than
    the weight rounds to nothing, so most of a LoRA stage's learning at a typical learning rate is lost (fp16 loses a
    share too). `"auto"` therefore merges into fp32 weights only: as they are (`"merge"`), or after upcasting the
    LoRA-targeted 16-bit weights to fp32 when training runs under autocast and that copy fits (`"fp32_merge"`: 2 more
    bytes per targeted weight, merged steps as fast as a plain LoRA run); it keeps finished adapters frozen beside the
    new one (`"stack"`: exact on any base, no extra memory, one fused frozen LoRA branch per layer whose rank is the
    finished stages' sum) on a quantized base, under DeepSpeed with bf16/fp16, on 16-bit weights under a sharding
    engine (DeepSpeed, FSDP) or without autocast, or when the fp32 copy would not fit.

    Args:
        requested (`str`): `"auto"`, `"merge"`, `"fp32_merge"` or `"stack"`.
        base_dtypes (`set[torch.dtype]`): dtypes of the LoRA-targeted base weights.
        quantized (`bool`): whether the base is 4-bit or 8-bit.
        engine (`str` or `None`): the engine that owns the weights, `"DeepSpeed"` or `"FSDP"`. DeepSpeed with
            bf16/fp16 casts fp32-loaded weights to 16 bits; FSDP2 keeps them in fp32 (its mixed precision casts each
            gathered copy for the compute), so a merge into them stays exact. Neither lets the weights be upcast.
        autocast (`bool`): whether training runs under autocast (`bf16`/`fp16` without DeepSpeed), which runs an
            fp32 weight in 16-bit matmuls.
        fp32_copy_fits (`bool`, *optional*, defaults to `True`): whether upcasting the targeted 16-bit weights to
            fp32 fits the device (see [`fp32_copy_fits`]).
    """
    if requested != "auto":
        return requested
    if quantized:
        return "stack"
    if base_dtypes <= {torch.float32, torch.float64}:
        return "stack" if engine == "DeepSpeed" and autocast else "merge"
    return "fp32_merge" if autocast and engine is None and fp32_copy_fits else "stack"


def fp32_copy_bytes(model: nn.Module) -> int:
    """The memory that upcasting the LoRA-targeted 16-bit base weights to fp32 adds: 2 bytes per weight."""
    return sum(
        2 * layer.get_base_layer().weight.numel()
        for layer in lora_layers(model)
        if layer.get_base_layer().weight.dtype in (torch.bfloat16, torch.float16)
    )


def free_device_memory(device: torch.device) -> int | None:
    """Free memory of `device` in bytes (CUDA: `torch.cuda.mem_get_info`; CPU: available RAM), or `None` if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return None


def fp32_copy_fits(copy_bytes: int, free_bytes: int | None, max_share: float = FP32_COPY_MAX_SHARE) -> bool:
    """Whether an fp32 copy of `copy_bytes` takes at most `max_share` of `free_bytes` (unknown free memory: yes)."""
    return free_bytes is None or copy_bytes <= max_share * free_bytes


def check_requested_transition(requested: str, is_quantized: bool) -> None:
    """Refuse, before the model is loaded, a transition that cannot keep learning on the base."""
    if is_quantized and requested == "merge":
        raise ValueError(
            "`adapter_transition='merge'` cannot be used with a quantized (4-bit or 8-bit) base model: merging "
            "a finished adapter into quantized weights would round it away. Use `adapter_transition='auto'` (the "
            "default) or 'stack', which keep finished adapters frozen and active beside the new one."
        )


def resolve_adapter_transition(
    model: PeftModel, args, is_quantized: bool, device: torch.device, engine: str | None = None
) -> str:
    """
    `args.adapter_transition`, with `"auto"` resolved from how the targeted base weights train (logged with the
    figures it weighed); an explicit choice that cannot work is refused, an explicit merge that would round learning
    away warns. `engine` names the engine that owns the weights (`"DeepSpeed"`, `"FSDP"`), if any.
    """
    base_dtypes = {layer.get_base_layer().weight.dtype for layer in lora_layers(model)}
    sharded_engine = engine is not None
    autocast = bool(args.bf16 or args.fp16)
    copy_bytes, free_bytes = fp32_copy_bytes(model), free_device_memory(device)
    copy_fits = fp32_copy_fits(copy_bytes, free_bytes)
    transition = choose_adapter_transition(
        args.adapter_transition, base_dtypes, is_quantized, engine, autocast, copy_fits
    )
    weights = "4-bit/8-bit" if is_quantized else "/".join(sorted(str(d).split(".")[-1] for d in base_dtypes))
    if transition == "fp32_merge" and (is_quantized or sharded_engine or not autocast):
        raise ValueError(
            f"`adapter_transition='fp32_merge'` upcasts the targeted {weights} base weights to fp32 and needs "
            "training under autocast (`bf16=True` or `fp16=True`) without DeepSpeed or FSDP (which own the "
            "weights' dtype) and an unquantized base. Use `adapter_transition='auto'`, which picks what fits."
        )
    if args.adapter_transition == "auto":
        memory = ""
        if copy_bytes and autocast and not (is_quantized or sharded_engine):
            free = "unknown" if free_bytes is None else f"{free_bytes / 2**30:.2f} GiB"
            memory = (
                f"; an fp32 copy of them takes {copy_bytes / 2**30:.2f} GiB more, "
                f"{'within' if copy_fits else 'over'} {FP32_COPY_MAX_SHARE:.0%} of the {free} free on {device}"
            )
        trained_by = f", trained by {engine}" if sharded_engine else ""
        logger.info(
            f"`adapter_transition='auto'`: the targeted base weights are {weights}{trained_by}"
            f"{' under autocast' if autocast else ''}{memory}, so finished adapters are "
            f"{_DESCRIBED[transition]} ('{transition}')."
        )
    elif transition == "merge" and (
        not base_dtypes <= {torch.float32, torch.float64} or (engine == "DeepSpeed" and autocast)
    ):
        logger.warning(
            f"`adapter_transition='merge'` with {weights} base weights"
            f"{' cast to 16 bits by DeepSpeed' if engine == 'DeepSpeed' and autocast else ''}: merging a stage's update "
            "into 16-bit weights rounds most of it away (each merge logs how much). Use "
            "`adapter_transition='auto'` (the default), 'fp32_merge' or 'stack', or load the base in float32."
        )
    return transition


_DESCRIBED = {
    "merge": "merged into the base weights",
    "fp32_merge": "merged into the targeted base weights after upcasting them to fp32 (2 more bytes per "
    "targeted weight; a 16-bit merge would round most of each stage away)",
    "stack": "kept frozen and active beside the new one, fused into one frozen adapter",
}


class StageAdapters:
    """
    The adapters of a curriculum on its [`~peft.PeftModel`], carried from stage to stage by one transition.

    The trainable adapter is always PEFT's `"default"` (so that the Trainer's checkpointing and best-model loading work
    unchanged); in stack mode the finished stages are one frozen adapter beside it ([`FROZEN_ADAPTER`]).

    Args:
        model ([`~peft.PeftModel`]): The model, holding the first stage's adapter as `"default"`.
        transition (`str`): The resolved transition, `"merge"`, `"fp32_merge"` or `"stack"`.
        peft_config ([`~peft.LoraConfig`]): The user's LoRA settings; each stage takes its rank and alpha.
        is_quantized (`bool`): Whether the base is 4-bit or 8-bit (adapters then train in bf16, as in `SFTTrainer`).
        autocast_adapter_dtype (`bool`): PEFT's `autocast_adapter_dtype` for new trainable adapters, as `SFTTrainer`
            creates the first one.
    """

    def __init__(
        self, model: PeftModel, transition: str, peft_config: LoraConfig, is_quantized: bool, autocast_adapter_dtype
    ):
        self.model = model
        self.transition = transition
        self.peft_config = peft_config
        self.is_quantized = is_quantized
        self.autocast_adapter_dtype = autocast_adapter_dtype
        # The dtype each targeted base weight came in: `fp32_merge` upcasts them, `install_combined` restores it.
        self.base_weight_dtypes = {
            name: layer.get_base_layer().weight.dtype for name, layer in named_lora_layers(model)
        }
        self.stage_index = 0  # the stage whose adapter is the trainable "default"

    @property
    def frozen(self) -> list[str]:
        """The frozen adapter that carries the finished stages (stack mode, from stage 2 on), else none."""
        return [FROZEN_ADAPTER] if FROZEN_ADAPTER in self.model.peft_config else []

    def advance(self, finished: Stage, stage: Stage) -> float | None:
        """
        Retire the finished stage's adapter and add `stage`'s fresh one. Returns the share of the finished update that
        a merge rounded away (merge modes), else `None`.
        """
        lost = self.retire(finished)
        self.add(stage)
        return lost

    def retire(self, finished: Stage) -> float | None:
        """Merge the trainable adapter into the base weights (merge modes) or fold it into the frozen one (stack)."""
        if self.transition not in MERGE_TRANSITIONS:
            fuse_into_frozen(self.model)
            return None
        if self.transition == "fp32_merge":
            upcast_base_weights(self.model)  # once: later calls find the weights in fp32 already
        lost = merge_adapter_into_base(self.model)
        if lost > MERGE_LOSS_WARNING_THRESHOLD:
            dtypes = sorted({str(layer.get_base_layer().weight.dtype) for layer in lora_layers(self.model)})
            logger.warning(
                f"Merging stage {finished.number}'s adapter into the {', '.join(dtypes)} base weights rounded away "
                f"{lost:.0%} of its update (norm of the lost part / norm of the update): the model that trains on "
                "no longer has what that stage learned, though its saved adapter does. Set "
                "`adapter_transition='auto'` (or 'stack') to keep finished adapters exact beside the new one, or load "
                "the base in float32 to merge exactly."
            )
        return lost

    def add(self, stage: Stage) -> None:
        """Add `stage`'s fresh adapter as the only trainable one (PEFT starts it at B = 0: the function is unchanged)."""
        add_stage_adapter(
            self.model,
            stage_lora_config(self.peft_config, stage),
            frozen_adapters=self.frozen,
            autocast_adapter_dtype=self.autocast_adapter_dtype,
        )
        cast_adapter_like_sft(self.model, self.is_quantized)
        self.stage_index = stage.index

    def restore(self, stages: list[Stage], output_dir: str, stage_index: int) -> None:
        """
        For a resume at the stage of index `stage_index`: rebuild what every earlier stage learned from its saved
        adapter in `output_dir/stage-{k}`, by the same transition as in the original run (merged again, or fused again
        bit for bit), then add that stage's adapter. (The merge rounding losses are in the checkpoint's summaries.)
        """
        if stage_index == 0:
            return
        self.model.delete_adapter(DEFAULT_ADAPTER)
        for finished in stages[:stage_index]:
            path = stage_dir(output_dir, finished.number)
            if not os.path.isfile(os.path.join(path, ADAPTER_WEIGHTS_NAME)):
                raise ValueError(
                    f"Cannot resume at stage {stage_index + 1}: the adapter of finished stage {finished.number} is "
                    f"missing from {path}. Resume with the `output_dir` of the run that wrote the checkpoint."
                )
            self.model.load_adapter(path, adapter_name=DEFAULT_ADAPTER)
            self.retire(finished)
        self.add(stages[stage_index])

    def save_trainable(self, output_dir: str, engine: str | None, should_save: bool) -> None:
        """
        Save the trainable adapter alone, as a standard PEFT adapter, to `output_dir` (atomically, if `should_save`).

        Under DeepSpeed only the adapter's weights are gathered (the optimizer's fp32 master weights in a bf16/fp16
        run), whatever `stage3_gather_16bit_weights_on_model_save` says: a collective call, made on every rank. Under
        FSDP the adapter, replicated on every rank (`trl_plrs.fsdp`), is read alone: the model's own `state_dict`
        would hold the sharded base.
        """
        state_dict = None
        if engine is not None:
            state_dict = adapter_state_dict(self.model, DEFAULT_ADAPTER, deepspeed_enabled=engine == "DeepSpeed")
        if should_save:
            with atomic_path(output_dir) as tmp:
                self.model.save_pretrained(tmp, state_dict=state_dict, selected_adapters=[DEFAULT_ADAPTER])

    def reload_trainable(self, checkpoint: str) -> None:
        """Load the trainable `"default"` adapter's weights from `checkpoint` (stack mode, where it sits at the root)."""
        if self.frozen and os.path.isfile(os.path.join(checkpoint, ADAPTER_WEIGHTS_NAME)):
            self.model.load_adapter(checkpoint, adapter_name=DEFAULT_ADAPTER, is_trainable=True)

    def activate(self) -> None:
        """Activate the trainable adapter and the frozen one (stack mode; a no-op in merge mode)."""
        frozen = self.frozen
        if not frozen:
            return
        # A checkpoint written before the stages were fused holds one frozen adapter per stage (`stage_{k}`): their
        # sum is `frozen_stages` already, rebuilt from the stage folders.
        for name in [name for name in self.model.peft_config if name not in (DEFAULT_ADAPTER, *frozen)]:
            self.model.delete_adapter(name)
        activate_stage_adapters(self.model, frozen)

    def install_combined(self, adapter_dir: str) -> None:
        """
        Make the model the original base with the combined adapter saved in `adapter_dir` as its only adapter,
        `"default"`. The model's function is unchanged: in merge mode the merged stages are first subtracted from the
        base weights (in fp32, fp64 on a float64 model; weights upcast by `fp32_merge` return to their dtype), so the base ends as it began, up
        to float rounding: the inverse of [`retire`]'s merges.
        """
        model = self.model
        model.load_adapter(adapter_dir, adapter_name=COMBINED_ADAPTER)
        if self.transition in MERGE_TRANSITIONS:
            for name, layer in named_lora_layers(model):
                if COMBINED_ADAPTER not in layer.lora_A:
                    continue
                weight = layer.get_base_layer().weight
                dtype = torch.promote_types(weight.dtype, torch.float32)  # fp32, or fp64 on a float64 model
                with torch.no_grad():
                    merged = layer.get_delta_weight(COMBINED_ADAPTER).to(dtype)
                    if DEFAULT_ADAPTER in layer.lora_A:  # the last stage's adapter is live, not merged
                        merged -= layer.get_delta_weight(DEFAULT_ADAPTER).to(dtype)
                    restored = weight.data.to(dtype) - merged
                    weight.data = restored.to(self.base_weight_dtypes.get(name, weight.dtype))
        model.set_adapter(COMBINED_ADAPTER)  # deleting the active adapter would make PEFT warn that it switched
        for name in [name for name in model.peft_config if name != COMBINED_ADAPTER]:
            model.delete_adapter(name)
        model.load_adapter(adapter_dir, adapter_name=DEFAULT_ADAPTER)
        model.set_adapter(DEFAULT_ADAPTER)
        model.delete_adapter(COMBINED_ADAPTER)


def export_combined_adapter(
    stage_dirs: list[str], output_dir: str, processing_class, extra_files: dict[str, Callable[[str], object]]
) -> None:
    """
    Write to `output_dir` the combined adapter of the stage adapters in `stage_dirs`
    ([`~trl_plrs.adapters.concatenate_lora_adapters`]), the tokenizer, and each of `extra_files` (`name: write(path)`).
    Everything is written whole in a staging folder, then installed with the adapter config last: a crash leaves the
    previous adapter or none, never new weights beside an old config.
    """
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".final-adapter-", suffix=".tmp", dir=output_dir) as staging:
        concatenate_lora_adapters(stage_dirs, staging)
        processing_class.save_pretrained(staging)
        for name, write in extra_files.items():
            write(os.path.join(staging, name))
        install_files(staging, output_dir, entry_point=ADAPTER_CONFIG_NAME)


# Checks of the LoRA settings --------------------------------------------------------------------------------------


def check_peft_config(model, peft_config, args) -> str:
    """
    Check what the stages train and return its kind: `"lora"` (a fresh LoRA adapter per stage, shrinking ranks),
    `"peft"` (one adapter of another PEFT method, or of a ready `PeftModel`, carried through every stage) or `"full"`
    (the model's own parameters, without `peft_config`).
    """
    # (`accelerate.utils.is_peft_model` would import DeepSpeed, which logs 'Setting accelerator to CPU', to unwrap an
    # engine that a model passed to `__init__` cannot be.)
    if isinstance(model, PeftModel):
        if peft_config is not None:
            raise ValueError(
                "`model` is already a `PeftModel` and a `peft_config` was passed too. Pass the `PeftModel` alone to "
                "carry its adapter through every stage, or its base (`model.get_base_model()`, after "
                "`merge_and_unload()` to keep what it learned) with a `LoraConfig` for a fresh adapter per stage."
            )
        return _carried("peft", args)
    if peft_config is None:
        return _carried("full", args)
    if not isinstance(peft_config, PeftConfig):
        raise ValueError(
            f"`peft_config` must be a `peft.PeftConfig` (e.g. a `LoraConfig`) or None, but the value passed is "
            f"{peft_config!r}."
        )
    if not isinstance(peft_config, LoraConfig):
        return _carried("peft", args)
    if peft_config.init_lora_weights not in EXACT_LORA_INITS:
        raise ValueError(
            f"`peft_config.init_lora_weights` is {peft_config.init_lora_weights!r}, which does not start a new adapter "
            "at B = 0 on unchanged base weights (PiSSA, OLoRA, LoftQ and CorDA rewrite the base weights, `False` and "
            "'orthogonal' start with B != 0): every stage transition would change the model and the exported adapter "
            "would not reproduce it. Use `init_lora_weights=True` (the default) or 'gaussian'."
        )
    unsupported = {
        "use_dora": peft_config.use_dora,
        "rank_pattern": peft_config.rank_pattern,
        "alpha_pattern": peft_config.alpha_pattern,
        "modules_to_save": peft_config.modules_to_save,
        "lora_bias": peft_config.lora_bias,
        "trainable_token_indices": peft_config.trainable_token_indices,
        # LoRA on raw parameters (mixture-of-experts weights, e.g. GPT-OSS's `experts.gate_up_proj`): PEFT's
        # `ParamWrapper` has no `weight` to merge into, and its delta is not a per-layer A/B that the stack can fuse.
        "target_parameters": getattr(peft_config, "target_parameters", None),
    }
    for name, value in unsupported.items():
        if value:
            raise ValueError(
                f"`peft_config.{name}` is not supported by `CurriculumSFTTrainer` (value passed: {value!r}): stage "
                "adapters must be plain LoRA A/B matrices of one rank so that they can be merged and concatenated. "
                f"Unset `{name}`."
            )
    return "lora"


def _carried(kind: str, args) -> str:
    """Full fine-tuning or one carried PEFT adapter: no rank schedule applies, and one that is asked for is refused."""
    what = "full fine-tuning (no `peft_config`)" if kind == "full" else "an adapter carried through every stage"
    if args.lora_ranks is not None:
        raise ValueError(
            f"`lora_ranks` is {args.lora_ranks}, but with {what} no stage trains a fresh LoRA adapter, so there is no "
            "rank to give. Pass `peft_config=LoraConfig(...)` for Progressive LoRA Rank Shrinking, or unset "
            "`lora_ranks`."
        )
    preset = PRESETS.get(args.plrs_preset) if args.plrs_preset is not None else None
    if preset is not None and len(set(preset.lora_ranks)) > 1:
        raise ValueError(
            f"`plrs_preset={args.plrs_preset!r}` shrinks the LoRA rank from stage to stage, but with {what} no stage "
            "trains a fresh LoRA adapter. Pass `peft_config=LoraConfig(...)`, or use a preset of one rank "
            "('direct', 'seq_no_replay', 'seq_full_replay'), whose stages and replay apply."
        )
    return kind


def check_first_stage_adapter(config: LoraConfig) -> None:
    """Refuse what `SFTTrainer` added to the first stage's LoRA config and the stages could not carry."""
    added = {
        name: getattr(config, name) for name in ("modules_to_save", "trainable_token_indices") if getattr(config, name)
    }
    if added:
        raise ValueError(
            f"`SFTTrainer` made {added} trainable beside the first stage's LoRA adapter, because the tokenizer gained "
            "tokens (e.g. from `chat_template_path`). Full embedding rows and modules cannot be carried across stages "
            "or into the combined LoRA adapter. Use a chat template that adds no tokens (the model's own, or one "
            "written with its existing special tokens), or add the tokens and train their embeddings before the "
            "curriculum."
        )


def check_lora_targets(layers, peft_config: LoraConfig) -> None:
    """Refuse LoRA targets whose adapters cannot be carried across stages exactly."""
    # A quantized base keeps its `Linear4bit`/`Linear8bitLt`, subclasses of `nn.Linear`.
    unsupported = sorted(
        {
            type(layer.get_base_layer()).__name__
            for layer in layers
            if not isinstance(layer.get_base_layer(), nn.Linear)
        }
    )
    if unsupported:
        raise ValueError(
            f"`peft_config.target_modules` ({peft_config.target_modules!r}) targets layers of type {unsupported} (e.g. "
            "`embed_tokens`): their LoRA adapters cannot be carried across stages exactly. Target the linear "
            "projections only, e.g. `target_modules='all-linear'` (which leaves out `lm_head`)."
        )


def linear_module_names(model: nn.Module | str, args=None) -> list[str]:
    """
    The names (last part) of the linear layers of `model`, which `LoraConfig.target_modules` may name. A hub id or
    path is built on the meta device from its config: no weights are loaded.
    """
    if isinstance(model, str):
        from transformers import AutoConfig, AutoModelForCausalLM

        trust = bool(getattr(args, "trust_remote_code", False))
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def unmatched_targets_error(model: nn.Module | str, peft_config: LoraConfig, args) -> ValueError:
    """The error for `target_modules` that match no layer of `model`, listing the names that would."""
    try:
        names = linear_module_names(model, args)
        found = f"Its linear layers are named {names}"
    except Exception:  # the names are a hint: a model that cannot be built on the meta device goes without it
        found = "List its layers with `model.named_modules()`"
    return ValueError(
        f"`peft_config.target_modules` ({peft_config.target_modules!r}, `--lora_target_modules` on the command line) "
        f"matches no layer of the model. {found}; name some of them (e.g. `q_proj v_proj`), or use 'all-linear'."
    )
