"""VQA by rendering: the composed input, the synthetic VQA world, the model, fine-tuning, the CLI, bad input."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge import checkpoints
from clipforge.checkpoints import load_any
from clipforge.checkpoints.native import save_pretrained
from clipforge.cli.main import main
from clipforge.config import ConfigError
from clipforge.data.synthetic import COLOURS, SHAPES
from clipforge.text.render import RenderConfig, UnifontRenderer
from clipforge.vqa import (
    ANSWERS,
    QUESTION_TYPES,
    VQA,
    QuestionImageComposer,
    SyntheticVQA,
    VQADataConfig,
    VQAHeadConfig,
    VQAInput,
    VQAOptimConfig,
    VQAScheduleConfig,
    VQATrainConfig,
    band_height,
    evaluate_vqa,
    load_vqa,
    load_vqa_config,
    prepare_vqa,
    question_text,
    save_vqa,
    train_vqa,
)

BG = RenderConfig().background


@pytest.fixture(scope="module")
def renderer() -> UnifontRenderer:
    return UnifontRenderer(RenderConfig(image_size=96))


@pytest.fixture(scope="module")
def vqa() -> SyntheticVQA:
    return SyntheticVQA(VQADataConfig(), image_size=48)


def tiny_backbone(seed: int = 0) -> clipforge.CLIPPO:
    """clippo-tiny cut to one block of width 96 with big_vision's proportional renderer (as configs/vqa_tiny.yaml
    pins it): small enough for fast CPU tests."""
    torch.manual_seed(seed)
    return clipforge.create_model("clippo-tiny", embed_dim=64, vision={"layers": 1, "width": 96},
                                  render={"mode": "big_vision", "monospace": False})


# --- the composed input ---------------------------------------------------------------------------------------


def test_band_is_the_renderers_output_and_the_image_sits_below(renderer: UnifontRenderer) -> None:
    composer = QuestionImageComposer(renderer, band=48)
    red = Image.new("RGB", (48, 48), (200, 10, 10))
    wide = np.zeros((10, 40, 3), np.uint8)  # (H, W, 3): fitted to 24 × 96, aspect ratio kept
    wide[..., 1] = 255
    questions = ["what colour is the star?", "how many crosses are there?"]
    out = composer.compose([red, wide], questions)
    assert out.shape == (2, 96, 96, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :48], renderer.render(questions)[:, :48])
    # the square image: 48 × 48, centred in the 48 × 96 region, the rest is background
    assert (out[0, 48:, 24:72] == (200, 10, 10)).all()
    assert (out[0, 48:, :24] == BG).all() and (out[0, 48:, 72:] == BG).all()
    # the wide image: 24 × 96, centred vertically
    assert (out[1, 60:84] == (0, 255, 0)).all()
    assert (out[1, 48:60] == BG).all() and (out[1, 84:] == BG).all()
    tensor = composer([red, wide], questions)
    assert tensor.shape == (2, 3, 96, 96) and tensor.dtype == torch.uint8
    np.testing.assert_array_equal(tensor.permute(0, 2, 3, 1).numpy(), out)


def test_composer_is_batched_and_deterministic(renderer: UnifontRenderer, vqa: SyntheticVQA) -> None:
    composer = QuestionImageComposer(renderer, band=48)
    examples = [vqa.example("test", i) for i in range(4)]
    images, questions = [e.image for e in examples], [e.question.text for e in examples]
    batch = composer.compose(images, questions)
    for i in range(4):
        np.testing.assert_array_equal(batch[i], composer.compose([np.asarray(images[i])], [questions[i]])[0])
    np.testing.assert_array_equal(batch, composer.compose(images, questions))


def test_band_height_fits_every_question_tightly(renderer: UnifontRenderer, vqa: SyntheticVQA) -> None:
    questions = vqa.all_questions()
    band = band_height(renderer, questions)
    assert band % 16 == 0
    ink = renderer.render(questions)[..., 0] != BG  # (N, H, W)
    assert not ink[:, band:].any()  # nothing is cut
    assert ink[:, band - 16:band].any()  # and the last row is needed
    assert band_height(UnifontRenderer(RenderConfig(image_size=224)), questions) < band  # wider rows, fewer


@pytest.mark.parametrize("band", [8, 90, 48.0])
def test_composer_rejects_bands_that_do_not_fit(renderer: UnifontRenderer, band: float) -> None:
    with pytest.raises(ValueError, match="band"):
        QuestionImageComposer(renderer, band)  # type: ignore[arg-type]


def test_composer_rejects_bad_images(renderer: UnifontRenderer) -> None:
    composer = QuestionImageComposer(renderer, band=32)
    with pytest.raises(ValueError, match="1 images but 2 questions"):
        composer.compose([np.zeros((8, 8, 3), np.uint8)], ["a", "b"])
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        composer.compose([np.zeros((8, 8), np.float32)], ["a"])


# --- the synthetic VQA world --------------------------------------------------------------------------------


def expected_answer(question_kind: str, text: str, attributes: dict) -> str:
    """The answer worked out from the scene's attributes and the question's words alone."""
    shape, colour, count = attributes["shape"], attributes["colour"], attributes["count"]
    if question_kind == "colour":
        return colour
    if question_kind == "shape":
        return shape
    words = re.findall(r"[a-z]+", text)
    if question_kind == "count":
        asked = next(s for s in SHAPES if words[2] in (s, s + "s", s + "es"))
        return str(count) if asked == shape else "0"
    asked_colour, asked_shape = words[3], words[4]
    return "yes" if (asked_colour, asked_shape) == (colour, shape) else "no"


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_are_right(vqa: SyntheticVQA, split: str) -> None:
    for i in range(150):
        example = vqa.example(split, i)
        q = example.question
        assert q.text == q.text.strip() and q.answer in ANSWERS
        attributes = vqa.world.sample(split, i).attributes
        assert q.answer == expected_answer(q.kind, q.text, attributes), q
        assert (q.subject in q.text) and q.subject == (attributes["colour"] if q.kind == "shape" else q.subject)


def test_examples_are_deterministic(vqa: SyntheticVQA) -> None:
    again = SyntheticVQA(VQADataConfig(), image_size=48)
    other = SyntheticVQA(VQADataConfig(seed=1), image_size=48)
    for i in range(20):
        a, b = vqa.example("train", i), again.example("train", i)
        assert a.question == b.question and a.image.tobytes() == b.image.tobytes()
    assert [vqa.example("train", i).question for i in range(20)] != [other.example("train", i).question
                                                                      for i in range(20)]
    assert vqa.heldout != other.heldout


def test_heldout_combinations_never_reach_training(vqa: SyntheticVQA, renderer: UnifontRenderer) -> None:
    composer = QuestionImageComposer(renderer, band=48)
    # the shape-subject types hold out disjoint shapes, so every shape is still asked about in training
    shape_subjects = [s for kind in ("colour", "count", "exists") for s in vqa.heldout[kind]]
    assert len(shape_subjects) == len(set(shape_subjects)) == 6
    assert len(vqa.heldout["shape"]) == 2 and set(vqa.heldout["shape"]) <= set(COLOURS)
    train = vqa.dataset("train", 600, composer)
    kinds_seen = set()
    for i in range(len(train)):
        q = train.example(i).question
        assert not vqa.is_heldout(q.kind, q.subject), q
        kinds_seen.add(q.kind)
    assert kinds_seen == set(QUESTION_TYPES)
    for combos, heldout in (("seen", False), ("heldout", True)):
        test = vqa.dataset("test", 80, composer, combos)
        examples = [test.example(i) for i in range(len(test))]
        assert all(e.heldout is heldout and vqa.is_heldout(e.question.kind, e.question.subject) is heldout
                   for e in examples)
        # evaluation takes the question types in turn, held-out ones included
        assert [e.question.kind for e in examples[:8]] == list(QUESTION_TYPES) * 2
        # and held-out count/exists answers are not all "0"/"no": the item fixes the question, the scene varies
        assert {e.question.answer for e in examples if e.question.kind == "exists"} == {"yes", "no"}
    with pytest.raises(ValueError, match="only seen"):
        vqa.dataset("train", 10, composer, "heldout")


def test_question_wording() -> None:
    assert question_text("colour", "cross", 2) == "what colour are the crosses?"
    assert question_text("shape", "red", 1) == "what shape is the red object?"
    assert question_text("count", "square") == "how many squares are there?"
    assert question_text("exists", "star", colour="orange") == "is there an orange star?"
    with pytest.raises(ValueError, match="unknown question type"):
        question_text("size", "star")
    with pytest.raises(ValueError, match="names a colour"):
        question_text("exists", "star")


@pytest.mark.parametrize(("field", "value"), [("question_types", ("color",)), ("question_types", ()),
                                              ("heldout_per_type", 3), ("absent_fraction", 0.9), ("seed", -1),
                                              ("image_size", 8), ("max_objects", 4)])
def test_data_config_validation(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"data.{field}"):
        VQADataConfig(**{field: value})


# --- the model ----------------------------------------------------------------------------------------------


def test_model_starts_at_uniform_answers_and_every_parameter_learns(renderer: UnifontRenderer) -> None:
    backbone = tiny_backbone()
    model = VQA(backbone, VQAHeadConfig(ANSWERS, hidden=32))
    pixels = QuestionImageComposer(clipforge.get_text_processor(backbone), 48)(
        [Image.new("RGB", (48, 48))] * 2, ["what colour is the star?", "is there a red ring?"])
    logits = model(pixels)
    assert logits.shape == (2, len(ANSWERS))
    loss = F.cross_entropy(logits, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(math.log(len(ANSWERS)), abs=1e-6)  # the zero-initialised output layer
    loss.backward()
    # the zero output layer passes no gradient back at first; after one step every parameter gets some
    assert model.head.out.weight.grad.abs().sum() > 0 and model.head.norm.weight.grad.abs().sum() == 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    F.cross_entropy(model(pixels), torch.tensor([0, 1])).backward()
    unused = {"backbone.logit_scale"}  # the contrastive temperature plays no part in classification
    for name, param in model.named_parameters():
        if name not in unused:
            assert param.grad is not None and param.grad.isfinite().all() and param.grad.abs().sum() > 0, name
    with pytest.raises(TypeError, match="CLIPPO backbone"):
        VQA(clipforge.create_model("tiny-vit"), VQAHeadConfig(ANSWERS))
    with pytest.raises(clipforge.ConfigError, match="distinct answers"):
        VQAHeadConfig(("yes", "yes"))



@pytest.mark.usefixtures("one_thread")
def test_short_fine_tune_learns_far_below_chance(vqa: SyntheticVQA) -> None:
    """A fixed batch of 48 questions: the loss must fall well below log(number of answers)."""
    torch.manual_seed(0)
    backbone = tiny_backbone()
    composer = QuestionImageComposer(clipforge.get_text_processor(backbone), 48)
    data = vqa.dataset("train", 48, composer)
    pixels, answers, _, _ = next(iter(torch.utils.data.DataLoader(data, batch_size=48)))
    model = VQA(backbone, VQAHeadConfig(ANSWERS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(pixels), answers)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(len(ANSWERS)), abs=1e-5)
    assert min(losses[-5:]) < 0.25 * math.log(len(ANSWERS)), losses[::10]
    result = evaluate_vqa(model, data, batch_size=16)
    assert result["accuracy"]["all"] > 0.9 and set(result["n"]) == set(QUESTION_TYPES)
    assert set(result["by_answer"]["exists"]) <= {"yes", "no"} and set(result["by_answer"]["colour"]) <= set(COLOURS)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = VQA(tiny_backbone(), VQAHeadConfig(ANSWERS, hidden=16)).eval()
    torch.nn.init.normal_(model.head.out.weight)
    directory = save_vqa(model, tmp_path / "vqa", VQAInput(48, {"seed": 3}))
    loaded, inputs = load_vqa(directory)
    assert inputs == VQAInput(48, {"seed": 3}) and loaded.answers == ANSWERS
    pixels = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), model(pixels), rtol=0, atol=0)
    backbone, _, _ = clipforge.load(directory)  # the fine-tuned backbone is a plain CLIPPO model directory
    assert isinstance(backbone, clipforge.CLIPPO)


# --- config, training run and CLI --------------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], status: int = 0) -> tuple[str, str]:
    capsys.readouterr()
    assert main(argv) == status
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pretrained-directory start, a short run, then eval and ask on the saved model."""
    start = save_pretrained(tiny_backbone(), tmp_path / "clippo")
    run = tmp_path / "run"
    config = Path(__file__).parents[2] / "configs/vqa_tiny.yaml"  # its preset overrides yield to the saved model
    out, err = run_cli(["vqa", "train", "--threads", "1", "--config", str(config), f"model={start}", "steps=6",
                        "batch_size=8", "eval_size=8", "log_every=3", "schedule.warmup_steps=2", f"output_dir={run}"],
                       capsys)
    assert "held out:" in out and "step 6/6" in out and "model_overrides ignored" in err
    for name in ("config.yaml", "metrics.jsonl", "results.json", "accuracy.png", "loss.png", "final/vqa.json"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["band"] == 48 and results["model"] == str(start)
    for group in ("seen", "heldout"):
        assert set(results[group]["accuracy"]) == {*QUESTION_TYPES, "all"}
        assert sum(results[group]["n"].values()) == 8
    out, _ = run_cli(["vqa", "eval", "--model", str(run / "final"), "--size", "4",
                      "--output", str(tmp_path / "eval.json")], capsys)
    assert "seen" in out and json.loads((tmp_path / "eval.json").read_text())["seen"]["n"]
    image = tmp_path / "scene.png"
    SyntheticVQA(VQADataConfig(), 48).example("test", 0).image.save(image)
    out, err = run_cli(["vqa", "ask", "--model", str(run / "final"), "--image", str(image), "--question",
                      "what colour is the star?", "--top-k", "2", "--save-input", str(tmp_path / "input.png")],
                     capsys)
    lines = out.splitlines()
    assert lines[0] == "what colour is the star?" and len(lines) == 3 and not err
    assert all(line.strip().split("  ")[-1].strip() in ANSWERS for line in lines[1:])
    assert Image.open(tmp_path / "input.png").size == (96, 96)
    long_question = "what colour are the small shapes in the top left corner of this picture?"
    _, err = run_cli(["vqa", "ask", "--model", str(run / "final"), "--image", str(image), "--question", long_question],
                     capsys)
    assert re.search(r"needs a (64|80|96)-px band, the model reads 48 px: its end is cut", err), err


def test_config_overrides_and_yaml(tmp_path: Path) -> None:
    config = load_vqa_config("configs/vqa_tiny.yaml", {"steps": 70, "data.question_types": ["colour", "count"]})
    assert config.steps == 70 and config.data.question_types == ("colour", "count")
    assert config.model == "clippo-tiny" and config.optim.lr == 3e-4


def test_overrides_have_the_training_semantics_and_keep_the_vqa_defaults(tmp_path: Path) -> None:
    # a section the YAML leaves out, or leaves partly out, keeps the VQA defaults for the fields not named
    assert load_vqa_config(None, {"optim.lr": 1e-3}).optim == VQAOptimConfig(lr=1e-3)
    partial = tmp_path / "partial.yaml"
    partial.write_text("optim: {lr: 1.0e-3}\nschedule: {min_lr: 1.0e-6}\n")
    config = load_vqa_config(partial)
    assert (config.optim.weight_decay, config.schedule.warmup_steps) == (0.05, 50)
    # a dotted key creates the mappings it names; a mapping value replaces the field whole (as in training)
    assert load_vqa_config(None, {"model_overrides.vision.layers": 1}).model_overrides == {"vision": {"layers": 1}}
    config = load_vqa_config("configs/vqa_tiny.yaml", {"model_overrides": {"vision": {"layers": 1}}})
    assert config.model_overrides == {"vision": {"layers": 1}}
    config = load_vqa_config("configs/vqa_tiny.yaml", {"model_overrides.vision.layers": 1})
    assert config.model_overrides["vision"] == {"init_gain": 1.0, "layers": 1} and "render" in config.model_overrides


def test_config_is_inert_and_a_saved_start_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    missing = VQATrainConfig(model=str(tmp_path / "nowhere"))  # a path is not looked at until prepare_vqa
    with pytest.raises(ConfigError, match="model: unknown model .*nowhere"):
        prepare_vqa(missing)
    start = save_pretrained(tiny_backbone(), tmp_path / "clippo")
    reads = []

    def counting_load_any(*args: object, **kwargs: object) -> torch.nn.Module:
        reads.append(args)
        return load_any(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "load_any", counting_load_any)
    config = VQATrainConfig(model=str(start), model_overrides={"vision": {"init_gain": 1.0}}, steps=2, batch_size=4,
                            eval_size=4, log_every=1, schedule=VQAScheduleConfig(warmup_steps=0), plots=False,
                            output_dir=str(tmp_path / "run"))
    prepared = prepare_vqa(config)
    assert "model_overrides ignored" in capsys.readouterr().err
    before = {k: v.clone() for k, v in prepared.start.state_dict().items()}
    with pytest.raises(ValueError, match="another config"):
        train_vqa(replace(config, steps=3), prepared=prepared)
    result = train_vqa(config, prepared=prepared)
    assert len(reads) == 1 and result.results["band"] == prepared.composer.band == 48
    after = prepared.start.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the saved start is copied, not trained


BAD_CLI = [
    (["vqa", "train", "model=clippo-tinny"], "did you mean clippo-tiny"),
    (["vqa", "train", "model=tiny-vit"], "needs CLIPPO"),
    (["vqa", "train", "steps=0"], "steps must be positive"),
    (["vqa", "train", "data.question_types=[color]"], "data.question_types"),
    (["vqa", "train", "band=90"], None),  # validated when the composer is built: see below
    (["vqa", "train", "--config", "no/such.yaml"], "no/such.yaml: no such config file"),
    (["vqa", "train", "head_hidden=-1"], "head.hidden"),
    (["vqa", "train", "learning_rate=1"], "unknown field 'learning_rate'"),
    (["vqa", "train", "optim.lazy_embedding=true"], "optim.lazy_embedding"),  # CLIPPO has no token table
]


@pytest.mark.parametrize(("argv", "message"), [c for c in BAD_CLI if c[1]], ids=lambda v: str(v)[:40])
def test_bad_train_input_is_one_clear_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, err = run_cli(argv, capsys, status=2)
    assert len(err.strip().splitlines()) == 1 and err.startswith("clipforge vqa: error: ")
    assert message in err


def test_bad_yaml_band_image_and_model_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("steps: [unclosed\n")
    checks = [
        (["vqa", "train", "--config", str(bad_yaml)], f"{bad_yaml}: not valid YAML"),
        (["vqa", "train", "--threads", "1", "band=90", "steps=1", "schedule.warmup_steps=0",
          f"output_dir={tmp_path / 'r'}"], "band: expected an integer in [16, 80]"),
        (["vqa", "ask", "--model", str(tmp_path / "nowhere"), "--image", str(bad_yaml), "--question", "q?"],
         "not a readable image"),
        (["vqa", "eval", "--model", str(tmp_path / "nowhere")], "nowhere: no such model directory"),
    ]
    plain = save_pretrained(tiny_backbone(), tmp_path / "plain")  # a CLIPPO directory, but no VQA head
    checks.append((["vqa", "eval", "--model", str(plain)], "no VQA config"))
    for argv, message in checks:
        _, err = run_cli(argv, capsys, status=2)
        assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()  # a band that does not fit fails before the run dir is written
