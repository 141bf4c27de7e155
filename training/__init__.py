"""lesionflow's training side (the only package that imports torch).

* :mod:`training.config` — :class:`TrainConfig`: every training knob, validated, hashed, stored in ``model.json``
* :mod:`training.data` — class-balanced patch sampling from the store (patch index + Zarr slicing)
* :mod:`training.model` — the 3-D U-Net, built from the config's ``model``
* :mod:`training.losses` — the config's ``loss`` (Dice + cross-entropy)
* :mod:`training.loop` — :func:`train` (= :func:`setup`, :func:`train_step` × n, :func:`validate`,
  :func:`save_model`) → :class:`TrainResult` (checkpoint + metrics)
* :mod:`training.checkpoint` — ``<store>/models/<model_version>/{model.pt, model.json}``, :func:`load_model`
* :mod:`training.infer` — sliding-window :func:`predict_case`, :func:`score_cases` into the store

Device: CUDA when ``torch.cuda.is_available()``, else CPU, everywhere.
"""

from training.checkpoint import list_models, load_model, save_checkpoint
from training.config import TrainConfig
from training.infer import predict_case, score_cases
from training.loop import TrainResult, TrainState, save_model, setup, train, train_step, validate
from training.model import build_model, build_network, default_arch

__all__ = ["TrainConfig", "TrainResult", "TrainState", "build_model", "build_network", "default_arch", "list_models", "load_model",
           "predict_case", "save_checkpoint", "save_model", "score_cases", "setup", "train", "train_step", "validate"]
