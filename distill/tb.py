"""TensorBoard logging with tags equal to the CSV column names."""
from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

ROW_TAGS = ("params", "size_mb", "flops", "val_top1", "val_top5", "test_top1", "train_loss", "train_wall_s")


class TBLogger:
    """Per-epoch training curves (``<stage>/train_loss``) and per-step results (``val_top1`` by step).

    ``val_top1_vs_params`` uses the parameter count as its x axis, so TensorBoard draws the
    accuracy-vs-size curve of the run.
    """

    def __init__(self, logdir: str | Path):
        self.writer = SummaryWriter(str(logdir))

    def epoch_logger(self, stage: str):
        def log(epoch: int, metrics: dict) -> None:
            for key, value in metrics.items():
                if key.startswith("train_"):
                    self.writer.add_scalar(f"{stage}/{key}", value, epoch)
            self.writer.flush()
        return log

    def log_row(self, row: dict) -> None:
        for key in ROW_TAGS:
            if key in row:
                self.writer.add_scalar(key, row[key], row["step"])
        self.writer.add_scalar("val_top1_vs_params", row["val_top1"], int(row["params"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
