"""A run's working directory: the config it was started with, and where things go.

``W/config.json`` (the full config, overrides applied), ``W/checkpoints/``,
``W/metrics.jsonl``, ``W/tensorboard/`` and ``W/eval/<split>/``. Saving the config makes
``eval.py --workdir W`` and a resumed ``train.py`` need nothing but the folder.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from jaxreg.io import atomic_path

__all__ = ["CONFIG_FILE", "INFERENCE_SECTIONS", "SAVED_DEFAULTS", "apply_overrides", "check_resume", "load_config",
           "save_config"]

CONFIG_FILE = "config.json"
#: Config sections read only at inference, where an override may add a field.
INFERENCE_SECTIONS = ("eval", "diffusion.sampler")
#: Fields whose default changed after runs were saved without them: ``(model.name, section,
#: field)`` → the value that reproduces those runs. :func:`load_config` fills them into a
#: saved config that lacks them (the parameter trees are the same either way, so a checkpoint
#: would otherwise restore silently into the other network).
SAVED_DEFAULTS = {
    ("diffusereg", "model", "image_tokens"): "output",  # before the option: image tokens leaving each image block
}


def save_config(config: ml_collections.ConfigDict, workdir) -> Path:
    """Writes ``config`` to ``W/config.json`` (atomically) and returns the path."""
    path = Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(config.to_json_best_effort(indent=2, sort_keys=False) + "\n")
    return path


def load_config(workdir) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was trained with.

    Raises:
      FileNotFoundError: ``workdir`` or its ``config.json`` does not exist.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"--workdir {str(workdir)!r} does not exist; train first: "
                                f"python train.py --config configs/<name>.py --workdir {workdir}")
    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {str(workdir)!r} is not a jaxreg training workdir.")
    return _with_saved_defaults(ml_collections.ConfigDict(json.loads(path.read_text())))


def _with_saved_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with the :data:`SAVED_DEFAULTS` of its model filled where it lacks them."""
    name = (config.get("model") or {}).get("name")
    for (model, section, field), value in SAVED_DEFAULTS.items():
        if model == name and section in config and field not in config[section]:
            config[section][field] = value
    return config


def check_resume(config: ml_collections.ConfigDict, workdir) -> None:
    """Refuses to resume the checkpoints in ``workdir`` with a :data:`SAVED_DEFAULTS` field changed.

    Call it before the new config overwrites ``W/config.json``: such a field changes the
    network but not its parameters, so a checkpoint would load into another network without
    an error. A workdir without checkpoints (``W/checkpoints/<step>``) passes.

    Raises:
      ValueError: ``config`` sets such a field to another value than the saved run has.
    """
    workdir = Path(workdir)
    steps = workdir / "checkpoints"
    if not (workdir / CONFIG_FILE).is_file() or not steps.is_dir() or not any(p.name.isdigit() for p in steps.iterdir()):
        return
    saved = load_config(workdir)
    name = (config.get("model") or {}).get("name")
    for (model, section, field), _ in SAVED_DEFAULTS.items():
        if model != name or section not in saved or field not in saved[section]:
            continue
        new = (config.get(section) or {}).get(field)
        if new != saved[section][field]:
            raise ValueError(f"{workdir} holds a run trained with {section}.{field}={saved[section][field]!r} and the "
                             f"config sets {new!r}; resume with --config.{section}.{field}={saved[section][field]} "
                             "or train in a new --workdir.")


def _parse_value(text: str):
    """A Python literal (number, bool, tuple, list, dict, None) or, failing that, the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``"section.field=value"`` overrides applied (as ``--config.section.field=value``).

    Fields must exist, except in the inference-time sections ``INFERENCE_SECTIONS`` (``eval``,
    ``diffusion.sampler``), whose settings may be newer than the run.

    Raises:
      ValueError: an override without ``=`` or naming a field the config does not have.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    for item in overrides or ():
        name, sep, text = str(item).partition("=")
        name = name.removeprefix("--").removeprefix("config.")
        if not sep or not name:
            raise ValueError(f"a config override must look like section.field=value; got {item!r}.")
        *parents, leaf = name.split(".")
        node = config
        for part in parents:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ValueError(f"override {item!r}: the run's config has no section {name.rsplit('.', 1)[0]!r}.")
            node = node[part]
        if leaf not in node and ".".join(parents) not in INFERENCE_SECTIONS:  # these may postdate the run
            raise ValueError(f"override {item!r}: the run's config has no field {name!r}.")
        value, current = _parse_value(text), node.get(leaf)
        if leaf in node and current is not None and (value is None or isinstance(value, bool) != isinstance(current, bool)):
            raise ValueError(f"override {item!r}: {name} is {type(current).__name__}; got {value!r}.")
        try:
            node[leaf] = value
        except TypeError as err:
            raise ValueError(f"override {item!r}: {err}") from None
    return config
