"""Markdown tables and a plot of ``bench/results/re.json`` (mean ± std over seeds per cell)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

SPLIT_ORDER = {"standard": 0, "sifted": 1, "rearranged": 2}
METHOD_ORDER = {"fp": 0, "rtn": 1, "flexround": 2, "pruned": 3}


def _label(r: dict) -> str:
    train = "baseline" if not r.get("augment") else f"+ swap aug {r['augment']:g}"
    if r.get("steps_factor", 1) != 1:
        train += f", {r['steps_factor']}x steps"
    if r["method"] == "fp":
        return f"{r['split']}, {train}"
    if r["method"] == "rtn":
        return f"{r['split']}, {train}, RTN {r['scheme']}"
    if r["method"] == "flexround":
        return f"{r['split']}, {train}, FlexRound {r['scheme']}"
    return f"{r['split']}, {train}, pruned {r.get('layers', '?')}/6 layers"


def _ms(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(values: list[float]) -> str:
    mean, std = _ms(values)
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def cells(rows: list[dict]) -> list[dict]:
    """One entry per (method, scheme, split, augment): the rows of its seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["scheme"], r["split"], r.get("augment", 0.0), r.get("steps_factor", 1))].append(r)
    out = [{"key": k, "label": _label(rs[0]), "rows": sorted(rs, key=lambda r: r["seed"])} for k, rs in groups.items()]
    return sorted(out, key=lambda c: (SPLIT_ORDER.get(c["key"][2], 9), METHOD_ORDER.get(c["key"][0], 9),
                                      c["key"][3], c["key"][4], c["key"][1]))


