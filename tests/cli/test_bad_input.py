"""Bad input gets a clear error naming what was wrong, never a traceback: from the API and from the CLI.

The CLI contract (``clipforge.cli.main.main``): exit status 2 and one line ``clipforge VERB: error: ...`` on
stderr. Each case below broke that contract, or could have, before it was fixed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clipforge
from clipforge.checkpoints import CheckpointError
from clipforge.checkpoints.big_vision import BigVisionFormatError, load_big_vision, save_big_vision
from clipforge.checkpoints.native import save_pretrained
from clipforge.cli.main import main
from clipforge.text import unifont
from clipforge.text.render import UnifontRenderer

P = "params/img/"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs the CLI, checks the bad-input contract (status 2, one error line) and returns that line."""
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"clipforge {argv[0]}: error: "), err
    return err


@pytest.fixture(scope="module")
def clippo() -> clipforge.CLIPPO:
    return clipforge.create_model("clippo-tiny", vision={"layers": 2})


@pytest.fixture(scope="module")
def good_npz(tmp_path_factory: pytest.TempPathFactory, clippo: clipforge.CLIPPO) -> Path:
    path = tmp_path_factory.mktemp("bv") / "good.npz"
    save_big_vision(clippo, path)
    return path


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory, clippo: clipforge.CLIPPO) -> Path:
    return save_pretrained(clippo, tmp_path_factory.mktemp("native") / "model")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "cat" / "x.png"
    path.parent.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    return path


# --- unknown presets ---------------------------------------------------------------------------------------


def test_unknown_preset_api_suggests_the_close_one() -> None:
    with pytest.raises(clipforge.ConfigError, match=r"unknown model 'clippo-tinny'; did you mean clippo-tiny"):
        clipforge.create_model("clippo-tinny")
    assert issubclass(clipforge.ConfigError, ValueError)  # so the CLI reports it as bad input


