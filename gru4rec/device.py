"""Training device selection: CUDA, then Apple MPS, then CPU, unless one is asked for."""

from __future__ import annotations

from typing import Literal, get_args

import torch

from gru4rec.errors import ConfigError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[str, ...] = get_args(DeviceName)


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is a ConfigError."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available here; use train.device=auto or cpu")
    if requested == "mps" and not mps_available():
        raise ConfigError("device 'mps' requested but Apple MPS is not available here; use train.device=auto or cpu")
    if requested not in DEVICES:
        raise ConfigError(f"unknown device {requested!r}; choose {', '.join(DEVICES)}")
    return torch.device(requested)
