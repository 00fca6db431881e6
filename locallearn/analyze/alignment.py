"""`locallearn analyze alignment RUN...`: the cosine between gradient guess and global target per
block and epoch, one panel per block (Fournier et al. 2023, Figures 4-5), from the `train_align_m<k>`
columns that `fwdgrad --log-alignment` writes to log.csv."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError
from . import ANALYSES, Analysis, check_output, save_figure
from ..checkpointing import read_log
from .plot_log import log_number

COLUMN = re.compile(r"train_align_m(\d+)$")


def alignment_curves(directory: str | Path) -> dict[int, list[tuple[int, float]]]:
    """block -> [(epoch, mean cosine over the epoch's batches)] of one run."""
    rows = read_log(directory)
    blocks = sorted(int(m.group(1)) for c in (rows[0] if rows else {}) if (m := COLUMN.match(c)))
    if not blocks:
        raise UserError(f"{directory} has no train_align_m* columns; train it with fwdgrad --log-alignment")
    return {k: [(log_number(r.get("epoch"), "epoch", i + 1, directory),
                 log_number(r[f"train_align_m{k}"], f"train_align_m{k}", i + 1, directory))
                for i, r in enumerate(rows) if r.get(f"train_align_m{k}") not in ("", None)] for k in blocks}


@ANALYSES.register("alignment")
class Alignment(Analysis):
    help = "plot the guess/global-target cosine of fwdgrad runs per block (paper Figures 4-5)"

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("runs", nargs="+", help="run directories of fwdgrad trained with --log-alignment")
        parser.add_argument("--output", default="alignment.png", help="PNG file to write (default: alignment.png)")

    def run(self, args) -> int:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        output = check_output(args.output, image=True)
        curves = {run: alignment_curves(run) for run in args.runs}
        blocks = sorted({k for per_run in curves.values() for k in per_run})
        columns = min(4, len(blocks))
        rows = -(-len(blocks) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
        for ax, k in zip(axes.flat, blocks):
            for run, per_run in curves.items():
                if per_run.get(k):
                    ax.plot(*zip(*per_run[k]), marker=".", label=Path(run).name)
            ax.axhline(0.0, color="black", linewidth=0.5)
            ax.set_title(f"block {k + 1}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(blocks):]:
            ax.axis("off")
        axes.flat[0].set_ylabel("cos(guess, global target)", fontsize=8)
        axes.flat[0].legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, output)
        print(f"wrote {output} ({len(curves)} runs, {len(blocks)} blocks)")
        return 0
