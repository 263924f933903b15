"""Record format of ``bench/results/ptq.json`` — the contract every PTQ benchmark row follows.

Standard library only, so peer runners in other virtual environments (llm-compressor in
``.venv-peers``) can import it by path and append their rows::

    import sys; sys.path.insert(0, "bench/ptq")
    from records import append_record, done_keys, row_key

``ptq.json`` is a JSON list of flat records, one per (method, scheme, variant). Fields:

=================  ==========================================================================
field              meaning
=================  ==========================================================================
method             ``rtn`` | ``smoothquant`` | ``flexround`` | ``lrq`` | ``gptq`` | ``awq`` |
                   ``smoothquant-llmc`` | ``fp`` (unquantized reference)
scheme             canonical scheme name (``w8a8``, ``w4a8``, ``w4a16``, ``w3a16``, ``w2a16-g64``,
                   ``fp32`` for the reference)
variant            ``""`` for the main grid; e.g. ``"iters=25"`` for the LRQ sweep
model              ``smollm2-135m``
implementation     ``compactlm`` or ``llm-compressor <version>``
ppl_wiki_eval      perplexity on ``wiki-eval`` (``ppl_tokens`` tokens, ``ppl_seq_len`` window)
ppl_tokens         tokens scored (every window's first token is context only)
ppl_max_tokens     tokens asked for (``--ppl-tokens``); ``--refresh`` compares against this
ppl_seq_len        window length of the perplexity evaluation
zeroshot_avg       mean accuracy (``acc``) over the five tasks below
zeroshot_avg_norm  mean length-normalised accuracy (``acc_norm``)
zs_<task>          accuracy per task: arc_easy, arc_challenge, hellaswag, piqa, winogrande
zeroshot_limit     examples per task
seconds            quantization wall time (s), without loading or evaluation
eval_seconds       perplexity evaluation wall time (s)
zeroshot_seconds   zero-shot evaluation wall time (s)
peak_mem_mb        peak resident memory of the process (MiB) at the end of quantization
learned_params     number of parameters optimised by the method (0 for RTN / GPTQ / AWQ)
calib              e.g. ``"wiki 32x256"`` (samples x tokens)
budget             free text: iterations/block, batch, lr ...
device             e.g. ``"cpu-1core (2-core host, shared)"``
seed               seed of calibration sampling and learned methods
command            the command that produced the row
eval_command       the ``--refresh`` command that re-evaluated it, if any
date               UTC ISO timestamp when the row was written
=================  ==========================================================================

Rows are keyed by ``row_key(record) = "method|scheme|variant"``; appending a row with an existing
key replaces it. Writes are atomic (temp file + ``os.replace``) so a killed run never corrupts the
file.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "ptq.json"
ZEROSHOT_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande")


def row_key(record: dict) -> str:
    """``"method|scheme|variant"``: the identity of a row."""
    return f"{record['method']}|{record['scheme']}|{record.get('variant', '')}"


def read_records(path: Path = RESULTS) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with path.open() as f:
        return json.load(f)


def done_keys(path: Path = RESULTS) -> set[str]:
    """Keys of rows already written (a resumed run skips them)."""
    return {row_key(r) for r in read_records(path)}


def append_record(record: dict, path: Path = RESULTS) -> None:
    """Add ``record`` (replacing a row with the same key) and write the file atomically.

    An exclusive ``flock`` on the results folder serialises the read-modify-write, so runners in
    two CPU slots can append to the same file.
    """
    path = Path(path)
    record = {"variant": "", **record}
    record.setdefault("date", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in read_records(path) if row_key(r) != row_key(record)]
        rows.append(record)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        os.close(lock)  # releases the lock
