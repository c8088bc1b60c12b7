"""FLYP's data: labelled sources (a class folder, a table's label column) give batches whose captions are class
prompts, one template per sample picked by the seeded rng (clipforge.train.flyp, data.captions_from_labels)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from clipforge.config import ConfigError
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.data import TrainData
from clipforge.transforms import EvalTransform

COLOURS = {"dark_red": (200, 20, 20), "green": (30, 200, 40), "blue": (30, 40, 220)}
TEMPLATES = ["a photo of a {}.", "a {} square.", "this is {}.", "{}, drawn."]
CONFIGS = Path(__file__).parents[2] / "configs"


def _square(colour: tuple[int, int, int], i: int) -> Image.Image:
    image = Image.new("RGB", (24, 24), (255, 255, 255))
    image.paste(colour, (2 + i, 2 + i, 18 + i, 18 + i))
    return image


def _folder(root: Path, per_class: int = 4) -> Path:
    folder = root / "colours"
    for name, colour in COLOURS.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            _square(colour, i).save(folder / name / f"{i}.png")
    return folder


def _table(root: Path, labels: list[str]) -> Path:
    rows = ["filepath,label"]
    for j, label in enumerate(labels):
        _square((40 * j % 255, 100, 50), j % 5).save(root / f"r{j}.png")
        rows.append(f"r{j}.png,{label}")
    path = root / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _colour_of(image) -> str:
    """The class of a square by its mean colour (the image tensor is normalised by mean 0, std 1)."""
    pixels = image.flatten(1)
    saturated = pixels[:, pixels.min(0).values < 0.6]
    means = saturated.mean(1).tolist()
    return min(COLOURS, key=lambda c: sum((m - v / 255) ** 2 for m, v in zip(means, COLOURS[c], strict=True)))


def _data(overrides: dict, batch_size: int = 6, seed: int = 0) -> TrainData:
    config = load_config(None, {**overrides, "batch_size": batch_size, "data.augment": False})
    transform = EvalTransform(24, (0.0,) * 3, (1.0,) * 3)
    return TrainData(config.data, transform, list, batch_size, seed, Runtime(), image_size=24)


def _batches(data: TrainData, start: int, stop: int) -> list[tuple[list[str], list]]:
    return [(texts, images) for images, texts, _ in data.loader(start, stop)]


def _folder_overrides(folder: Path, **prompts) -> dict:
    return {"data.kind": "folder", "data.path": str(folder), "data.layout": "classes",
            "data.captions_from_labels": {"templates": TEMPLATES, **prompts}}


def test_class_folder_captions_are_templates_filled_with_each_image_class(tmp_path):
    data = _data(_folder_overrides(_folder(tmp_path)))
    captions, used = [], set()
    for texts, images in _batches(data, 0, 4):
        for text, image in zip(texts, images, strict=True):
            colour = _colour_of(image)
            name = colour.replace("_", " ")  # folder names: underscores as spaces
            matches = [t for t in TEMPLATES if t.format(name) == text]
            assert matches, f"{text!r} is no template filled with {name!r}"
            used.add(matches[0])
            captions.append(text)
    assert len(used) >= 3  # picked per sample, not one template for all
    assert any("dark red" in c for c in captions) and not any("dark_red" in c for c in captions)


def test_captions_are_deterministic_across_builds_and_a_resume_position(tmp_path):
    overrides = _folder_overrides(_folder(tmp_path))
    whole = [texts for texts, _ in _batches(_data(overrides), 0, 5)]
    again = [texts for texts, _ in _batches(_data(overrides), 0, 5)]
    resumed = [texts for texts, _ in _batches(_data(overrides), 3, 5)]
    assert whole == again
    assert resumed == whole[3:]
    other_seed = [texts for texts, _ in _batches(_data(overrides, seed=1), 0, 5)]
    assert other_seed != whole


def test_class_names_from_a_list_and_from_a_file(tmp_path):
    folder = _folder(tmp_path)
    names = ["blue sky", "crimson", "grass"]  # the sorted folders: blue, dark_red, green
    listed = _data(_folder_overrides(folder, classnames=names))
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    filed = _data(_folder_overrides(folder, classnames=str(tmp_path / "names.txt")))
    by_list = _batches(listed, 0, 3)
    assert [t for t, _ in by_list] == [t for t, _ in _batches(filed, 0, 3)]
    rename = {"blue": "blue sky", "dark_red": "crimson", "green": "grass"}
    for texts, images in by_list:
        for text, image in zip(texts, images, strict=True):
            assert rename[_colour_of(image)] in text


def test_table_with_a_label_column_named_or_indexed(tmp_path):
    labels = ["cat", "dog", "cat", "bird", "dog", "cat"]
    table = _table(tmp_path, labels)
    base = {"data.kind": "csv", "data.path": str(table), "data.label_key": "label"}
    data = _data({**base, "data.captions_from_labels": {"templates": ["a {}"]}}, batch_size=6)
    (texts, _), = _batches(data, 0, 1)
    assert sorted(texts) == sorted(f"a {label}" for label in labels)  # one pass over the 6 rows

    indexed = _table(tmp_path, ["0", "2", "1", "2", "0", "1"])
    data = _data({**base, "data.path": str(indexed),
                  "data.captions_from_labels": {"templates": ["a {}"], "classnames": ["cat", "dog", "bird"]}})
    (texts, _), = _batches(data, 0, 1)
    assert sorted(texts) == sorted(["a cat", "a bird", "a dog", "a bird", "a cat", "a dog"])


def test_builtin_template_sets(tmp_path):
    from clipforge.eval import load_templates

    data = _data({**_folder_overrides(_folder(tmp_path)), "data.captions_from_labels": {"templates": "siglip"}})
    texts = [t for batch, _ in _batches(data, 0, 2) for t in batch]
    assert all(t in {load_templates("siglip")[0].format(c) for c in ("dark red", "green", "blue")} for t in texts)
    data = _data({**_folder_overrides(_folder(tmp_path / "b")), "data.captions_from_labels": {}})  # imagenet's 80
    imagenet = load_templates("imagenet")
    texts = [t for batch, _ in _batches(data, 0, 4) for t in batch]
    assert all(any(t == tpl.format(c) for tpl in imagenet for c in ("dark red", "green", "blue")) for t in texts)
    assert len(set(texts)) > 12


def test_labelled_data_without_captions_from_labels_is_still_refused(tmp_path):
    with pytest.raises(ConfigError, match="captions_from_labels"):
        _data({"data.kind": "folder", "data.path": str(_folder(tmp_path)), "data.layout": "classes"})


@pytest.mark.parametrize("prompts, match", [
    ({"templates": "imagenett"}, r"data\.captions_from_labels\.templates: unknown template set 'imagenett'"),
    ({"templates": ["a photo of a dog"]}, r"data\.captions_from_labels\.templates\[0\]: .* no '\{\}'"),
    ({"templates": []}, r"data\.captions_from_labels\.templates"),
    ({"templates": ["a {}"], "classnames": ["one", "two"]},
     r"data\.captions_from_labels\.classnames: 2 name\(s\) for 3 class folder\(s\)"),
    ({"templates": ["a {}"], "classnames": ["one", ""]}, r"data\.captions_from_labels\.classnames\[1\]"),
    ({"template": ["a {}"]}, r"data\.captions_from_labels.*templates"),  # unknown key: did you mean
])
def test_bad_prompts_are_config_errors_naming_the_field(tmp_path, prompts, match):
    folder = _folder(tmp_path)
    with pytest.raises(ConfigError, match=match):
        _data({**_folder_overrides(folder), "data.captions_from_labels": prompts})


def test_bad_template_file_and_table_mismatches_name_the_field(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of a {}.\nno slot here\n")
    with pytest.raises(ConfigError, match=r"data\.captions_from_labels\.templates: .*no slot here"):
        _data({**_folder_overrides(_folder(tmp_path)), "data.captions_from_labels": {"templates": str(bad)}})
    table = _table(tmp_path, ["0", "1", "3"])
    base = {"data.kind": "csv", "data.path": str(table), "data.label_key": "label"}
    with pytest.raises(ConfigError, match=r"classnames: the labels .* are class indices"):
        _data({**base, "data.captions_from_labels": {"templates": ["a {}"]}})
    with pytest.raises(ConfigError, match=r"classnames: 3 name\(s\), but .* labels 0\.\.3"):
        _data({**base, "data.captions_from_labels": {"templates": ["a {}"], "classnames": ["a", "b", "c"]}})
    with pytest.raises(ConfigError, match=r"captions_from_labels: needs data\.label_key"):
        _data({"data.kind": "csv", "data.path": str(table), "data.captions_from_labels": {"templates": ["a {}"]}})
    with pytest.raises(ConfigError, match=r"captions_from_labels: needs data\.layout=classes"):
        _data({"data.kind": "folder", "data.path": str(tmp_path), "data.captions_from_labels": {}})


TINY = ["model=tiny-vit", "model_overrides.embed_dim=32", "model_overrides.vision.image_size=32",
        "model_overrides.vision.patch_size=8", "model_overrides.vision.width=32", "model_overrides.vision.layers=1",
        "model_overrides.vision.heads=2", "model_overrides.text.width=32", "model_overrides.text.heads=2",
        "model_overrides.text.layers=1", "model_overrides.text.context_length=16", "eval.every=0",
        "schedule.warmup_steps=1", "log_every=1", "batch_size=6", "steps=3"]


def test_a_few_contrastive_steps_on_a_class_folder(tmp_path, one_thread):
    folder = _folder(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"kind": "folder", "path": str(folder), "layout": "classes",
                                             "captions_from_labels": {"templates": TEMPLATES}}}))
    config = load_config(path, parse_overrides([*TINY, f"output_dir={tmp_path / 'run'}"]))
    assert config.loss == "clip"  # the contrastive (InfoNCE) loss, as in pre-training
    result = train(config, Runtime())
    assert [step for step, _ in result.losses] == [1, 2, 3]
    assert all(math.isfinite(loss) and loss > 0 for _, loss in result.losses)


def test_the_shipped_config_loads_and_states_its_command():
    text = (CONFIGS / "finetune_flyp.yaml").read_text()
    assert "clipforge train --config configs/finetune_flyp.yaml" in text
    config = load_config(CONFIGS / "finetune_flyp.yaml")
    assert config.data.layout == "classes" and config.data.captions_from_labels is not None
