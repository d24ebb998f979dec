"""The LightningModule: classification training around any spiking backbone."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_glif.neurons.base import SpikingNeuron
from lightning_glif.training import tags
from lightning_glif.training.allowlist import check_checkpoint_classes, stored_hyperparameters
from lightning_glif.training.losses import MeanCrossEntropy, TemporalLoss


def accuracies(stage: str, num_classes: int) -> MetricCollection:
    """Top-1 accuracy ``<stage>/acc`` and, with more than 5 classes, top-5 ``<stage>/acc_top5``,
    over samples (``average="micro"``, not torchmetrics' mean over classes). No argument checks
    and no compute groups: both read values back to the host, a stall every step on a GPU."""
    metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(
            num_classes, top_k=5, average="micro", validate_args=False
        )
    return MetricCollection(metrics, prefix=f"{stage}/", compute_groups=False)


class SpikingClassifier(LightningModule):
    """Trains a spiking backbone for classification; the backbone is an argument, not a subclass.

    The backbone maps a batch to per-step logits ``[T, B, num_classes]``; :meth:`forward` averages
    them over T (the prediction). ``loss`` maps the per-step logits to the loss
    (:mod:`lightning_glif.training.losses`; by default the paper's cross-entropy of their time
    average). Logged per epoch (:mod:`lightning_glif.training.tags`): ``<stage>/loss``,
    ``<stage>/acc`` (top-1), ``<stage>/acc_top5`` with more than 5 classes, and ``val/acc_best``.

    The optimizer receives the groups of :meth:`parameter_groups`: ``weights``, ``neuron`` (the
    membrane constants) and ``gates``, each with its own learning rate (Lightning's
    ``LearningRateMonitor`` logs them as ``lr-SGD/weights``, ...).

    Args:
        backbone: the spiking network, e.g. a
            :class:`~lightning_glif.models.convnet.SpikingConvNet`; returns ``[T, B, K]``.
        num_classes: K; must match the backbone's output and the data.
        optimizer: factory called with the parameter groups. Default: the paper's SGD, lr 0.1,
            momentum 0.9, weight decay 4e-5.
        lr_scheduler: factory called with the optimizer. ``None``: the paper's cosine schedule
            from the initial learning rates to 0 over ``trainer.max_epochs`` epochs (or all the
            run's optimizer steps when ``lr_interval`` is ``"step"``).
        lr_interval: step the scheduler after every ``"epoch"`` (the paper) or every ``"step"``.
        gate_lr_factor: learning-rate factor of the gates (the paper: 0.1 on CIFAR, 1 on ImageNet).
        neuron_lr_factor: learning-rate factor of the membrane constants (the paper: 1).
        neuron_weight_decay: weight decay of the membrane constants and gates (the paper: 0).
        loss: a :class:`~lightning_glif.training.losses.TemporalLoss` of the per-step logits and the
            labels, e.g. ``TETLoss``. ``None``: the paper's ``MeanCrossEntropy``.
        compile: compile the backbone in place with ``torch.compile(fullgraph=True)``, one graph
            (the fused neuron op is a custom op), on the first batch and again for each input
            shape and for train vs eval; checkpoint keys are unchanged. Forward hooks (the
            monitors') are traced: a Python number they read that changes recompiles each step.

    ``SpikingClassifier.load_from_checkpoint(path)`` rebuilds the backbone of a checkpoint
    written under the CLI (one built in Python needs ``backbone=...`` again).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 10,
        optimizer: OptimizerCallable = lambda params: torch.optim.SGD(
            params, lr=0.1, momentum=0.9, weight_decay=4e-5
        ),
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_interval: Literal["epoch", "step"] = "epoch",
        gate_lr_factor: float = 0.1,
        neuron_lr_factor: float = 1.0,
        neuron_weight_decay: float = 0.0,
        loss: TemporalLoss | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # Under LightningCLI the hyperparameters are the resolved config (the backbone, optimizer,
        # scheduler and loss as class_path dicts): a checkpoint rebuilds the whole model. Built in
        # Python they are objects, which a checkpoint must not pickle: dropped.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Attribute '\w+' is an instance of `nn.Module`")
            self.save_hyperparameters()
        given = ("backbone", "optimizer", "lr_scheduler", "loss")
        objects = [k for k in given if not isinstance(self.hparams[k], dict | str | None)]
        if objects:
            self.save_hyperparameters(ignore=objects)
        if lr_interval not in ("epoch", "step"):
            raise ValueError(f"lr_interval must be 'epoch' or 'step', got {lr_interval!r}.")
        if num_classes < 1:
            raise ValueError(f"SpikingClassifier: num_classes must be >= 1, got {num_classes}.")
        for name, value, zero in (
            ("gate_lr_factor", gate_lr_factor, "freezes the gates"),
            ("neuron_lr_factor", neuron_lr_factor, "freezes the membrane parameters"),
            ("neuron_weight_decay", neuron_weight_decay, "no decay"),
        ):
            if not value >= 0:  # NaN too; a negative rate would climb the loss (gradient ascent)
                raise ValueError(
                    f"SpikingClassifier: {name} must be >= 0 (0: {zero}), got {value}."
                )
        self.backbone = backbone
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_interval = lr_interval
        self.gate_lr_factor = gate_lr_factor
        self.neuron_lr_factor = neuron_lr_factor
        self.neuron_weight_decay = neuron_weight_decay
        self.loss = MeanCrossEntropy() if loss is None else loss
        self.compile_backbone = bool(compile)
        if self.compile_backbone:
            # In place: torch.compile(backbone) would prefix the state_dict keys (_orig_mod.).
            self.backbone.compile(fullgraph=True)
        # Per stage, the mean loss (weighted by batch size) and the accuracies: counted on the
        # device every step, computed (summed over the DDP ranks) and reset per epoch.
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
            setattr(self, f"{stage}_acc", accuracies(stage, num_classes))
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in the checkpoint: a resumed run keeps its best

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        *,
        trusted_classes: Iterable[str] = (),
        **kwargs: Any,
    ) -> SpikingClassifier:
        """Lightning's ``load_from_checkpoint``, after checking the class paths of the stored
        config against an allow-list (before anything is imported: an import runs the module's
        code): ``lightning_glif``, ``torch``, ``pytorch_lightning`` and ``trusted_classes``
        (class paths or packages: ``["mypkg.models.Net"]``, ``["mypkg"]``). An argument given
        here (``backbone=...``) replaces the stored one and is not checked.
        ``weights_only=False`` unpickles arbitrary objects (any code): it warns."""
        if weights_only is False:
            warnings.warn(
                f"weights_only=False: loading {checkpoint_path} unpickles arbitrary objects, which "
                "runs any code the file holds: use it only for a checkpoint you made or trust.",
                stacklevel=2,
            )
        if hasattr(checkpoint_path, "read") and not hasattr(checkpoint_path, "seek"):
            checkpoint_path = io.BytesIO(checkpoint_path.read())  # read twice: once to check
        if hparams_file is None:
            stored = stored_hyperparameters(checkpoint_path, weights_only)
        else:  # Lightning replaces the stored config with the file's
            stored = yaml.safe_load(Path(hparams_file).read_text()) or {}
        where = f"'{checkpoint_path}'" if isinstance(checkpoint_path, str | Path) else "(a file)"
        check_checkpoint_classes(
            {k: v for k, v in stored.items() if k not in kwargs},
            where,
            allowed=trusted_classes,
            how_to_allow=": SpikingClassifier.load_from_checkpoint(path, "
            "trusted_classes=[<class path or package>]), or pass the object itself "
            "(backbone=...)",
        )
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
        )

    def update_metrics(
        self, stage: str, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> None:
        """Count a batch's mean ``loss``, ``logits`` ``[B, K]`` and labels ``y`` ``[B]``."""
        # The batch mean once per sample (a view): batches weigh by their size (the weight
        # argument is ignored with nan_strategy="disable", which spares a host read per step).
        getattr(self, f"{stage}_loss").update(loss.detach().expand(y.shape[0]))
        getattr(self, f"{stage}_acc").update(logits.detach(), y)

    def log_epoch(self, stage: str) -> bool:
        """Log the stage's loss and accuracies as metric objects, once at the end of the epoch
        (Lightning computes them over the DDP ranks and resets them); False if no batch ran."""
        loss, accuracy = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        if not loss.update_called:
            return False
        epoch = {"on_step": False, "on_epoch": True}
        self.log(tags.metric(stage, "loss"), loss, prog_bar=stage == "train", **epoch)
        self.log_dict(accuracy, prog_bar=stage == "val", **epoch)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits averaged over time, ``[B, num_classes]``."""
        return self.per_step_logits(x).mean(0)

    def per_step_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's class logits of every step, ``[T, B, num_classes]``."""
        try:
            logits = self.backbone(x)
        except (ValueError, RuntimeError) as error:
            # A shape error (ours, or torch's from a conv/linear): say which layer.
            layer = self._raising_layer(error)
            if type(error) not in (ValueError, RuntimeError) or layer is None:
                raise
            raise type(error)(f"layer {layer}: {error}") from error
        if logits.dim() != 3 or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"the backbone {type(self.backbone).__name__} must return per-step logits "
                f"[T, B, num_classes={self.num_classes}], got shape {tuple(logits.shape)}; check "
                "that model.num_classes and the backbone's num_classes agree."
            )
        return logits

    def _raising_layer(self, error: BaseException) -> str | None:
        """The innermost submodule whose code raised ``error``, from the traceback (no hooks)."""
        names = {id(m): n for n, m in self.named_modules() if m is not self}
        layer, tb = None, error.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if owner is not None and id(owner) in names:
                layer = f"'{names[id(owner)]}' ({type(owner).__name__})"
            tb = tb.tb_next
        return layer

    def _step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss, the time-averaged logits and the labels."""
        x, y = batch
        per_step = self.per_step_logits(x)
        return self.loss(per_step, y), per_step.mean(0), y

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, logits, y = self._step(batch)
        self.update_metrics("train", loss, logits, y)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_epoch("train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.update_metrics("val", *self._step(batch))

    def on_validation_epoch_end(self) -> None:
        logged = self.log_epoch("val")
        # The best of the training run: not the sanity check's untrained model, not `validate`.
        fitting = self.trainer.state.fn == TrainerFn.FITTING
        if logged and fitting and not self.trainer.sanity_checking:
            self.val_acc_best.update(self.val_acc["acc"].compute())
            self.log(tags.best("val", "acc"), self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.update_metrics("test", *self._step(batch))

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Time-averaged logits ``[B, num_classes]`` of a batch ``x`` or ``(x, y)``."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ValueError(
                f"the data has {data_classes} classes but the model was built for "
                f"num_classes={self.num_classes}: build the model and its backbone with "
                f"num_classes={data_classes} (the CLI copies it from the data)."
            )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, empty ones and frozen parameters left out: ``gates``,
        what a :class:`SpikingNeuron` yields from ``gate_parameters()``; ``neuron``, what one
        yields from ``membrane_parameters()``; ``weights``, the rest (a recurrent weight inside a
        neuron included). ``neuron`` and ``gates`` carry an ``lr_factor`` for
        :meth:`configure_optimizers`."""
        gates: set[int] = set()
        membrane: set[int] = set()
        for module in self.modules():
            if isinstance(module, SpikingNeuron):
                gates.update(id(p) for p in module.gate_parameters())
                membrane.update(id(p) for p in module.membrane_parameters())
        decay = self.neuron_weight_decay
        groups = {
            "weights": {},
            "neuron": {"weight_decay": decay, "lr_factor": self.neuron_lr_factor},
            "gates": {"weight_decay": decay, "lr_factor": self.gate_lr_factor},
        }
        members: dict[str, list[nn.Parameter]] = {name: [] for name in groups}
        for p in self.parameters():
            if p.requires_grad:
                name = "gates" if id(p) in gates else "neuron" if id(p) in membrane else "weights"
                members[name].append(p)
        return [
            {"name": name, "params": members[name], **options}
            for name, options in groups.items()
            if members[name]
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            # Before the scheduler exists: it takes each group's current lr as its initial lr.
            group["lr"] = group["lr"] * group.pop("lr_factor", 1.0)
        scheduler = (self.lr_scheduler_factory or self.cosine_schedule)(optimizer)
        schedule = {"scheduler": scheduler, "interval": self.lr_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            schedule["monitor"] = tags.metric("val", "loss")
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def cosine_schedule(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The default schedule: cosine from the initial rates to 0 over the whole run."""
        if self.lr_interval == "step":
            length = self.trainer.estimated_stepping_batches
            if length == float("inf"):
                raise ValueError(
                    "the default cosine schedule needs a finite run: set trainer.max_epochs or "
                    "trainer.max_steps, or give model.lr_scheduler."
                )
        else:
            length = self.trainer.max_epochs
            if length is None or length < 0:
                raise ValueError(
                    "the default cosine schedule runs over trainer.max_epochs, which is not set: "
                    "set it, use model.lr_interval=step with trainer.max_steps, or give "
                    "model.lr_scheduler."
                )
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, int(length)), 0.0)
