"""Where the clustering runs: CUDA when asked for or found, the CPU otherwise."""

from __future__ import annotations

import torch

from projclust_onnx.common.errors import SettingError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map "auto", "cpu", "cuda" or "cuda:N" to a torch.device, refusing CUDA without a GPU."""
    if isinstance(device, torch.device):
        spec = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            spec = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise SettingError("device", f"{{}}={device!r} is not a device; use 'auto', 'cpu' or 'cuda'") from err
    if spec.type == "cuda" and not torch.cuda.is_available():
        raise SettingError("device", f"{{}}={str(spec)!r} asked for, but torch sees no CUDA GPU here; use 'auto' "
                           "(the GPU when there is one) or 'cpu'")
    if spec.type not in ("cpu", "cuda"):
        raise SettingError("device", f"{{}}={str(spec)!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    return spec
