"""What a training step computes and logs: the LightningModule, the losses of per-step logits,
the metric tag names, and the allow-list of classes a checkpoint may name."""
