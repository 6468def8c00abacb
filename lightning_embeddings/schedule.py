"""Which validations of a fit are recorded: the 1st, (n+1)-th, (2n+1)-th, ... epoch that validates (counting only
epochs in which validation runs, so ``check_val_every_n_epoch`` cannot leave a run empty) and the last one. Every
validation in a recorded epoch is recorded (``val_check_interval < 1`` gives several). Lightning-free: the
callback passes in what the ``Trainer`` knows; the count survives a resume through ``state_dict``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional


class Schedule:
    """The recording schedule of one fit.

    Example::

        schedule = Schedule(every_n_epochs=2)
        [schedule.due(epoch, max_epochs=5, every=1) for epoch in range(5)]  # [True, False, True, False, True]
    """

    def __init__(self, every_n_epochs: int) -> None:
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an int >= 1, got {every_n_epochs!r}.")
        self.every_n_epochs = every_n_epochs
        self.validations = 0  # epochs of this fit that validated so far
        self._epoch = -1  # the last of them

    def due(self, epoch: int, max_epochs: Optional[int], every: Optional[int]) -> bool:
        """Whether a validation in ``epoch`` is recorded (``every``: the trainer's ``check_val_every_n_epoch``)."""
        if epoch != self._epoch:
            self._epoch, self.validations = epoch, self.validations + 1
        return (self.validations - 1) % self.every_n_epochs == 0 or _last_validation(epoch, max_epochs, every)

    def state_dict(self) -> dict[str, int]:
        return {"validations": self.validations, "validated_epoch": self._epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.validations = state.get("validations", 0)
        self._epoch = state.get("validated_epoch", -1)


def _last_validation(epoch: int, max_epochs: Optional[int], every: Optional[int]) -> bool:
    """Whether ``epoch``'s validation is the last one ``max_epochs`` leaves."""
    if max_epochs is None or max_epochs < 1:
        return False
    return epoch + (every or 1) > max_epochs - 1
