"""Shared by the monitor tests: a tiny default-config fit with the monitors, and its events."""

from __future__ import annotations

from tensorboard.backend.event_processing import event_accumulator as ea

from lightning_glif.cli.main import cli_main

# The monitors as a user configures them, replacing conf/default.yaml's callbacks list.
MONITORS = """
trainer:
  callbacks:
    - class_path: lightning_glif.callbacks.GateMonitor
      init_args:
        every_n_steps: 2
        figure_every_n_epochs: 1  # images every epoch (the tests count them)
    - class_path: lightning_glif.callbacks.FiringRateMonitor
    - class_path: lightning_glif.callbacks.SynapticOpsMonitor
"""


def read_events(run_dir) -> ea.EventAccumulator:
    """Every scalar, histogram and image of the run directory (no sampling)."""
    keep_all = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0}
    events = ea.EventAccumulator(str(run_dir), size_guidance=keep_all)
    events.Reload()
    return events


def last_scalar(events: ea.EventAccumulator, tag: str) -> float:
    return events.Scalars(tag)[-1].value


def tiny_fit(root) -> tuple:
    """Two short epochs of the default run (small convnet) with the three monitors, configured
    from YAML as a user would; returns the CLI (its model is the trained one) and the run dir."""
    config = root / "monitors.yaml"
    config.write_text(MONITORS)
    cli = cli_main(
        [
            "fit", "--config", str(config),
            "--trainer.default_root_dir", str(root),
            "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "2",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--model.backbone.init_args.channels", "[8, 16]",
        ]
    )  # fmt: skip
    return cli, cli.trainer.log_dir
