"""The PTQ benchmark's grid, record file and report (bench/ptq; no model runs)."""

import json
import multiprocessing as mp
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ptq"
sys.path.insert(0, str(BENCH))

from grid import grid, select  # noqa: E402
from records import append_record, done_keys, read_records  # noqa: E402
from report import best_per_scheme, markdown, ratios_vs_rtn, write_report  # noqa: E402


def test_grid_keys_are_unique_and_targets_come_first():
    rows = grid()
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys))
    groups = [r.group for r in rows]
    assert groups.index("w2") > max(i for i, g in enumerate(groups) if g == "main")
    assert groups.index("sweep") > max(i for i, g in enumerate(groups) if g == "w2")
    main = {(r.method, r.scheme) for r in rows if r.group == "main"}
    for scheme in ("w4a16", "w3a16", "w4a8"):
        assert {(m, scheme) for m in ("rtn", "gptq", "awq", "flexround", "lrq")} <= main
    assert {("smoothquant", "w8a8"), ("lrq", "w8a8")} <= main
    lrq_w8a8 = next(r for r in rows if r.key == "lrq|w8a8|")
    assert lrq_w8a8.options["smooth_alpha"] == 0.5


def test_select_filters():
    rows = grid(sweep_iters=(5, 7))
    learned = select(rows, methods="lrq,flexround")
    assert learned and {r.method for r in learned} == {"lrq", "flexround"}
    rest = select(rows, exclude_methods="lrq,flexround", groups="main")
    assert not {r.key for r in rest} & {r.key for r in learned}
    sweep = select(rows, groups="sweep")
    assert [r.variant for r in sweep] == ["iters=5", "iters=5", "iters=7", "iters=7"]
    assert {r.method for r in sweep} == {"lrq", "flexround"} and all(r.scheme == "w3a16" for r in sweep)
    assert all(r.peer for r in select(rows, methods="gptq,awq"))


def _append_many(path, tag, n):
    for i in range(n):
        append_record({"method": f"{tag}{i}", "scheme": "w4a16", "ppl_wiki_eval": float(i)}, Path(path))


def test_records_replace_by_key_and_survive_concurrent_writers(tmp_path):
    path = tmp_path / "ptq.json"
    append_record({"method": "rtn", "scheme": "w4a16", "ppl_wiki_eval": 30.0}, path)
    append_record({"method": "rtn", "scheme": "w4a16", "ppl_wiki_eval": 29.0}, path)
    assert [r["ppl_wiki_eval"] for r in read_records(path)] == [29.0]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, tag, 15)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert len(done_keys(path)) == 31  # no row lost to a read-modify-write race
    json.loads(path.read_text())


ROWS = [
    {"method": "fp", "scheme": "fp32", "variant": "", "ppl_wiki_eval": 20.0, "ppl_tokens": 16384},
    {"method": "rtn", "scheme": "w4a16", "variant": "", "ppl_wiki_eval": 40.0, "seconds": 5.0},
    {"method": "gptq", "scheme": "w4a16", "variant": "", "ppl_wiki_eval": 30.0, "seconds": 60.0},
    {"method": "lrq", "scheme": "w4a16", "variant": "", "ppl_wiki_eval": 28.0, "seconds": 600.0,
     "learned_params": 1_000_000, "options": {"iters": 20}},
    {"method": "lrq", "scheme": "w4a16", "variant": "iters=10", "ppl_wiki_eval": 25.0, "seconds": 300.0,
     "options": {"iters": 10}},
    {"method": "lrq", "scheme": "w8a8", "variant": "", "ppl_wiki_eval": 21.0},
]


