"""Feature visualisation: an image optimised to excite one unit, as Lucid does it (Olah et al. 2017, "Feature
Visualization", Distill; ``lucid.optvis.param.spatial.fft_image`` and ``color.to_valid_rgb``).

The image is parameterised in a decorrelated space: a Fourier spectrum whose coefficients are scaled by ``1 / f``
(so every frequency starts with the same energy as in natural images), brought back by an inverse FFT, then mixed
from decorrelated colour to RGB by the square root of ImageNet's colour correlation matrix and squashed by a
sigmoid into [0, 1]. Each step draws a random transformation (jitter, scaling and a small rotation, Lucid's
``standard_transforms`` at the model's input size; out of the image is grey), runs the model, and takes one Adam step
up the unit's activation (its mean over positions, the channel objective). Every random draw comes from one seeded
``torch.Generator``: the same seed, model and steps give the same image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipforge.eval.adapter import EvalModel
from clipforge.eval.neurons.layers import Layer, layer_activations

# Lucid's color_correlation_svd_sqrt, normalised by its largest column norm (lucid/optvis/param/color.py).
_COLOUR = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOUR = _COLOUR / _COLOUR.norm(dim=0).max()
_SCALES = [1 + (i - 5) / 50 for i in range(11)]  # Lucid's random_scale choices
_ANGLES = [*range(-10, 11), *[0] * 5]  # degrees: Lucid's random_rotate choices


@dataclass
class FeatureVisualisation:
    """An optimised image and the unit's activation on it.

    Attributes:
        image: The image (RGB, the model's input size).
        unit: The unit it excites.
        start: The unit's activation on the starting image (untransformed).
        end: Its activation on the final image (untransformed).
        trace: The objective at every step (on the transformed image).
    """

    image: Image.Image
    unit: int
    start: float
    end: float
    trace: list[float]


class FourierImage(nn.Module):
    """An image (1, 3, H, W) in [0, 1] from a 1/f-scaled spectrum and decorrelated colour (or plain pixels).

    Args:
        size: The image side.
        generator: Draws the initial coefficients (normal, ``sd``).
        sd: Their standard deviation.
        decay_power: The exponent of the ``1 / f`` scaling.
        fourier: Parameterise in frequency space (else in pixels).
        decorrelate: Parameterise colour decorrelated (else RGB).
    """

    def __init__(self, size: int, generator: torch.Generator, sd: float = 0.01, decay_power: float = 1.0,
                 fourier: bool = True, decorrelate: bool = True):
        super().__init__()
        self.size, self.fourier, self.decorrelate = size, fourier, decorrelate
        if fourier:
            fy = torch.fft.fftfreq(size)[:, None]
            fx = torch.fft.rfftfreq(size)[None, :]
            freqs = (fy * fy + fx * fx).sqrt()  # (H, W // 2 + 1)
            scale = 1.0 / freqs.clamp(min=1.0 / size) ** decay_power * size  # sqrt(H · W)
            self.register_buffer("scale", scale, persistent=False)
            shape: tuple[int, ...] = (2, 3, *freqs.shape)
        else:
            shape = (3, size, size)
        self.param = nn.Parameter(torch.randn(shape, generator=generator) * sd)

    scale: torch.Tensor

    def forward(self) -> torch.Tensor:
        if self.fourier:
            spectrum = torch.complex(self.param[0], self.param[1]) * self.scale  # (3, H, W // 2 + 1)
            x = torch.fft.irfft2(spectrum, s=(self.size, self.size)) / 4.0  # (3, H, W), as Lucid's fft_image
        else:
            x = self.param
        if self.decorrelate:
            x = torch.einsum("ij,jhw->ihw", _COLOUR.to(x), x)  # decorrelated → RGB
        return torch.sigmoid(x)[None]  # (1, 3, H, W) in [0, 1]


def _random_affine(generator: torch.Generator, jitter: float) -> torch.Tensor:
    """A (1, 2, 3) ``affine_grid`` matrix: a random Lucid scale and rotation, and a shift of up to ``jitter`` (in
    units of the image's half side)."""
    pick = torch.randint(len(_SCALES), (1,), generator=generator).item()
    turn = torch.randint(len(_ANGLES), (1,), generator=generator).item()
    shift = (torch.rand(2, generator=generator) * 2 - 1) * jitter
    s, a = _SCALES[int(pick)], math.radians(_ANGLES[int(turn)])
    cos, sin = math.cos(a) / s, math.sin(a) / s  # the grid maps output to input coordinates: the inverse scale
    return torch.tensor([[[cos, -sin, float(shift[0])], [sin, cos, float(shift[1])]]])


def _normaliser(model: EvalModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The transform's per-channel mean and std, read off what it makes of a black and a white image."""
    black = model.transform(Image.new("RGB", (8, 8), (0, 0, 0)))[:, 0, 0]
    white = model.transform(Image.new("RGB", (8, 8), (255, 255, 255)))[:, 0, 0]
    std = 1.0 / (white - black)
    return (-black * std).view(1, 3, 1, 1), std.view(1, 3, 1, 1)


def visualise(model: EvalModel, layer: Layer, unit: int, size: int, *, steps: int = 256, lr: float = 0.05,
              seed: int = 0, jitter: float = 0.06, fourier: bool = True, decorrelate: bool = True,
              ) -> FeatureVisualisation:
    """Optimises an image to excite ``unit`` of ``layer``.

    Args:
        model: The model with its image transform (whose normalisation the image goes through).
        layer: The unit's layer.
        unit: The unit.
        size: The image side (the model's input size).
        steps: Adam steps (Lucid: 512).
        lr: Adam's learning rate (Lucid: 0.05).
        seed: Seeds the starting image and every transformation.
        jitter: The largest shift, as a share of the image's half side (Lucid at 224 px: about 0.1).
        fourier: The Fourier parameterisation (else pixels).
        decorrelate: Decorrelated colour (else RGB).
    """
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    image = FourierImage(size, generator, fourier=fourier, decorrelate=decorrelate)
    mean, std = _normaliser(model)
    device = model.device
    image.to(device)
    mean, std = mean.to(device), std.to(device)
    net = model.model
    grads = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)

    def activation(x: torch.Tensor) -> torch.Tensor:
        return layer_activations(net, layer, (x - mean) / std)[0, unit]

    try:
        with torch.no_grad():
            start = float(activation(image()))
        optimiser = torch.optim.Adam(image.parameters(), lr=lr)
        trace = []
        for _ in range(steps):
            x = image()
            grid = F.affine_grid(_random_affine(generator, jitter).to(x), [1, 3, size, size], align_corners=False)
            x = F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
            objective = activation(x)
            optimiser.zero_grad()
            (-objective).backward()
            optimiser.step()
            trace.append(float(objective.detach()))
        with torch.no_grad():
            final = image()
            end = float(activation(final))
    finally:
        for p, g in zip(net.parameters(), grads):
            p.requires_grad_(g)
    pixels = (final[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return FeatureVisualisation(Image.fromarray(pixels, "RGB"), unit, start, end, trace)
