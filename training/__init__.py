"""lesionflow's training side (the only package that imports torch).

* :mod:`training.config` — :class:`TrainConfig`: every training knob, validated, hashed, stored in ``model.json``
* :mod:`training.data` — class-balanced patch sampling from the store (patch index + Zarr slicing)
* :mod:`training.slices` — cases held in memory, and axial slices for 2-D networks
* :mod:`training.plan` — patch and batch planned from the data and the device's memory (nnU-Net's rules)
* :mod:`training.model` — UNet, DynUNet, VNet, SegResNet in 3-D or 2-D, built from the config's ``model``
* :mod:`training.losses` — the config's ``loss`` (Dice+CE, Dice, Tversky, focal Tversky, focal, Dice+focal; deep supervision)
* :mod:`training.loop` — :func:`train` (= :func:`setup` or :func:`resume`, :func:`train_step` × n, :func:`validate`,
  :func:`save_model`) → :class:`TrainResult` (checkpoint + metrics); resumable runs in ``<store>/runs/``
* :mod:`training.checkpoint` — ``<store>/models/<model_version>/{model.pt, model.json}``, :func:`load_model`
* :mod:`training.registry` — the models of a store, aliases such as ``production``
* :mod:`training.infer` — sliding-window :func:`predict_case`, :func:`score_cases` into the store

Device: CUDA when ``torch.cuda.is_available()``, else CPU, everywhere.
"""

from training.checkpoint import list_models, load_model, save_checkpoint
from training.config import TrainConfig
from training.infer import predict_case, score_cases
from training.loop import TrainResult, TrainState, flush_losses, resume, save_model, setup, train, train_step, validate
from training.model import build_model, build_network, default_arch

__all__ = ["TrainConfig", "TrainResult", "TrainState", "build_model", "build_network", "default_arch", "list_models", "load_model",
           "flush_losses", "predict_case", "resume", "save_checkpoint", "save_model", "score_cases", "setup", "train", "train_step", "validate"]
