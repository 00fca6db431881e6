"""`--tensorboard`: every column of every log.csv row, also as TensorBoard scalars.

The engine calls `write` where it writes log.csv (one row per epoch; the row's `step` is the
global step); the events go to OUT/tensorboard (`tensorboard --logdir OUT`). log.csv stays the
record of the run. Needs the `tensorboard` package (the extra `locallearn[tensorboard]`).
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError


class TensorBoardLog:
    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch needs the tensorboard package for its SummaryWriter
            raise UserError(f"--tensorboard needs the tensorboard package ({error}); install it with: "
                            "pip install tensorboard (or 'locallearn[tensorboard]')") from None
        self._summary_writer = SummaryWriter
        self._writer = None
        self._directory: Path | None = None

    def write(self, row: dict, directory: Path) -> None:
        """Every numeric column of `row` (columns starting with _ are not logged) at step row["step"]."""
        if self._writer is None or directory != self._directory:
            if self._writer is not None:
                self._writer.close()
            self._writer, self._directory = self._summary_writer(log_dir=str(directory)), directory
        for column, value in row.items():
            if not column.startswith("_") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(column, value, global_step=row["step"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