def _f1(rs: list[dict], test: str, part: str) -> list[float]:
    return [r[test][part]["f1"] for r in rs if test in r]


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, computed from the standard-split FP cells (mean over seeds)."""
    cs = {c["key"]: c["rows"] for c in cells(rows)}
    bases = {k[4]: v for k, v in cs.items() if k[:3] == ("fp", "fp32", "standard") and not k[3]}
    base = bases.get(1)
    augs = sorted((k[4], v) for k, v in cs.items() if k[:3] == ("fp", "fp32", "standard") and k[3])
    out = []
    if not base:
        return out
    seen, unseen = _ms(_f1(base, "test", "seen"))[0], _ms(_f1(base, "test", "unseen"))[0]
    gap = 100 * (seen - unseen)
    out.append(f"- Baseline gap (test seen F1 − unseen F1) ≥ 20 points: **{gap:.1f}** points — "
               f"{'met' if gap >= 20 else 'missed'} ({len(base)} seed(s)).")
    # every augmented cell against the 1x baseline, and a longer one also against the baseline at its steps
    pairs = [(f, aug, base, "at equal steps" if f == 1 else
              f"at {f}x steps (as many passes over the original sentences as the baseline), against the baseline at 1x steps")
             for f, aug in augs]
    pairs += [(f, aug, bases[f], f"at {f}x steps (as many passes over the original sentences as the baseline), "
               f"against the baseline at the same {f}x steps") for f, aug in augs if f != 1 and f in bases]
    for _, aug, ref, when in pairs:
        d_unseen = 100 * (_ms(_f1(aug, "test", "unseen"))[0] - _ms(_f1(ref, "test", "unseen"))[0])
        d_seen = 100 * (_ms(_f1(aug, "test", "seen"))[0] - _ms(_f1(ref, "test", "seen"))[0])
        d_aug = 100 * (_ms(_f1(aug, "test_augmented", "all"))[0] - _ms(_f1(ref, "test_augmented", "all"))[0])
        ok = d_unseen >= 5 and d_seen >= -2
        out.append(f"- Augmentation {when}: test unseen F1 {d_unseen:+.1f} (target ≥ +5), seen F1 {d_seen:+.1f} "
                   f"(target ≥ −2), augmented-test F1 {d_aug:+.1f} — {'met' if ok else 'missed'} "
                   f"({len(ref)} / {len(aug)} seeds).")
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Triple extraction on unseen triples: span extractor on wikidata-distant (issue 17)",
        "",
        "F1 in points (micro, mean ± std over seeds). *seen* / *unseen*: test triples whose (head, relation, tail) "
        "does / does not occur in the original training split; predictions are split by the same rule. "
        "*aug test*: the entity-swapped test set (every triple unseen). Gap = seen − unseen.",
        "",
        "| model | seeds | test seen F1 | test unseen F1 | gap | test all F1 | unseen share | aug test F1 | aug test P / R | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells(rows):
        rs = c["rows"]
        seen, unseen = _f1(rs, "test", "seen"), _f1(rs, "test", "unseen")
        gap = [s - u for s, u in zip(seen, unseen)]
        no_seen = all(r["test"]["seen"]["gold"] == 0 for r in rs)  # sifted: every test triple unseen
        aug_p = [r["test_augmented"]["all"]["precision"] for r in rs]
        aug_r = [r["test_augmented"]["all"]["recall"] for r in rs]
        share = statistics.mean(r["test"]["unseen_share"] for r in rs)
        lines.append(
            f"| {c['label']} | {len(rs)} | {'—' if no_seen else _fmt(seen)} | {_fmt(unseen)} | {'—' if no_seen else _fmt(gap)} | "
            f"{_fmt(_f1(rs, 'test', 'all'))} | "
            f"{share:.3f} | {_fmt(_f1(rs, 'test_augmented', 'all'))} | {_fmt(aug_p)} / {_fmt(aug_r)} | "
            f"{statistics.mean(r['seconds'] for r in rs):.0f} |")
    lines += ["", "## Precision / recall on the test set", "",
              "| model | seen P | seen R | unseen P | unseen R | selected step (validation F1) |", "|---|---:|---:|---:|---:|---|"]
    for c in cells(rows):
        rs = c["rows"]
        pr = {(part, m): [r["test"][part][m] for r in rs] for part in ("seen", "unseen") for m in ("precision", "recall")}
        sel = ", ".join(f"s{r['seed']}: {r['selected_step']} ({100 * r['validation_f1']:.1f})" for r in rs
                        if r.get("selected_step") is not None) or "— (no training)"
        lines.append(f"| {c['label']} | {_fmt(pr[('seen', 'precision')])} | {_fmt(pr[('seen', 'recall')])} | "
                     f"{_fmt(pr[('unseen', 'precision')])} | {_fmt(pr[('unseen', 'recall')])} | {sel} |")
    lines += ["", "## Targets (standard split)", "", *(targets(rows) or ["- no standard-split rows yet"])]
    if rows:
        lines += ["", f"Device: {rows[0].get('device', '')}. Budget of trained rows: {next((r['budget'] for r in rows if r['method'] != 'rtn'), '')}. "
                  "Wall s: training and evaluation of the row (RTN rows: quantization and evaluation).",
                  "", f"Command: `{rows[0].get('bench_command', '')}`"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = cells(rows)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.27
    xs = range(len(cs))
    for k, (test, part, color, name) in enumerate((("test", "seen", "tab:blue", "test seen"),
                                                   ("test", "unseen", "tab:orange", "test unseen"),
                                                   ("test_augmented", "all", "tab:red", "augmented test"))):
        stats = [_ms(_f1(c["rows"], test, part)) for c in cs]
        ax.bar([x + (k - 1) * width for x in xs], [100 * m for m, _ in stats], width,
               yerr=[100 * (s or 0) for _, s in stats], capsize=2, color=color, label=name)
    ax.set_xticks(list(xs), [c["label"].replace(", ", "\n", 1) for c in cs], rotation=50, ha="right", fontsize=7)
    ax.set_ylabel("micro F1 (points)")
    ax.set_title("Span extractor (minilm-l6) on wikidata-distant: seen vs unseen triples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[dict], results_json: Path) -> None:
    from compactlm.io import write_text

    results_json = Path(results_json)
    write_text(results_json.with_suffix(".md"), markdown(rows))  # atomic
    plot(rows, results_json.with_suffix(".png"))
