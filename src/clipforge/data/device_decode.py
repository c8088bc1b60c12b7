"""JPEG decoding on the GPU: nvJPEG through ``torchvision.io.decode_jpeg(..., device="cuda")``.

A batch of encoded JPEGs goes to the device as bytes and comes back as the model's input: decoded by
nvJPEG in one batched call, each image cropped to its box (random resized crops, boxes drawn on the CPU)
or resized shorter side first and centre-cropped, resized on the device (bicubic, antialiased), scaled
to [0, 1] and normalised. The CPU only reads bytes and checks headers (:func:`jpeg_size`), which is what
lets a few cores feed a fast GPU. Training uses it with ``data.gpu_decode: true`` (tar shards); without
CUDA or torchvision the run says so and decodes on the CPU (``clipforge.train.data``).

torchvision is not a clipforge dependency; it is imported only here, lazily.

Bad inputs: what the header check catches never reaches the device; nvJPEG fails a whole batched call
if one image is broken, so a failed call is retried image by image and the failures are reported by
index (``BadSample`` reasons) instead of crashing the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from clipforge.data.decode import BadSample, DecodeLimits, open_image


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


def jpeg_size(data: bytes, limits: DecodeLimits) -> tuple[int, int] | None:
    """The ``(width, height)`` of a JPEG that passes the CPU-side checks; ``None`` for a good non-JPEG image.

    Reads only the header, plus the end-of-image marker: a JPEG without ``FF D9`` near its end was cut short
    (the marker cannot occur in entropy-coded data, and encoders add at most a little padding after it).

    Raises:
        BadSample: ``empty``, ``not_image``, ``too_large``, ``bad_size``, ``corrupt`` or ``truncated``.
    """
    image = open_image(data, limits)
    if image.format != "JPEG":
        return None
    if b"\xff\xd9" not in data[-256:]:
        raise BadSample("truncated", "no JPEG end-of-image marker")
    return image.size


class DeviceJPEGDecoder:
    """Encoded JPEGs → normalised ``(B, 3, size, size)`` float tensor, decoded by torchvision on ``device``.

    On a CUDA device this is nvJPEG; on the CPU it is torchvision's libjpeg-turbo path (used by the tests).
    Each image is either cropped to a given box and resized to ``size`` × ``size`` (random resized crops,
    boxes drawn on the CPU) or resized shorter side to ``size`` and centre-cropped; resizing is bicubic
    with antialiasing, on the device.

    Args:
        size: Output side.
        mean: Per-channel mean.
        std: Per-channel std.
        device: Where to decode.
        limits: Header checks applied on the CPU before anything is decoded.

    Raises:
        RuntimeError: torchvision is missing.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cuda",
                 limits: DecodeLimits | None = None):
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            raise RuntimeError("GPU JPEG decoding unavailable: torchvision is not installed") from None
        self._decode, self._rgb = decode_jpeg, ImageReadMode.RGB
        self.size, self.device, self.limits = size, torch.device(device), limits or DecodeLimits()
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def __call__(self, jpegs: Sequence[bytes], boxes: Sequence[tuple[int, int, int, int]] | None = None,
                 checked: bool = False) -> tuple[torch.Tensor, dict[int, str]]:
        """Decodes what it can.

        Args:
            jpegs: Encoded JPEGs.
            boxes: Per image, a crop box ``(left, top, right, bottom)`` in full-size pixels; ``None``: resize
                the shorter side and centre-crop every image.
            checked: The JPEGs already passed :func:`jpeg_size` (the training loader's workers check them).

        Returns:
            ``(images (n_good, 3, size, size), {index: reason} of the images that could not be used)``.
        """
        bad: dict[int, str] = {}
        for i, data in enumerate([] if checked else jpegs):
            try:
                if jpeg_size(data, self.limits) is None:
                    bad[i] = "not_image"  # a PNG or WebP: not for nvJPEG
            except BadSample as e:
                bad[i] = e.reason
        good = [i for i in range(len(jpegs)) if i not in bad]
        decoded = self._decode_all([jpegs[i] for i in good])
        images = []
        for i, image in zip(list(good), decoded):
            if image is None:
                bad[i] = "corrupt"
                good.remove(i)
            else:
                images.append(self._resize(image, boxes[i] if boxes is not None else None))
        out = torch.stack(images) if images else torch.empty(0, 3, self.size, self.size, device=self.device)
        return (out - self.mean) / self.std, bad

    def _decode_all(self, jpegs: list[bytes]) -> list[torch.Tensor | None]:
        """One batched decode; when any image breaks it, one by one (``None`` for each that fails)."""
        raw = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
        if not raw:
            return []
        try:
            return list(self._decode(raw, mode=self._rgb, device=self.device))
        except Exception:  # one broken image fails the batched call: retry one by one (the sample boundary)
            out: list[torch.Tensor | None] = []
            for data in raw:
                try:
                    out.append(self._decode(data, mode=self._rgb, device=self.device))
                except Exception:
                    out.append(None)
            return out

    def _resize(self, image: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
        """(3, H, W) uint8 → (3, size, size) in [0, 1]: the box resized to the square, or shorter side + centre crop."""
        if box is not None:
            left, top, right, bottom = box
            x = image[None, :, top:bottom, left:right].float()
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
            return x[0].clamp_(0, 255).div_(255)
        _, h, w = image.shape  # the geometry of transforms.EvalTransform, to the pixel
        long = int(self.size * max(h, w) / min(h, w))
        new_h, new_w = (self.size, long) if h <= w else (long, self.size)
        x = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        return x[0, :, top:top + self.size, left:left + self.size].clamp_(0, 255).div_(255)
