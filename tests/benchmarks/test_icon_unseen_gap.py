"""``benchmarks/icons/unseen_gap.py``: its zero-shot score is clipforge's evaluator's, its image-prototype score is a
leave-one-out nearest class mean, and its seen-concept score reads the training shards' concepts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.api import create_model, get_text_processor
from clipforge.checkpoints.native import save_pretrained
from clipforge.eval.datasets import open_dataset
from clipforge.eval.loading import load_eval_model
from clipforge.eval.zeroshot import evaluate_zeroshot
from helpers.icons import RN, write_folder
from helpers.scripts import load_script


@pytest.fixture(scope="module")
def gap() -> ModuleType:
    return load_script("benchmarks/icons/unseen_gap.py", "icons_unseen_gap")


def write_training_shard(folder: Path, concepts: list[str], per_concept: int = 2) -> None:
    """One training shard as build.py writes it: a transparent PNG, captions and a .json naming the concept."""
    folder.mkdir(parents=True)
    with tarfile.open(folder / "000000.tar", "w") as tar:
        for i in range(len(concepts) * per_concept):
            buffer = io.BytesIO()
            Image.new("RGBA", (32, 32), (10 * i, 0, 0, 100 + 10 * i)).save(buffer, "PNG")
            concept = concepts[i % len(concepts)]
            fields = {"png": buffer.getvalue(), "txt": f"an icon of a {concept}.".encode(),
                      "json": json.dumps({"concept": concept, "set": "ph", "style": "regular"}).encode()}
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{i:08d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_prototype_top1_is_the_leave_one_out_nearest_mean(gap: ModuleType) -> None:
    features = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.9], [0.8, 0.3]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])  # class 2 has one image: not scored, but its mean is a candidate
    top1, scored = gap.prototype_top1(features, labels)
    # image 0 → class 0's other image (0.9, 0.1) vs class 1 (0.1, 0.95) vs class 2 (0.8, 0.3): class 0, right
    # image 1 → class 0's (1, 0) beats class 2's (0.8, 0.3): right; images 2 and 3 → class 1's other image: right
    assert scored == 4 and top1 == 100.0
    labels = torch.tensor([0, 1, 1, 0, 2])  # now each image's partner points the other way
    assert gap.prototype_top1(features, labels) == (0.0, 4)


def test_scores_of_a_finished_run(gap: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    write_folder(data / "64px" / "eval" / gap.UNSEEN)
    write_training_shard(data / "64px" / "train", ["cup", "fork", "star lamp", "door"])
    torch.manual_seed(0)
    model = create_model("tiny-rn", **RN)
    save_pretrained(model, work / "row" / "seed0" / "final", get_text_processor(model))
    gap.main(["--data", str(data), "--work", str(work), "--rows", "row", "--seeds", "0", "1"])
    run = json.loads(capsys.readouterr().out)["rows"]["row"]["per_seed"]["0"]
    loaded, _, _ = load_eval_model(str(work / "row" / "seed0" / "final"), device="cpu")
    dataset = open_dataset(data / "64px" / "eval" / gap.UNSEEN)
    expected = evaluate_zeroshot(loaded, dataset, dataset.classes, dataset.templates, use_cache=False)
    assert run["zeroshot"] == pytest.approx(100 * expected.metrics["acc1"], abs=1e-4)
    assert run["classes"] == 3 and run["prototype_images"] == 18  # three held-out classes, six images each
    assert run["seen_images"] == 6  # three of the four training concepts (as many as held-out), two images each
    assert run["heldout_names_of_training_words"] == pytest.approx(100 / 3)  # "star" of house, star, bell
    assert 0 <= run["image_prototypes"] <= 100 and 0 <= run["seen_zeroshot"] <= 100
