"""Evaluates a trained run: ``python eval.py --workdir W [--split test] [--step latest|best|N]``.

Writes ``W/eval/<split>/``: metrics.json, per_pair.csv, summary.md, figures/ (and disp/
with ``--save_disp``). Everything else comes from the config saved in ``W``; any of it can
be changed for this evaluation with ``--config.section.field=value``, e.g. DiffuseReg's
sampler ``--config.diffusion.sampler.method=ddpm`` or ``--config.diffusion.sampler.steps=25``
(and ``--config.eval.name=ddim25`` to write ``W/eval/ddim25/``). A multi-process evaluation
takes the same ``--config.training.distributed=True`` (and coordinator) flags as ``train.py``;
without them eval.py runs in one process, whatever the run was trained with. All logic
lives in ``jaxreg.evaluation``.
"""

from absl import app, flags

from jaxreg._cli import parse_flags, run_main

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a run trained with train.py.")
_SPLIT = flags.DEFINE_enum("split", None, ["train", "val", "test"], "Split to evaluate (default: config.eval.split).")
_STEP = flags.DEFINE_string("step", None, "Checkpoint: latest, best or a step number (default: config.eval.step).")
_SAVE_DISP = flags.DEFINE_bool("save_disp", None, "Also write Learn2Reg displacement files (default: config.eval.save_disp).")
flags.mark_flag_as_required("workdir")
_OVERRIDES: list[str] = []


def _parse(argv: list[str]) -> list[str]:
    """absl parsing, with ``--config.x.y=v`` overrides of the saved config taken out first."""
    _OVERRIDES.extend(a for a in argv[1:] if a.startswith("--config."))
    return parse_flags([a for a in argv if not a.startswith("--config.")])


@run_main
def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; use --workdir, --split, --step and --config.x.y=v.")
    # Imported after flag parsing, so --help and flag errors stay fast.
    import jax

    from jaxreg.evaluation import evaluate_workdir

    result = evaluate_workdir(_WORKDIR.value, split=_SPLIT.value, step=_STEP.value, save_disp=_SAVE_DISP.value,
                              overrides=_OVERRIDES)
    if jax.process_index() != 0:  # in a multi-process evaluation process 0 writes and reports
        return
    print(f"wrote {result['out_dir']}: " + ", ".join(f"{k} {result['metrics'][k]:.4g}"
                                                      for k in ("dice", "dice_before", "tre", "folding", "sdlogj")
                                                      if result["metrics"].get(k) is not None))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
