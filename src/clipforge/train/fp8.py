"""Float8 training of the linear layers (``precision: fp8``), with torchao's float8 recipes.

On Hopper and Ada GPUs (compute capability 8.9 and up) the tensor cores multiply float8 at twice the bf16 rate.
``precision: fp8`` swaps each ``nn.Linear`` of the towers whose two dimensions are multiples of 16 for torchao's
``Float8Linear``: its input, weight and output gradient are cast to float8 with a scale per tensor (``tensorwise``,
torchao's fastest recipe) or per row (``rowwise``, closer to bf16; ``rowwise_with_gw_hp`` keeps the weight
gradient's matmul in bf16), and the rest of the step runs under bf16 autocast, as ``precision: bf16``. The weights
stay in fp32 and keep their names, so checkpoints, resume and the exported model are the plain model's.
``torch.compile`` (``compile: true``) fuses the casts; without it the casts cost more than float8 saves.

Off a capable GPU, ``fp8.emulate: true`` runs the same casts with the matmuls in higher precision (torchao's
emulation): the numerics of float8 training on any device, slowly, for tests and for checking a recipe's loss on
the CPU. Install with ``pip install 'clipforge[fp8]'`` (torchao).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from clipforge.config import ConfigError

INSTALL_HINT = "pip install 'clipforge[fp8]'"
MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada (8.9), Hopper (9.0) and newer


@dataclass(frozen=True)
class Fp8Config:
    """The float8 options (the train config's ``fp8``; used with ``precision: fp8``).

    Attributes:
        recipe: torchao's scaling recipe: ``tensorwise`` (one scale per tensor, fastest), ``rowwise`` (one per row)
            or ``rowwise_with_gw_hp`` (rowwise, the weight gradient in bf16).
        emulate: Emulate the float8 matmuls (any device, slow): the casts and scales as on the GPU.
    """

    recipe: Literal["tensorwise", "rowwise", "rowwise_with_gw_hp"] = "tensorwise"
    emulate: bool = False


def _torchao_float8() -> tuple[Any, type[nn.Module]]:
    """torchao's ``float8`` package and its ``Float8Linear`` class."""
    try:
        import torchao.float8 as float8
        from torchao.float8.float8_linear import Float8Linear
    except ImportError as e:
        raise ImportError(f"precision: fp8 trains with torchao's float8 recipes: {INSTALL_HINT}") from e
    return float8, Float8Linear


def fp8_unavailable(device: torch.device, config: Fp8Config) -> str | None:
    """Why float8 training cannot run on ``device`` (``None`` when it can)."""
    if config.emulate:
        return None
    if device.type != "cuda":
        return (f"precision: fp8 needs a CUDA GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or "
                f"newer (Ada, Hopper), not {device.type}; set fp8.emulate: true to emulate its numerics (slow)")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"precision: fp8 needs compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer; "
                f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")
    return None


def fp8_linear_filter(module: nn.Module, name: str) -> bool:
    """Whether a module becomes a ``Float8Linear``: an ``nn.Linear`` whose dimensions are multiples of 16 (what
    the float8 matmul takes), outside the training-only heads (SLIP's projector)."""
    return (type(module) is nn.Linear and module.in_features % 16 == 0 and module.out_features % 16 == 0
            and not name.startswith("recipe_heads"))


def convert_to_fp8(model: nn.Module, config: Fp8Config, device: torch.device) -> int:
    """Swaps ``model``'s eligible linear layers for torchao's ``Float8Linear`` in place; returns how many.

    Raises:
        ConfigError: float8 cannot run on ``device`` (``fp8_unavailable``), or no layer is eligible.
        ImportError: torchao is missing (the ``fp8`` extra).
    """
    reason = fp8_unavailable(device, config)
    if reason is not None:
        raise ConfigError(reason)
    float8, float8_linear = _torchao_float8()
    settings = dataclasses.replace(float8.Float8LinearConfig.from_recipe_name(config.recipe), emulate=config.emulate)
    before = sum(1 for name, m in model.named_modules() if fp8_linear_filter(m, name))
    if not before:
        raise ConfigError("precision: fp8: the model has no linear layer whose dimensions are multiples of 16")
    float8.convert_to_float8_training(model, config=settings, module_filter_fn=fp8_linear_filter)
    return sum(1 for m in model.modules() if isinstance(m, float8_linear))
