"""SigLIP 2 NaFlex inputs (Tschannen et al. 2025): images at their own aspect ratio under a patch budget.

A NaFlex image tower sees each image at (close to) its own aspect ratio: the image is resized so that its patch
grid (h, w) has at most ``max_num_patches`` patches, cut into patches, and padded with empty patches to exactly
``max_num_patches`` so that a batch is one tensor. A mask marks the real patches; attention never looks at the
padding. The learned positions, a square grid, are resized per image to its (h, w) grid.

Everything here equals transformers 5.24 (``models/siglip2``), which the released checkpoints are served with:

- ``target_size`` is ``get_image_size_for_max_num_patches`` (a binary search over the scale, each side rounded
  up to a multiple of the patch size, at least one patch);
- ``preprocess`` is ``Siglip2ImageProcessor``: a bilinear antialiased resize of the uint8 image (torchvision's
  ``resize``, which on a CPU with AVX2/AVX512 or on ARM resizes uint8 natively and elsewhere in float, rounded),
  then ``(x - 255·mean) / (255·std)``;
- ``patchify`` is ``convert_image_to_patches``: patches in raster order, each flattened as (row, column,
  channel), channel fastest. A ``Conv2d`` weight (width, 3, p, p) is the same map with its inputs in (channel,
  row, column) order, so ``conv_weight_as_linear`` applies a convolution to flattened patches exactly;
- ``resize_positions`` is ``Siglip2VisionEmbeddings.resize_positional_embeddings``: ``F.interpolate(...,
  mode="bilinear", align_corners=False, antialias=True)`` per image, computed here as that filter's separable
  weights for the whole batch at once (no per-image loop, no device sync). Padding positions get zeros (HF
  gives them the first position's vector); they never reach a real token.

``NaFlexBatch`` is what the tower takes: ``patches`` (B, N, 3·p·p), ``mask`` (B, N) and ``spatial_shapes``
(B, 2) as (h, w). One image's (unbatched: (N, 3·p·p), (N,), (2,)) comes out of the eval transform, and
``torch.stack`` of such items gives a batch (``__torch_function__``), so code that stacks transformed images
works unchanged.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F


class NaFlexBatch:
    """Patches, their mask and each image's patch grid: one image (unbatched) or a batch.

    Args:
        patches: (B, N, 3·p·p) or, for one image, (N, 3·p·p): normalised pixels, patches in raster order, each
            flattened as (row, column, channel); the first h·w are the image, the rest padding.
        mask: (B, N) or (N,): true (or 1) at the real patches.
        spatial_shapes: (B, 2) or (2,): each image's patch grid (h, w).
    """

    def __init__(self, patches: torch.Tensor, mask: torch.Tensor, spatial_shapes: torch.Tensor):
        self.patches, self.mask, self.spatial_shapes = patches, mask, spatial_shapes

    @property
    def batched(self) -> bool:
        """Whether this holds a batch (patches (B, N, D)) rather than one image."""
        return self.patches.ndim == 3

    def __len__(self) -> int:
        return self.patches.shape[0] if self.batched else 1

    def __getitem__(self, index: int | slice | torch.Tensor) -> NaFlexBatch:
        """Images ``index`` of a batch (an int gives one unbatched image)."""
        if not self.batched:
            raise TypeError("an unbatched NaFlex image cannot be indexed; torch.stack several into a batch")
        return NaFlexBatch(self.patches[index], self.mask[index], self.spatial_shapes[index])

    def to(self, *args: Any, **kwargs: Any) -> NaFlexBatch:
        """``Tensor.to`` on the patches; the mask and shapes follow to the same device and keep their dtypes."""
        patches = self.patches.to(*args, **kwargs)
        blocking = {"non_blocking": kwargs.get("non_blocking", False)}
        return NaFlexBatch(patches, self.mask.to(patches.device, **blocking),
                           self.spatial_shapes.to(patches.device, **blocking))

    def pin_memory(self) -> NaFlexBatch:
        """Page-locked copies (what a ``DataLoader(pin_memory=True)`` asks of each batch)."""
        return NaFlexBatch(self.patches.pin_memory(), self.mask.pin_memory(), self.spatial_shapes.pin_memory())

    @staticmethod
    def stack(items: Sequence[NaFlexBatch]) -> NaFlexBatch:
        """One batch from unbatched images (stacked) or from batches (concatenated); all padded to one length."""
        if not items:
            raise ValueError("no NaFlex images to stack")
        lengths = sorted({item.patches.shape[-2] for item in items})
        if len(lengths) > 1:
            raise ValueError(f"NaFlex images padded to different lengths {lengths} cannot be stacked; preprocess "
                             "them with one max_num_patches")
        join: Callable[..., torch.Tensor] = torch.stack if not items[0].batched else torch.cat
        return NaFlexBatch(join([i.patches for i in items]), join([i.mask for i in items]),
                           join([i.spatial_shapes for i in items]))

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        """``torch.stack`` / ``torch.cat`` of NaFlex items along dimension 0 give a ``NaFlexBatch``."""
        kwargs = kwargs or {}
        if func in (torch.stack, torch.cat) and kwargs.get("dim", args[1] if len(args) > 1 else 0) == 0:
            items = list(args[0])
            if all(isinstance(i, NaFlexBatch) and i.batched == (func is torch.cat) for i in items):
                return NaFlexBatch.stack(items)
        return NotImplemented

    def __repr__(self) -> str:
        return (f"NaFlexBatch(patches={tuple(self.patches.shape)}, mask={tuple(self.mask.shape)}, "
                f"spatial_shapes={tuple(self.spatial_shapes.shape)})")


def target_size(height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """The (height, width) in pixels an image is resized to: its aspect ratio kept as far as whole patches allow,
    at most ``max_num_patches`` patches (transformers' ``get_image_size_for_max_num_patches``, step for step)."""

    def scaled(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:  # the largest scale whose patch grid fits the budget
        scale = (lo + hi) / 2
        if (scaled(scale, height) / patch_size) * (scaled(scale, width) / patch_size) <= max_num_patches:
            lo = scale
        else:
            hi = scale
    return scaled(lo, height), scaled(lo, width)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(…, C, H, W) → (…, (H/p)·(W/p), p·p·C): patches in raster order, each flattened as (row, column, channel).

    A remainder of H or W that is not a whole patch is cut off, as a strided convolution does.
    """
    *lead, C, H, W = images.shape
    h, w, p = H // patch_size, W // patch_size, patch_size
    x = images[..., :h * p, :w * p].reshape(*lead, C, h, p, w, p)
    n = len(lead)
    x = x.permute(*range(n), n + 1, n + 3, n + 2, n + 4, n)  # (…, h, w, p, p, C)
    return x.reshape(*lead, h * w, p * p * C)


def conv_weight_as_linear(weight: torch.Tensor) -> torch.Tensor:
    """A patch ``Conv2d`` weight (width, C, p, p) as the ``Linear`` weight (width, p·p·C) over ``patchify``'s
    patches: the same map, inputs reordered from (channel, row, column) to (row, column, channel)."""
    return weight.permute(0, 2, 3, 1).flatten(1)


def linear_weight_as_conv(weight: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """The inverse of ``conv_weight_as_linear``: (width, p·p·C) → (width, C, p, p)."""
    return weight.reshape(weight.shape[0], patch_size, patch_size, channels).permute(0, 3, 1, 2)


def _native_uint8_resize(device: torch.device) -> bool:
    """Whether torchvision resizes a uint8 image natively here (else in float, rounded): its own rule."""
    if device.type != "cpu":
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def resize_uint8(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear antialiased resize of a uint8 image (3, H, W), exactly as torchvision's ``resize`` does it."""
    if pixels.shape[-2:] == (height, width):
        return pixels
    x = pixels.contiguous()[None]
    if _native_uint8_resize(x.device):
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
    x = F.interpolate(x.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().to(torch.uint8)[0]


def preprocess(pixels: torch.Tensor, patch_size: int, max_num_patches: int, mean: Sequence[float],
               std: Sequence[float]) -> NaFlexBatch:
    """One uint8 RGB image (3, H, W) → its unbatched NaFlex input, as ``Siglip2ImageProcessor`` makes it.

    Resized to ``target_size`` (bilinear, antialiased), normalised, cut into patches and padded with zeros to
    ``max_num_patches``; the mask is true at the h·w real patches.
    """
    if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 RGB image (3, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
    height, width = target_size(pixels.shape[1], pixels.shape[2], patch_size, max_num_patches)
    pixels = resize_uint8(pixels, height, width)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(3, 1, 1) * 255.0
    patches = patchify((pixels.float() - mean_t) / std_t, patch_size)  # (h·w, p·p·3)
    n = patches.shape[0]
    mask = torch.zeros(max_num_patches, dtype=torch.bool, device=pixels.device)
    mask[:n] = True
    shape = torch.tensor([height // patch_size, width // patch_size], device=pixels.device)
    return NaFlexBatch(F.pad(patches, (0, 0, 0, max_num_patches - n)), mask, shape)


def from_images(images: torch.Tensor, patch_size: int, max_num_patches: int | None = None) -> NaFlexBatch:
    """A batch of normalised images (B, 3, H, W) as one NaFlex batch: every image the full (H/p, W/p) grid,
    no padding (a remainder that is not a whole patch is cut off).

    Raises:
        ValueError: not (B, 3, H, W) with at least one patch, or (given ``max_num_patches``) over that budget.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W) or a NaFlexBatch, got a tensor {tuple(images.shape)}")
    B, _, H, W = images.shape
    h, w = H // patch_size, W // patch_size
    if h * w < 1 or (max_num_patches is not None and h * w > max_num_patches):
        raise ValueError(f"images {tuple(images.shape)} make a {h}×{w} patch grid ({h * w} patches); this model's "
                         f"patch budget is max_num_patches={max_num_patches} of {patch_size}×{patch_size} pixels "
                         "(resize them, or preprocess with clipforge.transforms.NaFlexTransform)")
    patches = patchify(images, patch_size)  # (B, h·w, p·p·3)
    shapes = torch.tensor([H // patch_size, W // patch_size], device=images.device).expand(B, 2)
    return NaFlexBatch(patches, torch.ones(patches.shape[:2], dtype=torch.bool, device=images.device), shapes)


def check_batch(batch: NaFlexBatch, patch_size: int, max_num_patches: int) -> None:
    """Refuses a batch over the patch budget or inconsistent with itself, naming the budget and the shape.

    Raises:
        ValueError: patches not (B, N, 3·p·p) with N ≤ ``max_num_patches``; a mask or shapes of the wrong size;
            an image whose grid h·w exceeds the budget or N, or whose mask does not count h·w real patches.
    """
    p, x = patch_size, batch.patches
    budget = f"this model's patch budget is max_num_patches={max_num_patches} of {p}×{p} pixels"
    if x.ndim != 3 or x.shape[-1] != 3 * p * p:
        raise ValueError(f"NaFlex patches must be (batch, patches, 3·{p}·{p}={3 * p * p}), got {tuple(x.shape)}")
    B, N = x.shape[:2]
    if N > max_num_patches:
        raise ValueError(f"NaFlex input has {N} patches per image; {budget}")
    if tuple(batch.mask.shape) != (B, N) or tuple(batch.spatial_shapes.shape) != (B, 2):
        raise ValueError(f"NaFlex mask {tuple(batch.mask.shape)} and spatial_shapes "
                         f"{tuple(batch.spatial_shapes.shape)} must be ({B}, {N}) and ({B}, 2) for patches "
                         f"{tuple(x.shape)}")
    shapes = batch.spatial_shapes.long()
    hw = shapes.prod(-1)
    bad = (shapes.min(-1).values < 1) | (hw > min(N, max_num_patches)) | (batch.mask.long().sum(-1) != hw)
    if bool(bad.any()):  # one device sync for every check
        i = int(bad.nonzero()[0, 0])
        h, w = (int(v) for v in shapes[i])
        if h * w > max_num_patches:
            raise ValueError(f"NaFlex image {i} has a {h}×{w} patch grid ({h * w} patches); {budget}")
        raise ValueError(f"NaFlex image {i}: spatial shape {h}×{w} needs {h * w} real patches at the start of its "
                         f"{N} and a mask with as many true values; the mask has {int(batch.mask[i].long().sum())}")


def _axis_weights(sizes: torch.Tensor, index: torch.Tensor, grid: int) -> torch.Tensor:
    """Antialiased bilinear weights (…, grid) reading output ``index`` of a ``sizes``-long axis from ``grid``
    inputs: PyTorch's ``antialias=True`` triangle filter, its support widened by the scale when shrinking."""
    scale = grid / sizes.float()
    support = scale.clamp(min=1.0)
    center = (index.float() + 0.5) * scale - 0.5
    source = torch.arange(grid, device=sizes.device, dtype=torch.float32)
    weights = (1 - (source - center[..., None]).abs() / support[..., None]).clamp(min=0)
    return weights / weights.sum(-1, keepdim=True)


def resize_positions(pos_embed: torch.Tensor, spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
    """A square grid of learned positions (G·G, C) resized to each image's (h, w) patch grid, in raster order
    and padded with zeros to ``length``: (B, length, C). Equals ``F.interpolate(grid, (h, w), mode="bilinear",
    align_corners=False, antialias=True)`` image by image; computed in float32."""
    grid = math.isqrt(pos_embed.shape[0])
    if grid * grid != pos_embed.shape[0]:
        raise ValueError(f"positions ({pos_embed.shape[0]}) are not a square grid")
    sizes = spatial_shapes.to(pos_embed.device).long()[:, None, :]  # (B, 1, 2) as (h, w)
    n = torch.arange(length, device=pos_embed.device)[None, :]  # (1, length)
    valid = n < sizes.prod(-1)  # (B, length): real positions
    rows, cols = (n // sizes[..., 1]) * valid, (n % sizes[..., 1]) * valid  # (B, length); padding reads (0, 0)
    w_rows = _axis_weights(sizes[..., 0], rows, grid)  # (B, length, G)
    w_cols = _axis_weights(sizes[..., 1], cols, grid)  # (B, length, G)
    weights = (w_rows[..., :, None] * w_cols[..., None, :]).flatten(-2) * valid[..., None]  # (B, length, G·G)
    return (weights @ pos_embed.float()).to(pos_embed.dtype)
