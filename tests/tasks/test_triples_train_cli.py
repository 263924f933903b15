"""``compactlm re train | eval | quantize`` end to end on a tiny local corpus and a tiny BERT (offline)."""

import json

import pytest

from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.models.tiny import tiny_model


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    tiny_model("bert", head="base").save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d


@pytest.fixture
def corpus(tmp_path):
    recs = [{"text": f"Town{i} lies in Land{i % 4} .", "triple_list": [[f"Town{i}", "located in", f"Land{i % 4}"]],
             "entity_types": {f"Town{i}": "location", f"Land{i % 4}": "country"}} for i in range(30)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _train(run_cli, corpus, encoder_dir, out, *extra):
    return run_cli(["re", "train", "--data", str(corpus), "--model", str(encoder_dir), "--steps", "12",
                    "--batch-size", "4", "--lr", "3e-3", "--eval-every", "6", "--device", "cpu", "--no-progress",
                    "--out", str(out), *extra])


def test_re_train_eval_quantize_prune(tmp_path, run_cli, corpus, encoder_dir):
    run = tmp_path / "run"
    code, out, err = _train(run_cli, corpus, encoder_dir, run, "--augment-train", "1", "--seed", "1")
    assert code == 0, err
    assert "selected" in out and "unseen" in out
    assert not (tmp_path / "run.ckpt").exists()  # removed once the run is written
    report = json.loads((run / "report.json").read_text())
    assert report["train_sentences"] == 48  # 24 training sentences + 24 swapped copies
    assert {"test", "test_augmented"} <= set(report) and report["test_augmented"]["unseen_share"] == 1.0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["command"] == "re train" and cfg["augment_train"] == 1.0 and cfg["seed"] == 1

    code, out, err = run_cli(["re", "eval", "--run", str(run), "--test", "test_augmented", "--json"])
    assert code == 0, err
    scores = json.loads(out)
    assert scores["test"] == "test_augmented" and scores["seen"]["gold"] == 0
    assert scores["all"] == report["test_augmented"]["all"]  # eval reproduces what training reported
    code, out, err = run_cli(["re", "eval", "--run", str(run)])
    assert code == 0 and "unseen share" in out and out.count("\n") == 5

    q = tmp_path / "q"
    code, out, err = run_cli(["re", "quantize", "--run", str(run), "--scheme", "w4a16", "--out", str(q)])
    assert code == 0, err
    assert "w4a16 RTN" in out
    assert (q / "encoder" / "quantization.json").is_file()
    code, out, err = run_cli(["re", "eval", "--run", str(q), "--test", "test", "--json"])
    assert code == 0, err
    assert json.loads(out)["sentences"] == report["test"]["sentences"]
    f = tmp_path / "f"  # a learned method, calibrated on the run's validation sentences
    code, out, err = run_cli(["re", "quantize", "--run", str(run), "--method", "flexround", "--iters", "3",
                              "--calib-samples", "4", "--calib-seq-len", "8", "--out", str(f)])
    assert code == 0, err
    assert "w4a16 FlexRound" in out and not (tmp_path / "f.work").exists()
    rep = json.loads((f / "report.json").read_text())
    assert rep["method"] == "flexround" and rep["calib"] == {"source": "validation", "samples": 4, "seq_len": 8}
    assert len(rep["block_losses"]) == 2 and json.loads((f / "config.json").read_text())["iters"] == 3
    code, out, err = run_cli(["re", "eval", "--run", str(f), "--json"])
    assert code == 0, err

    p = tmp_path / "p"
    code, out, err = _train(run_cli, corpus, run, p, "--keep-layers", "1")
    assert code == 0, err
    assert json.loads((p / "extractor.json").read_text())["layers"] == 1
    code, out, err = run_cli(["re", "eval", "--run", str(p), "--test", str(corpus), "--json"])
    assert code == 0, err
    assert json.loads(out)["sentences"] == 30


def test_re_train_and_eval_errors(tmp_path, run_cli, corpus, encoder_dir):
    code, _, err = run_cli(["re", "eval", "--run", str(tmp_path / "missing")])
    assert code == 2 and "--run" in err and "not a directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["re", "eval", "--run", str(tmp_path)])
    assert code == 2 and "no extractor.json" in err
    code, _, err = run_cli(["re", "train", "--data", str(corpus), "--split", "shuffled", "--out", str(tmp_path / "o")])
    assert code == 2 and "--split" in err
    code, _, err = _train(run_cli, corpus, encoder_dir, tmp_path / "o", "--unseen-share", "0.2")
    assert code == 2 and "--unseen-share: not used by --split standard" in err
    code, _, err = _train(run_cli, corpus, encoder_dir, tmp_path / "o", "--keep-layers", "0")
    assert code == 2 and "--keep-layers" in err and not (tmp_path / "o").exists()
    run = tmp_path / "run"
    assert _train(run_cli, corpus, encoder_dir, run)[0] == 0
    code, _, err = run_cli(["re", "eval", "--run", str(run), "--test", "nonsense"])
    assert code == 2 and "--test" in err and "test_augmented" in err
    code, _, err = run_cli(["re", "eval", "--run", str(run), "--test", str(tmp_path / "nope.jsonl")])
    assert code == 2 and "not found" in err
    code, _, err = run_cli(["re", "quantize", "--run", str(run), "--scheme", "w8a8", "--out", str(tmp_path / "q")])
    assert code == 2 and "weight-only" in err
    code, _, err = run_cli(["re", "quantize", "--run", str(run), "--iters", "5", "--out", str(tmp_path / "q")])
    assert code == 2 and "--iters: only used by --method flexround / lrq" in err
    code, _, err = run_cli(["re", "quantize", "--run", str(run), "--method", "lrq", "--calib-seq-len", "100000",
                            "--out", str(tmp_path / "q")])
    assert code == 2 and "--calib-seq-len" in err.splitlines()[-1] and "Traceback" not in err
    code, _, err = _train(run_cli, corpus, encoder_dir, run)
    assert code == 2 and "already exists" in err


def test_prepare_data_reads_re_data_folders_and_never_leaks_test_triples(tmp_path, run_cli, corpus):
    from compactlm.tasks.triples import prepare_data, triple_set

    prep = prepare_data(str(corpus), augment_train=2.0, augment_seed=4)
    assert prep.train_added and prep.test_augmented
    leaked = triple_set(prep.train_added) & (triple_set(prep.splits.test) | triple_set(prep.test_augmented))
    assert not leaked
    assert len(prep.train_all) == len(prep.train) + len(prep.train_added)
    folder = tmp_path / "data"
    assert run_cli(["re", "data", "--data", str(corpus), "--augment-train", "1", "--out", str(folder)])[0] == 0
    again = prepare_data(str(folder))  # train_augmented.jsonl / test_augmented.jsonl do not confuse the reader
    assert [e.sentence for e in again.splits.test] == [e.sentence for e in prepare_data(str(corpus)).splits.test]
    assert again.stats["augmented_test"]["source"] == "given" and len(again.splits.train) == len(prep.train)
    assert prepare_data(str(folder), split="sifted").test_augmented == again.test_augmented
