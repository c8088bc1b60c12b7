"""GPU JPEG decoding (nvJPEG via torchvision): agrees with the CPU path; without CUDA it falls back, saying so."""

from __future__ import annotations

import pytest
import torch

from clipforge.data.device_decode import DeviceJPEGDecoder, device_decode_unavailable, make_device_decoder
from test_data_decode import encode, noise

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def smooth(width: int, height: int, seed: int):
    """A photo-like image: smooth colour fields (JPEG of pure noise is unrepresentative and resamples unstably)."""
    return noise(8, 6, seed).resize((width, height), 3)


def batch() -> list[bytes]:
    good = [encode(smooth(w, h, i)) for i, (w, h) in enumerate([(640, 480), (500, 800), (1024, 768)])]
    return [good[0], encode(noise(64, 64))[:900], good[1], b"", good[2], b"GIF89a" + bytes(100)]


def test_fallback_to_the_cpu_with_a_message(capsys):
    decode = make_device_decoder(224, MEAN, STD, device="cpu")
    assert "GPU JPEG decoding unavailable (device cpu is not a CUDA device); decoding on the CPU" in \
        capsys.readouterr().err
    images, bad = decode(batch())
    assert images.shape == (3, 3, 224, 224) and bad == {1: "truncated", 3: "empty", 5: "not_image"}
    with pytest.raises(RuntimeError, match="unavailable"):
        DeviceJPEGDecoder(224, MEAN, STD, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(device_decode_unavailable("cuda") is not None, reason="needs CUDA and torchvision")
def test_nvjpeg_matches_the_cpu_path():
    jpegs = batch()
    gpu_images, gpu_bad = DeviceJPEGDecoder(224, MEAN, STD, "cuda")(jpegs)
    cpu_images, cpu_bad = make_device_decoder(224, MEAN, STD, device="cpu")(jpegs)
    assert gpu_images.device.type == "cuda" and gpu_images.shape == cpu_images.shape == (3, 3, 224, 224)
    assert set(gpu_bad) == set(cpu_bad)  # the truncated JPEG too (header check or nvJPEG's own error)
    difference = (gpu_images.cpu() - cpu_images).abs().mean().item()
    assert difference < 0.05, difference  # different IDCT and resampler; same picture
    assert torch.isfinite(gpu_images).all()
