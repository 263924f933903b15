"""Save the PTQ calibration token ids to a file so llm-compressor peers use exactly our samples.

Runs in ``.venv`` (needs compactlm's tokenizer and corpora)::

    .venv/bin/python bench/ptq/peers_calib.py --samples 32 --seq-len 512 --seed 0 \
        --out runs/peers/calib.safetensors

The file holds ``input_ids`` ``[samples, seq_len]`` (int64) = ``compactlm.data.token_samples(tok,
"wiki", samples, seq_len, seed)`` for ``smollm2-135m``, and the arguments as safetensors metadata.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--source", default="wiki")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/peers/calib.safetensors")
    args = p.parse_args()

    from compactlm.models import load_model

    _, tok = load_model(args.model)
    ids = write_calib(tok, args.out, args.model, args.source, args.samples, args.seq_len, args.seed)
    print(f"wrote {args.out}: {list(ids.shape)}")


def write_calib(tok, out, model: str, source: str, samples: int, seq_len: int, seed: int):
    """Sample ``[samples, seq_len]`` token ids with compactlm and save them (atomically) to ``out``."""
    from safetensors.torch import save_file

    from compactlm.data import token_samples

    ids = token_samples(tok, source, n=samples, seq_len=seq_len, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": model, "source": source, "samples": str(samples), "seq_len": str(seq_len), "seed": str(seed)}
    tmp = out.with_suffix(".tmp")
    save_file({"input_ids": ids.contiguous()}, str(tmp), metadata=meta)
    tmp.replace(out)
    return ids


if __name__ == "__main__":
    main()
