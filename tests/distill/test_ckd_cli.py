"""``compactlm distill --task`` and ``compactlm dynabert train|extract`` end to end on a tiny BERT."""

import json

import pytest
import torch
import transformers as T

from compactlm.data import classification
from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.models import load_model
from compactlm.models.tiny import tiny_model


@pytest.fixture
def teacher_dir(tmp_path):
    d = tmp_path / "teacher"
    tiny_model("bert", head="sequence-classification", num_hidden_layers=4).save_pretrained(d / "model")
    char_tokenizer().save_pretrained(d / "model")
    return d


@pytest.fixture
def local_sarcasm(monkeypatch):
    """Synthetic headlines in place of the sarcasm rows (test 40 / validation 20 / train 60)."""
    rows = [classification.Example(text=f"headline {i} about {'cats' if i % 3 else 'dogs'}", label=i % 2) for i in range(120)]
    monkeypatch.setitem(classification._READERS, "sarcasm", lambda: rows)
    task = classification.TASKS["sarcasm"]
    monkeypatch.setitem(classification.TASKS, "sarcasm", classification.ClassificationTask(
        task.name, task.labels, task.description, 40, 20, 24))
    classification._splits.cache_clear()
    yield
    classification._splits.cache_clear()


def test_distill_task_writes_a_smaller_student(run_cli, teacher_dir, local_sarcasm, tmp_path):
    out = tmp_path / "ckd"
    code, stdout, err = run_cli(["distill", "--task", "sarcasm", "--teacher", str(teacher_dir), "--student-layers", "2",
                                 "--student-width", "0.5", "--loss", "ckd", "--steps", "3", "--batch-size", "8",
                                 "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and report["student_layers"] == 2 and report["student_heads"] == 2
    assert report["student_params"] < report["teacher_params"]
    assert {t for t, _ in report["terms"]} == {"kd", "wr_dist", "wr_angle", "ltr_dist", "ltr_angle"}
    model, tok = load_model(str(out))
    assert model.config.num_hidden_layers == 2 and tok is not None
    plain = T.AutoModelForSequenceClassification.from_pretrained(out / "model", trust_remote_code=True)
    assert sum(p.numel() for p in plain.parameters()) == report["student_params"]
    # the decoder defaults (--steps 100, --batch-size 4) do not leak into the encoder run; typed decoder flags are refused
    code, _, err = run_cli(["distill", "--task", "sarcasm", "--teacher", str(teacher_dir), "--samples", "9",
                            "--out", str(tmp_path / "x")])
    assert code == 2 and "--samples" in err
    code, _, err = run_cli(["distill", "--task", "sarcasm", "--teacher", str(teacher_dir), "--loss", "bogus",
                            "--out", str(tmp_path / "y")])
    assert code == 2 and "--loss" in err


def test_distill_terms_and_recipe(run_cli, teacher_dir, local_sarcasm, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("student_layers: 2\nterms: kd:1,hidden:0.5\nsteps: 2\nbatch_size: 8\n")
    out = tmp_path / "kdh"
    code, _, err = run_cli(["distill", "--task", "sarcasm", "--teacher", str(teacher_dir), "--recipe", str(recipe),
                            "--steps", "3", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and report["terms"] == [["kd", 1.0], ["hidden", 0.5]]  # the typed flag wins


def test_dynabert_train_and_extract(run_cli, teacher_dir, local_sarcasm, tmp_path):
    out = tmp_path / "dyna"
    code, _, err = run_cli(["dynabert", "train", "--model", str(teacher_dir), "--task", "sarcasm", "--steps", "2",
                            "--batch-size", "8", "--widths", "1,0.5", "--depths", "1,0.5", "--importance", "gradient",
                            "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert {(r["width"], r["depth"]) for r in report["subnetworks"]} == {(1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.5, 0.5)}
    assert set(report["stages"]) == {"width", "depth"}
    sub = tmp_path / "sub"
    code, _, err = run_cli(["dynabert", "extract", "--model", str(out), "--width", "0.5", "--depth", "0.5",
                            "--task", "sarcasm", "--out", str(sub)])
    assert code == 0, err
    rep = json.loads((sub / "report.json").read_text())
    row = next(r for r in report["subnetworks"] if (r["width"], r["depth"]) == (0.5, 0.5))
    assert rep["params"] == row["params"] < rep["full_params"] and rep["val_acc"] == row["val_acc"]
    model, _ = load_model(str(sub))
    assert model.config.num_hidden_layers == 2 and model.config.num_attention_heads == 2
    ids = torch.randint(3, 100, (2, 7))
    assert model(input_ids=ids).logits.shape == (2, 2)
