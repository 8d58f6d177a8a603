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
Crash-safe files: atomic writes, and the curriculum state that a checkpoint carries beside the Trainer's own.

A write that a crash could tear goes to a temporary name in the same folder and is renamed over the target with
`os.replace`, which is atomic on POSIX and Windows: a reader sees the old file or the new one, never half of one.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils.logging import get_logger


logger = get_logger(__name__)

CURRICULUM_STATE_NAME = "curriculum_state.json"
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """
    Yield a temporary path beside `path`; once the block succeeds, rename it to `path` atomically.

    Works for a file or a folder. On failure the temporary path is removed and `path` is left as it was.

    >>> with atomic_path("out/summary.json") as tmp:  # doctest: +SKIP
    ...     write_json(tmp, summary)
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.rmdir(tmp)  # only the unique name is needed; the caller creates a file or a folder there
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            # A folder cannot be renamed over a non-empty folder: move the old one aside first.
            old = f"{tmp}.old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)


def install_files(staging_dir: str, target_dir: str, entry_point: str) -> None:
    """
    Move every file of `staging_dir` into `target_dir`, so that the set appears as a whole or not at all to a reader
    that opens `entry_point` first (e.g. `adapter_config.json`, which PEFT reads before the weights): the old
    `entry_point` is removed first and the new one moved last, so a crash in between leaves no `entry_point` at all,
    never a new file beside an old one. `staging_dir` must be on the same filesystem (e.g. inside `target_dir`).
    """
    names = sorted(os.listdir(staging_dir))
    if entry_point not in names:
        raise ValueError(f"{staging_dir!r} holds no {entry_point!r} to install.")
    old_entry = os.path.join(target_dir, entry_point)
    if os.path.exists(old_entry):
        os.remove(old_entry)
    for name in [*(name for name in names if name != entry_point), entry_point]:
        os.replace(os.path.join(staging_dir, name), os.path.join(target_dir, name))


def _is_staging_name(name: str) -> bool:
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".tmp.old"))


def remove_staging_leftovers(output_dir: str) -> list[str]:
    """
    Remove the temporary files and folders that an interrupted atomic write left in `output_dir` or one folder down
    (`.<name>.<random>.tmp`, `.<name>.<random>.tmp.old`, `.adapter-<random>.tmp`, `.final-adapter-<random>.tmp`).
    Returns their paths.
    """
    if not os.path.isdir(output_dir):
        return []
    subfolders = [
        os.path.join(output_dir, name)
        for name in os.listdir(output_dir)
        if not _is_staging_name(name) and os.path.isdir(os.path.join(output_dir, name))
    ]
    removed = []
    for folder in [output_dir, *subfolders]:
        for name in os.listdir(folder):
            if _is_staging_name(name):
                path = os.path.join(folder, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
                removed.append(path)
    return removed


def write_json_atomic(path: str, data) -> None:
    """Write `data` as JSON to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as file:
        json.dump(data, file, indent=2, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())


def read_json(path: str):
    with open(path) as file:
        return json.load(file)


def is_complete_checkpoint(checkpoint_dir: str) -> bool:
    """
    Whether a checkpoint was written to the end: the Trainer writes `trainer_state.json` after the model, optimizer
    and RNG states, and the curriculum state is written before them, so both files present means nothing was torn.
    """
    return all(
        os.path.isfile(os.path.join(checkpoint_dir, name)) for name in (TRAINER_STATE_NAME, CURRICULUM_STATE_NAME)
    )


def complete_checkpoints(output_dir: str) -> list[str]:
    """The checkpoints of `output_dir` that were written completely, oldest first; torn ones are skipped with a warning."""
    if not os.path.isdir(output_dir):
        return []
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT_PATTERN.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    complete = []
    for _, name in steps:
        checkpoint_dir = os.path.join(output_dir, name)
        if is_complete_checkpoint(checkpoint_dir):
            complete.append(checkpoint_dir)
        else:
            logger.warning(f"Skipping the incomplete checkpoint {checkpoint_dir} (interrupted while it was written).")
    return complete
