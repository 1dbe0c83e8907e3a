"""Evaluates a trained run: ``python eval.py --workdir W [--split test] [--step latest|best|N]``.

Writes ``W/eval/<split>/``: metrics.json, per_pair.csv, summary.md, figures/ (and disp/
with ``--save_disp``). Everything else comes from the config saved in ``W``. All logic lives
in ``jaxreg.evaluation``.
"""

from absl import app, flags

from jaxreg._cli import parse_flags, run_main

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a run trained with train.py.")
_SPLIT = flags.DEFINE_enum("split", None, ["train", "val", "test"], "Split to evaluate (default: config.eval.split).")
_STEP = flags.DEFINE_string("step", None, "Checkpoint: latest, best or a step number (default: config.eval.step).")
_SAVE_DISP = flags.DEFINE_bool("save_disp", None, "Also write Learn2Reg displacement files (default: config.eval.save_disp).")
flags.mark_flag_as_required("workdir")


@run_main
def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; use --workdir, --split and --step.")
    # Imported after flag parsing, so --help and flag errors stay fast.
    from jaxreg.evaluation import evaluate_workdir

    result = evaluate_workdir(_WORKDIR.value, split=_SPLIT.value, step=_STEP.value, save_disp=_SAVE_DISP.value)
    print(f"wrote {result['out_dir']}: " + ", ".join(f"{k} {result['metrics'][k]:.4g}"
                                                      for k in ("dice", "dice_before", "tre", "folding", "sdlogj")
                                                      if result["metrics"].get(k) is not None))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
