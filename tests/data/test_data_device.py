"""Device JPEG decoding (torchvision; nvJPEG on CUDA) in the training loader: same samples, same counts, CPU fallback.

Without a GPU the decoder runs torchvision's CPU JPEG path, which exercises everything but nvJPEG itself; the
``gpu``-marked test compares nvJPEG with the CPU path on a CUDA machine.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from clipforge.data.decode import DecodeLimits, decode_image
from clipforge.data.device_decode import DeviceJPEGDecoder, device_decode_unavailable
from clipforge.data.webdataset import write_tar_shard
from clipforge.train import Runtime, load_config
from clipforge.train.data import TrainData
from clipforge.transforms import EvalTransform, TrainTransform
from helpers.images import encode, noise
from helpers.shards import good, no_text

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG (smooth colour fields: pure noise resamples too unstably to compare decoders)."""
    return encode(noise(8, 6, seed).resize((width, height), Image.Resampling.BICUBIC), quality=92)


def bogus_huffman() -> bytes:
    """A JPEG whose header parses (PIL opens it, the end marker is there) but whose Huffman table is garbage."""
    data = bytearray(photo(64, 48, 99))
    start = data.find(b"\xff\xc4") + 4
    data[start:start + 26] = b"\xff" * 26
    return bytes(data)


def write_shards(folder, corrupt: bool) -> None:
    """2 shards of 8: photo-like JPEGs, a PNG and a WebP, header-detectable bad ones, optionally a bogus one."""
    folder.mkdir()
    for s in range(2):
        samples = []
        for i in range(8):
            key = f"{s}{i:02d}"
            sample = good(key, 0)
            sample["jpg"] = photo(120 + 8 * i, 96 + 4 * s, 10 * s + i)
            if i == 3:
                sample["jpg"] = sample["jpg"][: len(sample["jpg"]) // 2]  # truncated: no end marker
            elif i == 5:
                sample["jpg"] = b""
            elif i == 6:
                del sample["jpg"]
                sample["png"] = encode(noise(8, 6, i).resize((100, 90)), "PNG")
            elif i == 7 and s == 1:
                sample["jpg"] = bogus_huffman() if corrupt else encode(noise(8, 6, 7).resize((90, 100)), "WEBP")
                if not corrupt:
                    sample["webp"] = sample.pop("jpg")
            samples.append(sample)
        write_tar_shard(folder / f"{s:05d}.tar", samples)


def loader_batches(folder, augment: bool, device_decode: bool, monkeypatch, steps: int = 3) -> list:
    if device_decode:  # as if this CPU were a CUDA device: the decoder runs torchvision's CPU path
        monkeypatch.setattr("clipforge.train.data.device_decode_unavailable", lambda device: None)
    config = load_config(None, {"data.kind": "shards", "data.urls": str(folder), "data.gpu_decode": True,
                                "data.augment": augment, "data.interleave": 1, "batch_size": 4})
    transform = (TrainTransform if augment else EvalTransform)(32, MEAN, STD)
    data = TrainData(config.data, transform, no_text, 4, 0, Runtime(), image_size=32)
    assert (data.decoder is not None) == device_decode
    out = []
    for images, texts, info in data.loader(0, steps):
        data.consume(info)
        out.append((images, texts, info))
    return out


def test_without_cuda_the_run_says_so_and_decodes_on_the_cpu(tmp_path, capsys):
    write_shards(tmp_path / "shards", corrupt=False)
    batches = loader_batches(tmp_path / "shards", augment=True, device_decode=False, monkeypatch=None)
    assert "data.gpu_decode: device cpu is not a CUDA device; decoding on the CPU in the loader" in \
        capsys.readouterr().err
    assert all(images.shape == (4, 3, 32, 32) for images, _, _ in batches)


@pytest.mark.parametrize("augment", [False, True])
def test_device_decoding_takes_the_same_samples_and_counts_as_the_cpu(tmp_path, monkeypatch, augment):
    write_shards(tmp_path / "shards", corrupt=False)
    cpu = loader_batches(tmp_path / "shards", augment, device_decode=False, monkeypatch=monkeypatch)
    dev = loader_batches(tmp_path / "shards", augment, device_decode=True, monkeypatch=monkeypatch)
    for (a, _, info_a), (b, _, info_b) in zip(cpu, dev):
        assert info_a["keys"] == info_b["keys"] and info_a["skipped"] == info_b["skipped"]
        assert b.shape == a.shape == (4, 3, 32, 32)
        if not augment:  # same geometry: the pictures agree up to decoder and resampler differences
            assert (a - b).abs().mean().item() < 0.05
    assert sum(sum(info["skipped"].values()) for _, _, info in dev) == 4  # 2 truncated, 2 empty: caught on the CPU


def test_an_image_the_device_cannot_decode_is_counted_and_its_slot_refilled(tmp_path, monkeypatch):
    write_shards(tmp_path / "shards", corrupt=True)
    batches = loader_batches(tmp_path / "shards", False, device_decode=True, monkeypatch=monkeypatch, steps=3)
    infos = [info for _, _, info in batches]
    assert sum(i["skipped"].get("corrupt", 0) for i in infos) == 1
    assert sum(i["size"] for i in infos) == 11 and all(images.shape[0] == 4 for images, _, _ in batches)
    (hit,) = [(images, info) for images, _, info in batches if info["skipped"].get("corrupt")]
    rows = hit[0].flatten(1)
    assert any(torch.equal(rows[i], rows[j]) for i in range(4) for j in range(i))  # the refilled slot


def test_decoder_crops_boxes_or_centres_like_the_cpu_transforms():
    data = photo(200, 100, 1)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    decoder, transform = DeviceJPEGDecoder(32, MEAN, STD, "cpu"), EvalTransform(32, MEAN, STD)
    cropped, bad = decoder([data], boxes=[(0, 0, 100, 100)])  # the left square
    assert not bad and cropped.shape == (1, 3, 32, 32)
    assert (cropped[0] - transform(image.crop((0, 0, 100, 100)))).abs().mean().item() < 0.05
    centred, _ = decoder([data])
    assert (centred[0] - transform(image)).abs().mean().item() < 0.05
    assert (centred[0] - cropped[0]).abs().mean().item() > 0.1  # a different part of the picture


@pytest.mark.gpu
@pytest.mark.skipif(device_decode_unavailable("cuda") is not None, reason="needs CUDA and torchvision")
def test_nvjpeg_matches_the_cpu_path():
    jpegs = [photo(w, h, i) for i, (w, h) in enumerate([(640, 480), (500, 800), (1024, 768)])]
    jpegs += [jpegs[0][:900], b"", bogus_huffman()]
    images, bad = DeviceJPEGDecoder(224, MEAN, STD, "cuda")(jpegs)
    assert images.device.type == "cuda" and images.shape == (3, 3, 224, 224)
    assert bad == {3: "truncated", 4: "empty", 5: "corrupt"}
    reference = torch.stack([EvalTransform(224, MEAN, STD)(decode_image(d, DecodeLimits(), 224)) for d in jpegs[:3]])
    difference = (images.cpu() - reference).abs().mean().item()
    assert difference < 0.05, difference  # different IDCT, draft scaling and resampler; the same picture
    assert torch.isfinite(images).all()
