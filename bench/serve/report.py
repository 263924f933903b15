"""``bench/results/serve.md`` and ``serve.png`` from ``serve.json`` (ratios against the FP32 / BF16 rows)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _get(rows, name, threads):
    return next((r for r in rows if r["row"] == name and r["threads"] == threads), None)


def _fmt(x, spec=".1f"):
    return "–" if x is None else format(x, spec)


def write_report(rows: list[dict]) -> None:
    if not rows:
        return
    names = list(dict.fromkeys(r["row"] for r in rows))
    fp = {t: _get(rows, "fp32", t) for t in (1, 2)}
    bf = {t: _get(rows, "bf16", t) for t in (1, 2)}
    lines = [
        "# Real low-bit inference: size, memory, speed and accuracy (smollm2-135m)",
        "",
        "Produced by `.venv/bin/python bench/serve/run.py` (commands per row in `serve.json`). Batch 1; prefill = one "
        "forward of a 512-token prompt; decode = 64 greedy tokens through the KV cache after it; median over "
        f"{rows[0]['reps']} repetitions after 1 warm-up, [min–max] in `serve.json`. Resident = RSS after load and a first forward minus "
        "RSS of the process with torch + transformers imported (total RSS in `serve.json`). PPL on the first "
        f"{rows[0].get('ppl_tokens_asked', '?')} `wiki-eval` tokens (512-token windows): *reference* = fake-quant path "
        "(fp32, dequantized weights) right after quantization; *deployed* = the saved run loaded as users get it "
        "(bf16 activations, packed codes, int4/int8 kernels, decode attention). Device: "
        f"{rows[0]['device']}; torch {rows[0].get('torch', '?')}.",
        "",
        "| row | paths | disk MB | ×FP32 | resident MB | ×FP32 | decode tok/s 1 thr | ×FP32 | ×BF16 | decode 2 thr | ×FP32 | "
        "prefill tok/s 1 thr | ×FP32 | TTFT ms | PPL reference | PPL deployed | Δ |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        r1, r2 = _get(rows, name, 1), _get(rows, name, 2)
        r = r1 or r2
        paths = ", ".join(f"{k} ×{v}" for k, v in (r.get("paths") or {}).items()) or "dense"
        ratio = lambda a, b, key: None if not (a and b and a.get(key) and b.get(key)) else a[key] / b[key]  # noqa: E731
        delta = None if r.get("ppl_rel_diff") is None else 100 * r["ppl_rel_diff"]
        lines.append(
            f"| {name} | {paths} | {_fmt(r['disk_mb'])} | {_fmt(ratio(r, fp[1] or fp[2], 'disk_mb'), '.2f')} | "
            f"{_fmt(r['rss_model_mb'])} | {_fmt(ratio(r, fp[1] or fp[2], 'rss_model_mb'), '.2f')} | "
            f"{_fmt(r1 and r1['decode_tok_s'])} | {_fmt(ratio(r1, fp[1], 'decode_tok_s'), '.2f')} | "
            f"{_fmt(ratio(r1, bf[1], 'decode_tok_s'), '.2f')} | {_fmt(r2 and r2['decode_tok_s'])} | "
            f"{_fmt(ratio(r2, fp[2], 'decode_tok_s'), '.2f')} | {_fmt(r1 and r1['prefill_tok_s'], '.0f')} | "
            f"{_fmt(ratio(r1, fp[1], 'prefill_tok_s'), '.2f')} | {_fmt(r1 and r1['ttft_ms'], '.0f')} | "
            f"{_fmt(r.get('ppl_reference'), '.2f')} | {_fmt(r.get('ppl_kernel'), '.2f')} | "
            f"{'–' if delta is None else f'{delta:+.2f}%'} |"
        )
    lines += ["", "Disk of the FP rows is the FP32 checkpoint they load (the BF16 row casts it at load)."]
    lines += _interleaved()
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")
    _plot(rows, names)


def _interleaved() -> list[str]:
    """Decode/prefill ratios from rows timed in alternation (``serve-interleaved.json``)."""
    import json
    import statistics

    path = RESULTS / "serve-interleaved.json"
    if not path.is_file():
        return []
    recs = json.loads(path.read_text())
    names = list(dict.fromkeys(r["row"] for r in recs))
    med = {n: {k: statistics.median(r[k] for r in recs if r["row"] == n) for k in ("decode_tok_s", "prefill_tok_s")}
           for n in names}
    rounds = max(r["round"] for r in recs) + 1
    lines = ["", "## Ratios from alternating runs", "",
             f"The same rows timed in alternation, {rounds} rounds of `compactlm speed --threads 1` each (median of the "
             "per-round medians): the host's speed drifts by 10–20% over minutes (other tenants), so ratios between "
             "rows measured far apart in the table above are less reliable than these. Command: "
             f"`{recs[0]['command']}`.", "",
             "| row | decode tok/s | ×FP32 | ×BF16 | prefill tok/s | ×FP32 | per-round decode |", "|---|---:|---:|---:|---:|---:|---|"]
    fp, bf = med.get("fp32"), med.get("bf16")
    for n in names:
        m = med[n]
        per = ", ".join(f"{r['decode_tok_s']:.1f}" for r in recs if r["row"] == n)
        rf = f"{m['decode_tok_s'] / fp['decode_tok_s']:.2f}" if fp else "–"
        rb = f"{m['decode_tok_s'] / bf['decode_tok_s']:.2f}" if bf else "–"
        pf = f"{m['prefill_tok_s'] / fp['prefill_tok_s']:.2f}" if fp else "–"
        lines.append(f"| {n} | {m['decode_tok_s']:.1f} | {rf} | {rb} | {m['prefill_tok_s']:.0f} | {pf} | {per} |")
    return lines


def _plot(rows, names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    x = range(len(names))
    for t, off, c in ((1, -0.2, "tab:blue"), (2, 0.2, "tab:orange")):
        vals = [(_get(rows, n, t) or {}).get("decode_tok_s") or 0 for n in names]
        axes[0].bar([i + off for i in x], vals, width=0.4, color=c, label=f"{t} thread{'s' if t > 1 else ''}")
    axes[0].set_title("decode tokens/s (batch 1)")
    axes[0].legend()
    for ax, key, title in ((axes[1], "rss_model_mb", "resident MB (model)"), (axes[2], "disk_mb", "MB on disk")):
        vals = [((_get(rows, n, 1) or _get(rows, n, 2)) or {}).get(key) or 0 for n in names]
        ax.bar(list(x), vals, color="tab:green")
        ax.set_title(title)
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    fig.suptitle("smollm2-135m: deployed path on the project's 2-core CPU")
    fig.tight_layout()
    fig.savefig(RESULTS / "serve.png", dpi=110)
    plt.close(fig)
