"""Trains a registration model: ``python train.py --config configs/<name>.py --workdir W``.

Flags: ``--config path.py[:arg]`` (an ml_collections config file), any
``--config.section.field=value`` override, ``--workdir`` (created if missing; a workdir with
checkpoints resumes). All logic lives in ``jaxreg.training``.
"""

from absl import app, flags
from ml_collections import config_flags

from jaxreg._cli import parse_flags, run_main

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/voxelmorph_demo.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run: config, checkpoints, logs.")
flags.mark_flags_as_required(["config", "workdir"])


@run_main
def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; use --config, --config.x.y=v and --workdir.")
    # Imported after flag parsing, so --help and flag errors stay fast.
    from jaxreg.training import train_and_evaluate

    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
