"""``compactlm re data`` on a local corpus (offline)."""

import json

from compactlm.tasks.triples import read_file, triple_set, unseen_share


def _corpus(folder):
    folder.mkdir()
    recs = []
    for i in range(12):
        recs.append({"text": f"City{i} is located in Country{i % 3} , near Town{i} .",
                     "triple_list": [[f"City{i}", "located in", f"Country{i % 3}"]],
                     "entity_types": {f"City{i}": "location", f"Country{i % 3}": "country"}})
    path = folder / "all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_re_data_writes_splits_and_stats(tmp_path, run_cli):
    src = _corpus(tmp_path / "src")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["re", "data", "--data", str(src), "--split", "sifted", "--out", str(out),
                                 "--augment-train", "1", "--seed", "3"])
    assert code == 0, err
    assert "test unseen share 1.000" in stdout
    train, test = read_file(out / "train.jsonl"), read_file(out / "test.jsonl")
    assert not (triple_set(train) & triple_set(test))  # sifted
    stats = json.loads((out / "stats.json").read_text())
    assert stats["summary"]["train"]["sentences"] == len(train) and stats["split"] == "sifted"
    aug = read_file(out / "test_augmented.jsonl")
    assert aug and unseen_share(aug, train) == 1.0
    assert len(read_file(out / "train_augmented.jsonl")) == 2 * len(train)


def test_re_data_flag_errors(tmp_path, run_cli):
    src = _corpus(tmp_path / "src")
    code, _, err = run_cli(["re", "data", "--data", str(src), "--unseen-share", "0.3", "--out", str(tmp_path / "o")])
    assert code == 2 and "--unseen-share: not used by --split standard" in err
    code, _, err = run_cli(["re", "data", "--data", str(src), "--facts", "x.json", "--out", str(tmp_path / "o")])
    assert code == 2 and "--facts" in err
    code, _, err = run_cli(["re", "data", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert code == 2 and "not found" in err and not (tmp_path / "o").exists()
