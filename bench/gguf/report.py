"""``bench/results/gguf.md`` / ``gguf.png`` from ``gguf.json``."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _share(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def write_report(rows: list[dict]) -> None:
    if not rows:
        return
    get = lambda name, t: next((r for r in rows if r["row"] == name and r["threads"] == t), None)  # noqa: E731
    names = list(dict.fromkeys(r["row"] for r in rows))
    fp = get("fp", 2) or get("fp", 1)
    refs = {q: get(f"llamacpp-{q}", 2) or get(f"llamacpp-{q}", 1) for q in ("q4_0", "q8_0")}
    lines = ["# GGUF in llama.cpp: compactlm's codes against llama.cpp's own Q4_0 (smollm2-135m)", "",
             "Produced by `.venv/bin/python bench/gguf/run.py` (file commands in `gguf.json`). PPL computed by "
             f"llama.cpp (llama-cpp-python {rows[0]['llama_cpp_python']}) on {rows[0]['ppl_tokens']} scored "
             "`wiki-eval` tokens (512-token windows, the ids compactlm's evaluator uses); decode = 64 greedy tokens after a 512-token prompt, median of "
             f"{rows[0]['reps']} after a warm-up; logit diff = largest |llama.cpp − compactlm| logit on the first window "
             "(llama.cpp quantizes activations to 8-bit blocks in its dot products, so it is not bit-exact).", "",
             "| file | MB | PPL (llama.cpp) | ΔPPL vs FP | ΔPPL ÷ llama.cpp's own (same type) | decode tok/s 1 thr | 2 thr | "
             "compactlm in-process decode 1 / 2 thr | max logit diff | codes = llama.cpp's (same type) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        r = get(n, 2) or get(n, 1)
        d = None if fp is None else r["ppl_llamacpp"] - fp["ppl_llamacpp"]
        ref = refs.get(n.rsplit("-", 1)[-1])
        ref_d = None if (ref is None or fp is None) else ref["ppl_llamacpp"] - fp["ppl_llamacpp"]
        # a ratio only where llama.cpp's own file loses something measurable (not at Q8_0: |Δ| ~ 0.01)
        ratio = None if (d is None or ref_d is None or n == "fp" or ref_d < 0.1) else d / ref_d
        t1, t2 = get(n, 1), get(n, 2)
        diff = r.get("max_logit_diff_vs_compactlm")
        lines.append(f"| {n} | {r['file_mb']:.1f} | {r['ppl_llamacpp']:.3f} | {'–' if d is None else f'{d:+.3f}'} | "
                     f"{'–' if ratio is None else f'{ratio:.2f}'} | {t1['decode_tok_s'] if t1 else '–'} | "
                     f"{t2['decode_tok_s'] if t2 else '–'} | "
                     f"{(t1 or {}).get('compactlm_decode_tok_s') or '–'} / {(t2 or {}).get('compactlm_decode_tok_s') or '–'} | "
                     f"{'–' if diff is None else f'{diff:.3f}'} | {_share(r.get('codes_same_as_llamacpp'))} |")
    lines += ["", "codes = llama.cpp's: share of the weight codes in the file identical to those llama.cpp's "
              "quantizer wrote to the same type (`codes_agreement` in run.py; rows recorded before that column have –). "
              "`rtn-signedmax` is RTN with llama.cpp's own scale rule (`--clip signed-max`, d = x_e / −8). "
              "`llamacpp-imatrix-q4_0` is llama.cpp's Q4_0 with an importance matrix (mean squared input "
              "activation per column, from compactlm's calibration windows) and `pure` (every block linear Q4_0). "
              "`actmse` rows start from `--clip act-mse` (the same activation weighting, in compactlm's step-size "
              "search); `-it0` learns nothing after it (FlexRound's engine at 0 iterations). ΔPPL ratios are left "
              "out at Q8_0, where llama.cpp's own file is within 0.02 PPL of FP. Decode speeds of a row were "
              "measured with whatever else ran on the 2-core host (`loadavg_1min` in the JSON); compare speeds "
              "in the alternation table below."]
    speed_file = RESULTS / "gguf-speed.json"
    if speed_file.is_file():
        import json

        speed = json.loads(speed_file.read_text())
        lines += ["", "## Decode speed measured in alternation", "",
                  "Files loaded together and timed one repetition each in turn (64 greedy tokens after a 512-token "
                  "prompt), so load from other jobs falls on all alike. Median of the repetitions; ratio to the "
                  "first file of the set.", "",
                  "| files compared | threads | file | MB | decode tok/s | ratio | reps | load avg |",
                  "|---|---:|---|---:|---:|---:|---:|---:|"]
        for x in speed:
            lines.append(f"| {x['rows']} | {x['threads']} | {x['row']} | {x['file_mb']} | {x['decode_tok_s']} | "
                         f"{x['ratio_to_first']:.3f} | {x['reps']} | {x['loadavg_1min']:.1f} |")
    (RESULTS / "gguf.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(names, [(get(n, 2) or get(n, 1))["ppl_llamacpp"] for n in names], color="tab:blue")
    axes[0].set_title("perplexity by llama.cpp (wiki-eval)")
    axes[1].bar(names, [(get(n, 2) or get(n, 1))["decode_tok_s"] for n in names], color="tab:orange")
    axes[1].set_title("llama.cpp decode tokens/s (2 threads)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(RESULTS / "gguf.png", dpi=110)
    plt.close(fig)