def test_report_ratios_best_and_sweep(tmp_path):
    ratio = ratios_vs_rtn(ROWS)
    assert ratio[("gptq", "w4a16", "")] == pytest.approx(0.75)
    assert ("lrq", "w8a8", "") not in ratio  # no RTN row at w8a8: no ratio
    assert best_per_scheme(ROWS) == {"w4a16": "lrq", "w8a8": "lrq"}  # the sweep row does not compete
    md = markdown(ROWS)
    assert "| w4a16 | LRQ | " in md and "**28.00**" in md and "0.700" in md
    assert "Iterations sweep" in md and "| w4a16 | LRQ | 10 | 25.00 |" in md
    assert "## Summary" in md and "| w4a16 | " in md.split("## Summary")[1]
    results = tmp_path / "ptq.json"
    write_report(ROWS, results)
    assert (tmp_path / "ptq.md").read_text() == md
    assert (tmp_path / "ptq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refresh_picks_only_rows_evaluated_smaller_than_asked():
    from argparse import Namespace

    from run import stale

    rows = {r.key: r for r in grid()}
    args = Namespace(ppl_tokens=40960, zeroshot_limit=100)
    small = {"ppl_tokens": 16352}
    assert stale(rows["rtn|w4a16|"], small, args) == (True, True)
    done = {"ppl_tokens": 40880, "ppl_max_tokens": 40960, "zeroshot_limit": 100}
    assert stale(rows["rtn|w4a16|"], done, args) == (False, False)
    # sweep rows report perplexity only
    assert stale(rows["lrq|w3a16|iters=10"], {"ppl_tokens": 40960}, args) == (False, False)
    assert stale(rows["rtn|w4a16|"], done, Namespace(ppl_tokens=40960, zeroshot_limit=0)) == (False, False)


def test_report_marks_cells_evaluated_on_fewer_tokens():
    rows = [{"method": m, "scheme": "w4a16", "ppl_wiki_eval": p, "ppl_tokens": n}
            for m, p, n in (("rtn", 40.0, 40960), ("gptq", 30.0, 40960), ("lrq", 29.0, 16352))]
    md = markdown(rows)
    assert "29.00 (16352 tok)" in md and "30.00 (" not in md and "40960 tokens" in md


def _fake_quantize_rows(model, bits):
    """Round every block linear onto an asymmetric per-row grid of 2^bits levels (what AutoRound's
    ``fake`` export holds), in place."""
    import torch

    from compactlm.models.specs import get_blocks

    with torch.no_grad():
        for block in get_blocks(model):
            for mod in block.modules():
                if isinstance(mod, torch.nn.Linear):
                    w = mod.weight
                    lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
                    step = (hi - lo) / (2**bits - 1)
                    w.copy_(torch.round((w - lo) / step) * step + lo)


def test_autoround_peer_folder_reloads_into_our_model(tmp_path):
    import torch
    from safetensors.torch import save_file

    from compactlm.models.tiny import tiny_model
    from lrq_sweep import load_autoround

    peer = tiny_model("llama")
    _fake_quantize_rows(peer, 3)
    folder = tmp_path / "autoround-w3a16-it20"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in peer.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "peer_meta.json").write_text(json.dumps({"seconds": 1.5, "settings": {"bits": 3}, "versions": {},
                                                      "threads": 1}))
    ours = tiny_model("llama")
    torch.manual_seed(1)
    for p in ours.parameters():  # a different model until the peer's weights are loaded
        p.data.normal_()
    fields = load_autoround(ours, folder, bits=3)
    for (k, a), b in zip(peer.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), k
    linears = [m for m in ours.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert fields["learned_params"] == sum(m.weight.numel() + 2 * m.weight.shape[0] for m in linears)
    assert fields["seconds"] == 1.5
    with pytest.raises(SystemExit, match="more than 2\\^2"):  # 8 levels are not a 2-bit grid
        load_autoround(tiny_model("llama"), folder, bits=2)
    with pytest.raises(SystemExit, match="not found"):
        load_autoround(ours, tmp_path / "missing", bits=3)


def test_autoround_w4a8_reads_the_weight_only_cell_and_quantizes_every_block_input():
    import types

    import torch

    from compactlm.models.tiny import tiny_model
    from lrq_sweep import autoround_dir, quantize_inputs

    args = types.SimpleNamespace(scheme="w4a8", iters=20, seed=1)
    assert autoround_dir(args).name == "autoround-w4a16-it20-s1"
    args.scheme = "w3a16"
    assert autoround_dir(args).name == "autoround-w3a16-it20-s1"
    args.scheme = "w8a8"  # static per-tensor ranges: AutoRound's weight-only tuning never calibrated them
    with pytest.raises(SystemExit, match="static activation ranges"):
        autoround_dir(args)

    model = tiny_model("llama").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    assert quantize_inputs(model, "w4a16") == 0  # weight-only: nothing to quantize
    linears = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert quantize_inputs(model, "w4a8") == len(linears)
    seen = []
    for m in linears:  # registered after the quantizing hooks, so they see the quantized inputs
        m.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    with torch.no_grad():
        out = model(ids).logits
    assert len(seen) == len(linears)
    for x in seen:  # every token's input on its own asymmetric 8-bit grid: min + k * (max - min) / 255
        rows = x.reshape(-1, x.shape[-1])
        lo, hi = rows.min(-1, keepdim=True).values, rows.max(-1, keepdim=True).values
        k = (rows - lo) / ((hi - lo) / 255)
        assert torch.allclose(k, k.round(), atol=2e-2), "inputs are not on a per-token 8-bit grid"
    assert not torch.equal(out, ref)
    assert torch.allclose(out, ref, atol=0.05 * ref.abs().max().item())  # 8-bit inputs: close, not equal


def _sweep_record(row, method, seed, holdout, wiki, c4, iters=20, params=100, scheme="w3a16"):
    return {"row": row, "method": method, "scheme": scheme, "variant": f"{row}|{scheme}|iters={iters}|seed={seed}",
            "seed": seed, "learned_params": params, "seconds": 10.0 + seed, "budget": f"{iters} iters/block x 30 blocks, x",
            "holdout_loss_after_sum": holdout, "train_loss_after_sum": holdout and holdout / 2, "ppl_wiki_eval": wiki,
            "ppl_c4_sample": c4, "command": "python bench/ptq/lrq_sweep.py", "options": {"lr": 3e-3}}


def test_lrq_sweep_report_groups_seeds_and_selects_on_held_out_loss(tmp_path):
    from lrq_sweep import grouped, selection_lines, write_report

    records = [
        {**_sweep_record("fp", "fp", 0, None, 20.0, 40.0, params=0), "scheme": "fp32", "budget": "no quantization"},
        _sweep_record("flexround", "flexround", 0, 50.0, 30.0, 60.0, params=100),
        _sweep_record("flexround", "flexround", 1, 70.0, 34.0, 64.0, params=100),
        # LRQ: the variant with the higher held-out loss has the better perplexity; the rule must not look
        _sweep_record("lrq-all", "lrq", 0, 40.0, 40.0, 80.0, params=40),
        _sweep_record("lrq-authors", "lrq", 0, 90.0, 25.0, 50.0, params=90),
    ]
    groups = grouped(records)
    assert [len(g) for g in groups] == [1, 2, 1, 1]  # fp first; the two flexround seeds are one group
    lines = selection_lines(records)
    assert len(lines) == 1 and "`lrq-all`" in lines[0] and "**not lower**" in lines[0] and "0.40x" in lines[0]
    results = tmp_path / "ptq-lrq.json"
    write_report(records, results)
    md = results.with_suffix(".md").read_text()
    assert "| flexround | w3a16 | 20 iters/block x 30 blocks | 0, 1 | 100 | 30 ± 7 | 60 ± 14 | 32.00 ± 2.83 |" in md
    assert results.with_suffix(".png").stat().st_size > 0


def test_lrq_sweep_sums_block_curves_and_finds_where_lrq_crosses_below_flexround(tmp_path):
    from lrq_sweep import crossing_lines, curve_fields, write_report

    blocks = [{"curve": [[0, 4.0, 8.0], [10, 2.0, 6.0], [20, 1.0, 5.0]]},
              {"curve": [[0, 1.0, 2.0], [10, 0.5, 1.5], [20, 0.25, 1.0]]}]
    assert curve_fields(blocks) == {"curve_iters": [0, 10, 20], "curve_train_sum": [5.0, 2.5, 1.25],
                                    "curve_holdout_sum": [10.0, 7.5, 6.0]}
    assert curve_fields([blocks[0], {}]) == {}  # a resumed block without its curve: no partial sum
    flex = {**_sweep_record("flexround", "flexround", 0, 6.0, 30.0, 60.0, iters=20), **curve_fields(blocks)}
    # LRQ starts above FlexRound's held-out loss and ends below it
    lrq = {**_sweep_record("lrq-all", "lrq", 0, 5.0, 31.0, 61.0, iters=20, params=40),
           "curve_iters": [0, 10, 20], "curve_train_sum": [6.0, 4.0, 2.5], "curve_holdout_sum": [12.0, 7.0, 5.0]}
    other_seed = {**lrq, "seed": 1, "variant": "lrq-all|w3a16|iters=20|seed=1"}
    lines = crossing_lines([flex, lrq, other_seed])
    assert len(lines) == 1 and "below FlexRound's from iteration 10" in lines[0] and "4.8x" in lines[0] and "2.0x" in lines[0]
    never = {**lrq, "curve_holdout_sum": [12.0, 8.0, 7.0]}
    assert "never below" in crossing_lines([flex, never])[0]
    results = tmp_path / "ptq-lrq.json"
    write_report([flex, lrq], results)
    assert "## Held-out block-loss curves" in results.with_suffix(".md").read_text()


def test_lrq_sweep_reruns_a_done_row_only_when_asked_for_a_larger_zero_shot(tmp_path, monkeypatch):
    import lrq_sweep

    results = tmp_path / "ptq-lrq.json"
    fp = {**_sweep_record("fp", "fp", 0, None, 20.0, 40.0, params=0), "scheme": "fp32", "budget": "no quantization"}
    append_record(fp, results)
    calls = []
    monkeypatch.setattr(lrq_sweep.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or type("P", (), {"returncode": 0}))
    lrq_sweep.main(["--rows", "fp", "--results", str(results)])
    assert calls == []  # done, and no zero-shot asked
    lrq_sweep.main(["--rows", "fp", "--results", str(results), "--zeroshot-limit", "250"])
    assert len(calls) == 1 and calls[0][-2:] == ["--row", "fp"]
    append_record({**fp, "zeroshot_avg": 0.5, "zeroshot_limit": 250}, results)
    lrq_sweep.main(["--rows", "fp", "--results", str(results), "--zeroshot-limit", "100"])
    assert len(calls) == 1  # a record at 250 examples per task covers a request for 100


def test_lrq_sweep_time_of_a_replayed_row_is_its_blocks_time_not_the_replay():
    from lrq_sweep import reconstruction_seconds

    blocks = [{"seconds": 100.0}, {"seconds": 150.5}]
    assert reconstruction_seconds({"seconds": 3.2, "resumed_blocks": 2, "blocks": blocks}) == 250.5
    assert reconstruction_seconds({"seconds": 260.0, "resumed_blocks": 0, "blocks": blocks}) == 260.0


def test_lrq_sweep_proxy_table_ranks_block_losses_against_perplexity(tmp_path):
    from lrq_sweep import proxy_lines, spearman, write_report

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0 and spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # the last block orders the rows as perplexity does; the sum (driven by block 0 here) the reverse way
    rows = [{**_sweep_record(f"r{k}", "lrq", 0, 1.0, 20.0 + k, 40.0 + k), "holdout_loss_after": [100.0 - 2 * k, 1.0 + k],
             "train_loss_after": [50.0, 0.5 + k]} for k in range(4)]
    lines = proxy_lines(rows)
    assert lines[2] == "| w3a16 | 4 | -1.00 | -1.00 | 1.00 | 1.00 | 1.00 | 1.00 |"
    assert proxy_lines(rows[:3]) == []  # too few rows to rank
    results = tmp_path / "ptq-lrq.json"
    write_report(rows, results)
    assert "## Which block loss predicts perplexity" in results.with_suffix(".md").read_text()


def test_lrq_sweep_report_sets_a_superseded_record_beside_its_rerun(tmp_path):
    from lrq_sweep import write_report

    old = _sweep_record("flexround", "flexround", 0, 500.0, 42.0, 100.0, iters=200)
    new = {**old, "ppl_wiki_eval": 43.0, "ppl_c4_sample": 110.0, "holdout_loss_after_sum": 400.0}
    results = tmp_path / "ptq-lrq.json"
    (tmp_path / "ptq-lrq-reruns.json").write_text(json.dumps([old]))
    write_report([new], results)
    md = results.with_suffix(".md").read_text()
    assert "| flexround | w3a16 | 200 iters/block x 30 blocks | 42.00 / 100.00 | 43.00 / 110.00 | +10.0% | 500 / 400 |" in md


def test_lrq_sweep_pairs_seeds_and_keeps_zero_shot_of_the_seeds_that_ran_it(tmp_path):
    from lrq_sweep import paired_note, selection_lines, zs

    flex = [_sweep_record("flexround", "flexround", s, 50.0, 30.0, c4, iters=200) for s, c4 in ((0, 100.0), (1, 110.0), (2, 90.0))]
    lrq = [_sweep_record("lrq-authors", "lrq", s, 40.0, 31.0, c4, iters=200, params=90) for s, c4 in ((0, 110.0), (1, 99.0), (2, 99.0))]
    note = paired_note(lrq, flex)
    assert "0: +10.0%, 1: -10.0%, 2: +10.0%" in note and "LRQ lower at 1 of 3 seeds" in note
    assert paired_note(lrq[:1], flex) == ""  # one shared seed is no pairing
    assert "paired by seed" in selection_lines(flex + lrq)[0]
    flex[0].update(zeroshot_avg=0.45, zeroshot_limit=250)
    assert zs(flex) == "45.0 (250, seed 0)" and zs(flex[:1]) == "45.0 (250)" and zs(lrq) == ""
    flex[1].update(zeroshot_avg=0.43, zeroshot_limit=250)
    assert zs(flex) == "44.0 ± 1.4 (250, seeds 0, 1)"
