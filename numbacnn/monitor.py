"""What training watches on the validation set after each epoch, as Keras's callbacks and PyTorch's schedulers do:

- patience (Keras's EarlyStopping): stop after N epochs in a row without a better validation accuracy; the best
  epoch is kept as always. The count needs nothing but the best epoch, which the run state already keeps.
- the plateau schedule (ReduceLROnPlateau): the learning rate stays where it is while the validation loss keeps
  falling, and is multiplied by a factor after N epochs in a row without a lower one. Its counters (the scale of
  the rate, the lowest loss, the epochs since) live in the run state, so a resumed run goes on exactly as the
  run that never stopped.
"""

from __future__ import annotations

from .errors import SpecError


def check_monitoring(schedule: str, patience: int | None, has_validation: bool, plateau_factor: float,
                     plateau_patience: int, *, plateau_given: bool = False) -> None:
    """A ``SpecError`` in one sentence for patience or plateau settings that cannot work."""
    if patience is not None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience <= 0:
            raise SpecError(f"--patience is a number of epochs, 1 or more; got {patience!r}.")
        if not has_validation:
            raise SpecError("--patience waits for a better validation accuracy, which needs a validation set; keep "
                            "--validation above 0.")
    if schedule != "plateau":
        if plateau_given:
            raise SpecError("--plateau-factor and --plateau-patience belong to --schedule plateau; add it, or leave "
                            "them out.")
        return
    if not has_validation:
        raise SpecError("--schedule plateau lowers the rate when the validation loss stops falling, which needs a "
                        "validation set; keep --validation above 0, or choose another schedule.")
    if isinstance(plateau_factor, bool) or not isinstance(plateau_factor, (int, float)) or not 0 < plateau_factor < 1:
        raise SpecError(f"--plateau-factor multiplies the rate on a plateau, so it must be between 0 and 1 (not "
                        f"including either), such as 0.1; got {plateau_factor!r}.")
    if isinstance(plateau_patience, bool) or not isinstance(plateau_patience, int) or plateau_patience <= 0:
        raise SpecError(f"--plateau-patience is a number of epochs, 1 or more; got {plateau_patience!r}.")


def out_of_patience(epoch: int, best_epoch: int | None, patience: int | None) -> bool:
    """Whether ``patience`` epochs have passed since the best one, after ``epoch`` has been judged."""
    return patience is not None and best_epoch is not None and epoch - best_epoch >= patience


def plateau_update(run, val_loss: float, factor: float, patience: int) -> bool:
    """After an epoch whose validation loss is ``val_loss``: notes a new lowest loss, or one more epoch without
    one, and after ``patience`` of those multiplies ``run.lr_scale`` by ``factor`` and starts counting again.
    ``run``: the ``RunState`` (its ``lr_scale``, ``plateau_best`` and ``plateau_wait``). Returns whether the rate
    was lowered."""
    if run.plateau_best is None or val_loss < run.plateau_best:
        run.plateau_best, run.plateau_wait = val_loss, 0
        return False
    run.plateau_wait += 1
    if run.plateau_wait < patience:
        return False
    run.lr_scale *= factor
    run.plateau_wait = 0
    return True