@pytest.mark.parametrize("verb", ["train", "classify", "eval"])
def test_unknown_preset_cli(verb: str, image_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = {
        "train": ["train", "model=clippo-tinny"],
        "classify": ["classify", str(image_file), "--labels", "a,b", "--model", "clippo-tinny", "--device", "cpu"],
        "eval": ["eval", "zeroshot", "--model", "clippo-tinny", "--data", str(image_file.parent.parent),
                 "--device", "cpu", "--no-progress"],
    }[verb]
    err = run_cli(argv, capsys)
    assert "'clippo-tinny'" in err and "did you mean clippo-tiny" in err


# --- corrupt big_vision .npz files --------------------------------------------------------------------------


def _damage(good: Path, out: Path, how: str) -> None:
    """Writes a damaged copy of ``good`` to ``out``."""
    raw = good.read_bytes()
    if how == "truncated":
        out.write_bytes(raw[: len(raw) // 2])
        return
    if how == "not_a_zip":
        out.write_bytes(b"hello, I am not an archive")
        return
    if how == "bad_crc":
        damaged = bytearray(raw)
        damaged[len(damaged) // 2] ^= 0xFF
        out.write_bytes(bytes(damaged))
        return
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    if how == "missing_key":
        del arrays[P + "Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"]
    elif how == "wrong_rank":
        arrays[P + "head/kernel"] = arrays[P + "head/kernel"][0]
    elif how == "empty_axis":
        arrays[P + "embedding/kernel"] = arrays[P + "embedding/kernel"][..., :0]
    elif how == "wrong_size":
        arrays[P + "pos_embedding"] = arrays[P + "pos_embedding"][..., :10]
    elif how == "wrong_heads":
        kernel = arrays[P + "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"]
        arrays[P + "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"] = np.zeros(
            (kernel.shape[0], 5, 7), np.float32)
    elif how == "wrong_block_shape":
        key = P + "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"
        arrays[key] = arrays[key][:, :10]
    elif how == "object_array":
        arrays[P + "head/bias"] = np.array([None, 1], dtype=object)
    np.savez(out, **arrays)


NPZ_DAMAGE = {
    "truncated": "not a zip archive",
    "not_a_zip": "not a zip archive",
    "bad_crc": "Bad CRC-32",
    "missing_key": "missing 'params/img/Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias'",
    "wrong_rank": "params/img/head/kernel has shape",
    "empty_axis": "params/img/embedding/kernel has shape",
    "wrong_size": "does not fit the architecture",
    "wrong_heads": "not divisible by heads=5",
    "wrong_block_shape": "'visual.transformer.blocks.1.mlp.fc.weight' has shape",
    "object_array": "not a readable .npz",
}


@pytest.mark.parametrize("how", sorted(NPZ_DAMAGE))
def test_corrupt_npz(how: str, good_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / f"{how}.npz"
    _damage(good_npz, bad, how)
    with pytest.raises((BigVisionFormatError, CheckpointError)) as info:
        clipforge.load(bad)
    assert str(bad) in str(info.value) and NPZ_DAMAGE[how] in str(info.value)
    if how in ("truncated", "not_a_zip"):  # the loader itself, not only detection, says why
        with pytest.raises(BigVisionFormatError, match="not a zip archive"):
            load_big_vision(bad)
    err = run_cli(["convert", str(bad), str(tmp_path / "out"), "--to", "clipforge"], capsys)
    assert str(bad) in err and NPZ_DAMAGE[how] in err
    assert not (tmp_path / "out").exists()


# --- the font file ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    (None, "Unifont font file not found"),
    ("0041:0000000018242442427E424242420000\n0042:oops\n", "line 2 is not 'CODEPOINT:HEX'"),
    ("0041:0000000018242442427E424242420000\n0042:00000000182424424G7E424242420000\n",
     "line 2 has a glyph with characters that are not hex digits"),
    ("0041:0000000018242442427E424242420000\n0042:00000000 824244242 E424242420000\n",
     "line 2 has a glyph with characters that are not hex digits"),
])
def test_bad_font_file_names_file_and_line(content: str | None, message: str, tmp_path: Path) -> None:
    font = tmp_path / "font.hex"
    if content is not None:
        font.write_text(content)
    with pytest.raises((FileNotFoundError, ValueError), match=message) as info:
        UnifontRenderer(font_path=font)
    assert str(font) in str(info.value)


def test_missing_packaged_font_from_cli(image_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "unifont.hex.gz"
    monkeypatch.setattr(unifont, "default_font_path", lambda: missing)
    unifont.load_unifont.cache_clear()
    try:
        err = run_cli(["classify", str(image_file), "--labels", "a,b", "--model", "clippo-tiny", "--device", "cpu"],
                      capsys)
    finally:
        unifont.load_unifont.cache_clear()
    assert str(missing) in err and "font file not found" in err


# --- checkpoint directories ---------------------------------------------------------------------------------


def test_missing_checkpoint_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_model_here"
    with pytest.raises(FileNotFoundError, match="no_model_here"):
        clipforge.load(missing)
    err = run_cli(["convert", str(missing), str(tmp_path / "out"), "--to", "clipforge"], capsys)
    assert "no_model_here: no such file or directory" in err


def _write_config(directory: Path, mutate: dict) -> None:
    path = directory / "config.json"
    data = json.loads(path.read_text())
    for key, value in mutate.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(json.dumps(data))


DIR_DAMAGE = {
    "truncated_weights": ("model.safetensors", "not a readable safetensors file"),
    "garbage_weights": ("model.safetensors", "not a readable safetensors file"),
    "empty_weights": ("model.safetensors", "not a readable safetensors file"),
    "missing_weights": ("model.safetensors", "no weights file"),
    "invalid_json": ("config.json", "not valid JSON"),
    "unknown_field": ("config.json", "model.vision: unknown field 'widht' (did you mean 'width'?)"),
    "wrong_type": ("config.json", "model.embed_dim: expected an integer, got str 'wide'"),
    "bad_value": ("config.json", "vision.width=190 is not divisible by heads=3"),
    "format_not_int": ("config.json", "clipforge_format: expected an integer"),
    "bad_render_field": ("config.json", "model.render.mode: expected one of"),
    "config_disagrees_with_weights": ("model.safetensors", "'visual.proj' has shape"),
}


def _damage_dir(directory: Path, how: str) -> None:
    weights = directory / "model.safetensors"
    if how == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "garbage_weights":
        weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    elif how == "empty_weights":
        weights.write_bytes(b"")
    elif how == "missing_weights":
        weights.unlink()
    elif how == "invalid_json":
        (directory / "config.json").write_text('{"clipforge_format": 1, "model": {')
    elif how == "unknown_field":
        _write_config(directory, {"model.vision.widht": 3})
    elif how == "wrong_type":
        _write_config(directory, {"model.embed_dim": "wide"})
    elif how == "bad_value":
        _write_config(directory, {"model.vision.width": 190})
    elif how == "format_not_int":
        _write_config(directory, {"clipforge_format": "1"})
    elif how == "bad_render_field":
        _write_config(directory, {"model.render": {"mode": "fancy"}})
    elif how == "config_disagrees_with_weights":
        _write_config(directory, {"model.embed_dim": 64})


@pytest.mark.parametrize("how", sorted(DIR_DAMAGE))
def test_damaged_model_dir(how: str, good_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "model"
    shutil.copytree(good_dir, directory)
    _damage_dir(directory, how)
    culprit, message = DIR_DAMAGE[how]
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        clipforge.load(directory)
    assert str(directory / culprit) in str(info.value) and message in str(info.value)
    err = run_cli(["convert", str(directory), str(tmp_path / "out"), "--to", "clipforge"], capsys)
    assert str(directory / culprit) in err and message in err
    assert not (tmp_path / "out").exists()
