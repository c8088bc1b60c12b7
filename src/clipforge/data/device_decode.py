"""JPEG decoding on the GPU: nvJPEG through ``torchvision.io.decode_jpeg(..., device="cuda")``.

A batch of encoded JPEGs goes to the device as bytes and comes back as the model's input: decoded by
nvJPEG in one batched call, each image resized on the device (shorter side to ``size``, bicubic with
antialiasing, as the CPU eval transform does), centre-cropped, scaled to [0, 1] and normalised. The CPU
then only reads bytes and checks headers, which is what lets a few cores feed a fast GPU.

torchvision is not a clipforge dependency; it is imported only here. :func:`make_device_decoder` falls
back to the CPU path (PIL with reduce-on-decode, ``clipforge.data.decode``) with a one-line message when
torchvision or CUDA is missing.

Bad inputs: nvJPEG rejects a batch if any image in it is broken, so a failed batch is decoded image by
image and the failures are reported (``BadSample`` reasons, by index) instead of crashing the run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from clipforge.data.decode import BadSample, DecodeLimits, decode_image, open_image
from clipforge.transforms import EvalTransform


def device_decode_unavailable(device: str | torch.device = "cuda") -> str | None:
    """Why nvJPEG decoding cannot run on ``device`` (``None`` when it can)."""
    if torch.device(device).type != "cuda":
        return f"device {device} is not a CUDA device"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return "torchvision is not installed (pip install torchvision)"
    return None


class DeviceJPEGDecoder:
    """Encoded JPEGs → normalised ``(B, 3, size, size)`` float tensor on a CUDA device.

    Args:
        size: Output side.
        mean: Per-channel mean.
        std: Per-channel std.
        device: A CUDA device.
        limits: Header checks applied on the CPU before anything is sent to the device.

    Raises:
        RuntimeError: CUDA or torchvision is missing (see :func:`make_device_decoder` for the fallback).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cuda",
                 limits: DecodeLimits | None = None):
        reason = device_decode_unavailable(device)
        if reason is not None:
            raise RuntimeError(f"GPU JPEG decoding unavailable: {reason}")
        from torchvision.io import ImageReadMode, decode_jpeg

        self._decode, self._rgb = decode_jpeg, ImageReadMode.RGB
        self.size, self.device, self.limits = size, torch.device(device), limits or DecodeLimits()
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def __call__(self, jpegs: Sequence[bytes]) -> tuple[torch.Tensor, dict[int, str]]:
        """Decodes what it can; returns ``(images (n_good, 3, size, size), {index: reason} of the rest)``."""
        bad: dict[int, str] = {}
        for i, data in enumerate(jpegs):
            try:
                if open_image(data, self.limits).format != "JPEG":
                    bad[i] = "not_image"
                elif b"\xff\xd9" not in data[-256:]:  # no end-of-image marker: cut short (FF D9 cannot occur in
                    bad[i] = "truncated"  # entropy-coded data, and encoders add at most a little padding after it)
            except BadSample as e:
                bad[i] = e.reason
        good = [i for i in range(len(jpegs)) if i not in bad]
        raw = [torch.frombuffer(bytearray(jpegs[i]), dtype=torch.uint8) for i in good]
        try:
            decoded = self._decode(raw, mode=self._rgb, device=self.device) if raw else []
        except RuntimeError:  # one broken image fails the batched call: retry one by one
            decoded = []
            for i, data in zip(list(good), raw):
                try:
                    decoded.append(self._decode(data, mode=self._rgb, device=self.device))
                except RuntimeError:
                    bad[i] = "corrupt"
                    good.remove(i)
        images = [self._resize_crop(image) for image in decoded]
        out = torch.stack(images) if images else torch.empty(0, 3, self.size, self.size, device=self.device)
        return (out - self.mean) / self.std, bad

    def _resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 → (3, size, size) in [0, 1]: shorter side to ``size`` (bicubic, antialiased), centre crop."""
        _, h, w = image.shape
        scale = self.size / min(h, w)
        new_h, new_w = max(self.size, int(h * scale)), max(self.size, int(w * scale))
        x = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        return x[0, :, top:top + self.size, left:left + self.size].clamp_(0, 255).div_(255)


def cpu_decoder(size: int, mean: Sequence[float], std: Sequence[float],
                limits: DecodeLimits | None = None) -> Callable[[Sequence[bytes]], tuple[torch.Tensor, dict[int, str]]]:
    """The CPU equivalent of :class:`DeviceJPEGDecoder` (PIL, reduce-on-decode, the eval transform)."""
    transform, limits = EvalTransform(size, mean, std), limits or DecodeLimits()

    def decode(jpegs: Sequence[bytes]) -> tuple[torch.Tensor, dict[int, str]]:
        images, bad = [], {}
        for i, data in enumerate(jpegs):
            try:
                images.append(transform(decode_image(data, limits, size)))
            except BadSample as e:
                bad[i] = e.reason
        return (torch.stack(images) if images else torch.empty(0, 3, size, size)), bad

    return decode


def make_device_decoder(size: int, mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cuda",
                        limits: DecodeLimits | None = None) -> Callable[[Sequence[bytes]], tuple[torch.Tensor,
                                                                                                  dict[int, str]]]:
    """nvJPEG decoding on ``device`` when possible, else the CPU path with a one-line message on stderr."""
    reason = device_decode_unavailable(device)
    if reason is None:
        return DeviceJPEGDecoder(size, mean, std, device, limits)
    print(f"clipforge data: GPU JPEG decoding unavailable ({reason}); decoding on the CPU", file=sys.stderr)
    return cpu_decoder(size, mean, std, limits)

