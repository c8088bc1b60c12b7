"""Distillation: the loss's known answers, parity with OpenCLIP's DistillClipLoss, and the teacher in the loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipforge.checkpoints.native import save_pretrained
from clipforge.config import ConfigError
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides, prepare, train
from clipforge.train.loss import clip_distill_loss, clip_loss, distill_loss
from helpers.tiny import tiny_vit_overrides

ARCH = tiny_vit_overrides(width=16)
RUN = ["data.train_size=200", "eval.size=4", "eval.retrieval_size=0", "schedule.warmup_steps=1", "batch_size=8",
       "log_every=1", "plots=false", "steps=2"]


def features(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_identical_logits_give_zero_kl_and_the_entropy_as_cross_entropy() -> None:
    logits = 5 * torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    assert distill_loss(logits, logits, "kl").item() == pytest.approx(0.0, abs=1e-6)
    assert distill_loss(logits, logits + 3.0, "kl").item() == pytest.approx(0.0, abs=1e-6)  # a row constant cancels
    p = logits.softmax(dim=1)
    entropy = -(p * p.log()).sum(dim=1).mean()
    assert distill_loss(logits, logits, "cross_entropy").item() == pytest.approx(entropy.item(), abs=1e-6)
    other = torch.randn(6, 9, generator=torch.Generator().manual_seed(1))
    assert distill_loss(other, logits, "kl").item() > 0.01
    with pytest.raises(ValueError, match="differ in shape"):
        distill_loss(logits, logits[:, :4])


def test_parity_with_open_clip_distill_clip_loss() -> None:
    open_clip_loss = pytest.importorskip("open_clip.loss")
    student_i, student_t = features(8, 16, 0), features(8, 16, 1)  # the teacher is wider: only logits meet
    teacher_i, teacher_t = features(8, 32, 2), features(8, 32, 3)
    scale, teacher_scale = torch.tensor(14.0, dtype=torch.float64), torch.tensor(30.0, dtype=torch.float64)
    contrastive, distill = open_clip_loss.DistillClipLoss()(student_i, student_t, scale, teacher_i, teacher_t,
                                                            teacher_scale)
    ours = clip_distill_loss(student_i, student_t, scale, teacher_i, teacher_t, teacher_scale, form="cross_entropy")
    assert ours.item() == pytest.approx(distill.item(), abs=1e-6)
    assert clip_loss(student_i, student_t, scale).item() == pytest.approx(contrastive.item(), abs=1e-6)
    # KL = OpenCLIP's cross-entropy − the teacher's mean entropy (over both directions); the same gradient.
    t_i2t = teacher_scale * teacher_i @ teacher_t.T
    entropy = sum(-(lg.softmax(1) * lg.log_softmax(1)).sum(1).mean() for lg in (t_i2t, t_i2t.T)) / 2
    kl = clip_distill_loss(student_i, student_t, scale, teacher_i, teacher_t, teacher_scale, form="kl")
    assert kl.item() == pytest.approx(distill.item() - entropy.item(), abs=1e-6)
    grads = []
    for form in ("kl", "cross_entropy"):
        s_i = student_i.clone().requires_grad_(True)
        clip_distill_loss(s_i, student_t, scale, teacher_i, teacher_t, teacher_scale, form=form).backward()
        grads.append(s_i.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


def test_teacher_equal_to_student_adds_nothing_at_the_first_step(tmp_path: Path, one_thread: None) -> None:
    torch.manual_seed(2)
    model = build_model(load_config(None, parse_overrides(ARCH)).model_config())
    source = save_pretrained(model, tmp_path / "student")
    runs = {}
    for name, extra in [("plain", []), ("kl", [f"distill.teacher={source}", "distill.weight=2.0"]),
                        ("ce", [f"distill.teacher={source}", "distill.form=cross_entropy"])]:
        cfg = load_config(None, parse_overrides([*RUN, f"model={source}", f"output_dir={tmp_path / name}", *extra]))
        runs[name] = train(cfg, Runtime()).losses
    assert runs["kl"][0][1] == pytest.approx(runs["plain"][0][1], abs=1e-5)  # KL(student ‖ itself) = 0
    assert runs["ce"][0][1] > runs["plain"][0][1] + 0.1  # plus the teacher's entropy (log 8 at most)
    assert runs["ce"][0][1] < runs["plain"][0][1] + torch.log(torch.tensor(8.0)).item() + 1e-5
    # the term is logged on its own, unweighted: 0 for KL(student ‖ itself), the entropy gap for cross_entropy
    logged = {name: json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0]) for name in runs}
    assert "distill" not in logged["plain"] and logged["plain"]["step"] == 1
    assert logged["kl"]["distill"] == pytest.approx(0.0, abs=1e-6)
    assert logged["ce"]["distill"] == pytest.approx(runs["ce"][0][1] - runs["plain"][0][1], abs=1e-5)


def test_a_teacher_of_another_width_trains_the_student_and_stays_as_it_was(tmp_path: Path, one_thread: None) -> None:
    torch.manual_seed(3)
    teacher = build_model(load_config(None, parse_overrides(
        [*ARCH, "model_overrides.embed_dim=24", "model_overrides.vision.width=32"])).model_config())
    source = save_pretrained(teacher, tmp_path / "teacher")
    cfg = load_config(None, parse_overrides([*RUN, *ARCH, f"distill.teacher={source}", f"output_dir={tmp_path / 'r'}"]))
    prepared = prepare(cfg)
    assert prepared.teacher is not None and not prepared.teacher.training
    before = {k: v.clone() for k, v in prepared.teacher.state_dict().items()}
    result = train(cfg, Runtime(), prepared=prepared)
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    assert all(torch.equal(v, before[k]) for k, v in prepared.teacher.state_dict().items())
    assert not any(p.requires_grad or p.grad is not None for p in prepared.teacher.parameters())


def test_a_teacher_that_takes_other_input_is_a_config_error(tmp_path: Path) -> None:
    torch.manual_seed(4)
    teacher = build_model(load_config(None, parse_overrides([*ARCH, "model_overrides.vision.image_size=48"]))
                          .model_config())
    source = save_pretrained(teacher, tmp_path / "teacher")
    with pytest.raises(ConfigError, match="48-px"):
        prepare(load_config(None, parse_overrides([*RUN, *ARCH, f"distill.teacher={source}"])))
    with pytest.raises(ConfigError, match="distill.teacher"):
        prepare(load_config(None, parse_overrides([*RUN, *ARCH, f"distill.teacher={tmp_path / 'missing'}"])))
    with pytest.raises(ConfigError, match="siglip_exchange"):
        load_config(None, parse_overrides(["model=siglip-tiny", "loss=siglip", "siglip_exchange=ring",
                                           "distill.teacher=siglip-tiny"]))
