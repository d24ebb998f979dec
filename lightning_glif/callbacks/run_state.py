"""What a checkpoint carries besides the training state: the RNG states, a line naming the model
and the values of the data it was trained on, with the check that a checkpoint fits the model it
is loaded into."""

from __future__ import annotations

import pickle
import random
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import nn

from lightning_glif.neurons.base import SpikingNeuron

#: Key of the model's description in the checkpoint dict (beside ``state_dict``).
DESCRIPTION_KEY = "model_description"
#: Key of the training data's class name and shared values (``{"data": name, "values": {...}}``).
DATA_KEY = "data_values"


# -- the RNG states --------------------------------------------------------------------------------
def rng_states() -> dict[str, Any]:
    """The torch, CUDA (when initialised), numpy and Python RNG states, as tensors, ints and
    strings only, so a checkpoint holding them still loads with ``weights_only=True``."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


# -- does a checkpoint fit a model -----------------------------------------------------------------
def describe_model(model: nn.Module) -> str:
    """``backbone X with neuron Y``: what a checkpoint's weights belong to."""
    backbone = getattr(model, "backbone", model)
    neurons = sorted({type(m).__name__ for m in model.modules() if isinstance(m, SpikingNeuron)})
    return f"backbone {type(backbone).__name__} with neuron {'/'.join(neurons) or 'none'}"


def describe_checkpoint(checkpoint: dict[str, Any]) -> str:
    """``backbone X with neuron Y``: as saved beside the weights, else from the config the CLI
    saved as hyperparameters."""
    if DESCRIPTION_KEY in checkpoint:
        return str(checkpoint[DESCRIPTION_KEY])
    backbone = checkpoint.get("hyper_parameters", {}).get("backbone")
    if not isinstance(backbone, dict):  # built in Python: the backbone was not saved
        return "a backbone built in Python (not recorded in the checkpoint)"
    neuron = backbone.get("init_args", {}).get("neuron")
    if isinstance(neuron, dict):
        neuron = neuron.get("class_path")
    name = str(backbone.get("class_path")).rsplit(".", 1)[-1]
    return f"backbone {name} with neuron {str(neuron).rsplit('.', 1)[-1]}"


def describe_checkpoint_file(path: Any) -> str:
    """:func:`describe_checkpoint` of the file at ``path``, memory-mapped (the weights are not
    read). Only used to word an error: a file it cannot open is "a model not recorded"."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        # A remote URL, a legacy (non-zip) file, pickled objects: the check itself still holds.
        return "a model not recorded in the checkpoint"
    return describe_checkpoint(checkpoint)


def weight_mismatches(
    model: nn.Module, state_dict: dict[str, Any], strict: bool = True
) -> list[str]:
    """What keeps ``state_dict`` from loading into ``model``, one summary line per kind (empty
    when it fits): keys missing or extra (when ``strict``), tensors of another shape (always:
    torch refuses those whatever ``strict``)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict] if strict else []
    unexpected = [k for k in state_dict if k not in own] if strict else []
    reshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != v.shape
    ]
    return [
        f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
        for keys, what in (
            (missing, "weights of this model missing from the checkpoint"),
            (unexpected, "weights in the checkpoint that this model lacks"),
            (reshaped, "weights of another shape, checkpoint vs model"),
        )
        if keys
    ]


def mismatch_error(model: nn.Module, made_with: str, problems: list[str]) -> RuntimeError:
    """The error for a checkpoint made with ``made_with`` (:func:`describe_checkpoint`) that
    does not fit ``model`` (``problems`` from :func:`weight_mismatches`): both models named, the
    problems summarised, not torch's wall of keys."""
    return RuntimeError(
        f"the checkpoint does not fit this model: it was made with {made_with}, this model is "
        f"{describe_model(model)}. {'; '.join(problems)}. Build the model as the checkpoint was "
        "built (the same backbone, neuron and widths): with the CLI, pass the run's config.yaml "
        "or drop the options that change them; in Python, "
        "SpikingClassifier.load_from_checkpoint(path)."
    )


class RunState(Callback):
    """Saves the RNG states and the model's description with every checkpoint; checks that a
    checkpoint fits the model before Lightning loads its weights.

    - ``state_dict()`` holds the torch, CUDA, numpy and Python RNG states, restored by
      ``load_state_dict()`` only when a fit resumes (``fit --ckpt_path``), so the resumed run
      draws what the uninterrupted one would have (the next epoch's shuffle above all); loading
      weights for evaluation leaves the RNGs alone. Lightning restores callback states after the
      weights and before the fit loop builds its first data iterator (``Trainer._run``), which is
      where the shuffle draws its seed.
    - ``on_save_checkpoint`` writes ``checkpoint["model_description"]`` (``backbone X with neuron
      Y``) and ``checkpoint["data_values"]``: the data module's class name and
      :meth:`~lightning_glif.data.base.SplitDataModule.shared_values` (the CLI compares them with
      the data of a command that loads the checkpoint, before anything runs). When a run loads
      ``ckpt_path`` (fit, validate, test, predict), the weights are checked before any is copied
      (:func:`weight_mismatches`): a checkpoint of another neuron, backbone or width is one
      error naming both models.

    The CLI adds it to every run; add it to ``Trainer(callbacks=...)`` in Python.
    """

    def __init__(self) -> None:
        self._fitting = False
        self._check: torch.utils.hooks.RemovableHandle | None = None
        self._trainer: Trainer | None = None

    # -- RNG states -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._fitting:
            set_rng_states(state_dict)

    # -- the model's description and the check ----------------------------------------------------
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[DESCRIPTION_KEY] = describe_model(pl_module)
        data = trainer.datamodule
        if hasattr(data, "shared_values"):
            checkpoint[DATA_KEY] = {"data": type(data).__name__, "values": data.shared_values()}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        # The path is not known yet: Lightning resolves ckpt_path ("last", "best", a file) and
        # sets trainer.ckpt_path only after setup, just before it loads the weights into the
        # module. So the check is a pre-hook of the module's load_state_dict; it runs before
        # torch copies any tensor.
        self._remove_check()
        self._check = pl_module.register_load_state_dict_pre_hook(self._check_restored_weights)
        self._trainer = trainer

    def _check_restored_weights(
        self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
    ) -> None:
        # Once: the restore from ckpt_path is the first load of a run; a later load_state_dict
        # is the user's own.
        self._remove_check()
        path = self._trainer.ckpt_path if self._trainer is not None else None
        if prefix or path is None:  # not Lightning restoring this module from a checkpoint
            return
        # torch passes strict=True to every pre-hook; Lightning loads with the module's own.
        problems = weight_mismatches(module, state_dict, strict=module.strict_loading)
        if problems:
            raise mismatch_error(module, describe_checkpoint_file(path), problems)

    def _remove_check(self) -> None:
        if self._check is not None:
            self._check.remove()
            self._check = None

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        # Lightning skips the teardown hooks after an exception (a mismatch among them).
        self._remove_check()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_check()
