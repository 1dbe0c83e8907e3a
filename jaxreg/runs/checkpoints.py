"""Checkpoints of the train state in ``W/checkpoints`` (orbax ``CheckpointManager``).

* saved every ``training.checkpoint_every`` steps and at the end, asynchronously (training
  continues while the previous state is written);
* kept: the last ``training.keep`` checkpoints and the best one by the validation metric
  ``training.best_metric`` (``training.best_mode`` ``"max"`` or ``"min"``);
* restored into an abstract target (shapes, dtypes and shardings of a freshly built state),
  so optimiser states come back as the same pytree types and land on the right devices.

Kill-safety comes from orbax: a checkpoint is written into a temporary folder that is
renamed only once complete, so a run killed while saving leaves the previous checkpoints
intact, and the unfinished folder is removed when the manager is opened again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from jaxreg import sharding

__all__ = ["Checkpoints", "abstract_like"]


def abstract_like(tree):
    """``ShapeDtypeStruct`` leaves with the shardings of ``tree``: the target of a restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class Checkpoints:
    """The checkpoints of one run.

    Args:
      directory: where they live (``W/checkpoints``).
      every: save when ``step % every == 0`` (and whenever ``force=True``).
      keep: how many of the latest checkpoints to keep.
      best_metric: name of a validation metric; the checkpoint with its best value is kept
        as well (``None``: only the latest).
      best_mode: ``"max"`` (e.g. Dice) or ``"min"`` (e.g. TRE).
      asynchronous: write in a background thread.
    """

    def __init__(self, directory, *, every: int, keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "max", asynchronous: bool = True):
        if every < 1 or keep < 1:
            raise ValueError(f"`training.checkpoint_every` and `training.keep` must be >= 1; got {every} and {keep}.")
        if best_mode not in ("max", "min"):
            raise ValueError(f"`training.best_mode` must be 'max' or 'min'; got {best_mode!r}.")
        self.every, self.best_metric = int(every), best_metric
        policies = [preservation_policy.LatestN(n=int(keep))]
        if best_metric:
            policies.append(preservation_policy.BestN(
                get_metric_fn=lambda metrics: metrics[best_metric], reverse=best_mode == "min", n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation_policy.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True, enable_async_checkpointing=asynchronous)
        self.directory = Path(directory).absolute()
        # The handler named here lets item_metadata read a checkpoint's tree without a template.
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=ocp.StandardCheckpointHandler())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint, or ``None``."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, *, metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
        """Saves ``state`` at ``step`` when due (or ``force``); returns whether it did.

        ``metrics`` (validation results) rank the checkpoint for ``best_metric``.
        """
        if not force and step % self.every:
            return False
        if step in self.manager.all_steps():
            return False
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            raise ValueError(f"`training.best_metric` {self.best_metric!r} is not a validation metric; "
                             f"have {sorted(metrics)}.")
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self.manager.save(int(step), args=ocp.args.StandardSave(state), metrics=metrics, force=True)

    def restore(self, target, *, step: int | None = None):
        """The state saved at ``step`` (default: the latest), shaped and placed like ``target``.

        Raises:
          FileNotFoundError: no such checkpoint.
        """
        return self.manager.restore(self._saved_step(step), args=ocp.args.StandardRestore(abstract_like(target)))

    def restore_replicated(self, mesh, *, step: int | None = None) -> dict:
        """The state saved at ``step`` (default: the latest) as a plain dict, every array replicated on ``mesh``.

        No template needed (so no training data, no optimiser): the tree, shapes and dtypes
        come from the checkpoint's own metadata. Enough for inference, whose parameters are
        plain dicts; optimiser states come back as plain containers, so resume with
        :meth:`restore`. Works whatever mesh or process count the run was trained on.

        Raises:
          FileNotFoundError: no such checkpoint.
        """
        step = self._saved_step(step)
        everywhere = sharding.replicated(mesh)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=everywhere),
                              self.manager.item_metadata(step).tree)
        return self.manager.restore(step, args=ocp.args.StandardRestore(target))

    def _saved_step(self, step: int | None) -> int:
        steps = self.all_steps()
        step = steps[-1] if step is None and steps else step
        if step is None or step not in steps:
            raise FileNotFoundError(f"no checkpoint at step {step} in {self.directory}; have steps {steps}.")
        return int(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
