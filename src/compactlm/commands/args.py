"""The command-line spine: argument groups every ``compactlm`` command shares.

One name per concept, with the same help and the same meaning everywhere:

============================  ================================================================
``--model``                   embedded name, ``tiny-<type>``, local folder, run dir, ``.gguf``, hub id
``--device``                  ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``
``--dtype``                   dtype of activations and unquantized weights
``--data --samples --seq-len``  the corpus a command draws sequences from, how many, how long
``--steps``                   the optimisation budget
``--batch-size``              sequences / examples per step or forward
``--seed``                    every random draw of the run
``--out --overwrite``         the run directory (or file) to write, and whether to replace it
``--recipe``                  a YAML/JSON file of settings (keys as the flags, ``_`` for ``-``); flags win
``--no-progress``             no progress bars
============================  ================================================================

Each ``add_*`` function adds one group to a parser. Old names of the same concept (``--calib``,
``--calib-samples``...) can be kept as *deprecated aliases*: hidden from ``--help``, still
accepted, and logged as deprecated when used.

Which flags the user actually typed is recorded on the namespace (``args._given``, see
:func:`given`) by :class:`SpineParser`, the parser class ``compactlm`` builds every subcommand
with; :func:`reject_unused` turns a typed flag the chosen code path ignores into a one-line error.

:func:`add_config_options` turns the fields of config dataclasses (e.g. the PTQ methods' options)
into flags whose help text and defaults come from each dataclass's Google-style ``Attributes:``
docstring section.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Iterable

from compactlm.errors import CompactLMError

GIVEN = "_given"  # namespace attribute: {dest: option string typed} of the options on the command line
DEPRECATED = "_deprecated"  # namespace attribute: [(old flag, new flag)] used this run

MODEL_HELP = "embedded name, tiny-<model_type>, local folder, run directory, .gguf file or hub id"


# --------------------------------------------------------------------------- given-flag tracking

def _tracking(cls: type[argparse.Action]) -> type[argparse.Action]:
    class Tracking(cls):  # type: ignore[misc, valid-type]
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            if option_string is not None:  # positionals are always "given"; only options are tracked
                _mark_given(namespace, self.dest, option_string)

    Tracking.__name__ = f"Tracking{cls.__name__}"
    return Tracking


def _mark_given(namespace: argparse.Namespace, dest: str, option_string: str) -> None:
    typed = dict(getattr(namespace, GIVEN, None) or {})
    typed[dest] = option_string
    setattr(namespace, GIVEN, typed)


class SpineParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that records which options were typed (``args._given``).

    Subparsers created from it are ``SpineParser`` s too, so one ``parser_class=SpineParser`` on the
    top-level ``add_subparsers`` covers every command. (A subcommand's typed flags replace the top
    level's in ``_given``: only the subcommand's are of interest.)
    """

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        for name, cls in (("store", argparse._StoreAction), (None, argparse._StoreAction),
                          ("store_true", argparse._StoreTrueAction), ("store_false", argparse._StoreFalseAction),
                          ("store_const", argparse._StoreConstAction), ("append", argparse._AppendAction),
                          ("count", argparse._CountAction)):
            self.register("action", name, _tracking(cls))



def given(args: argparse.Namespace) -> set[str]:
    """Dests of the options typed on the command line (empty for a namespace built by hand, or one
    parsed by a plain :class:`argparse.ArgumentParser`)."""
    return set(getattr(args, GIVEN, None) or ())


def typed_flag(args: argparse.Namespace, dest: str) -> str:
    """The option string the user typed for ``dest`` (``--calib`` for ``data``), else ``--<dest>``."""
    return (getattr(args, GIVEN, None) or {}).get(dest) or flag_name(dest)


def flag_name(dest: str) -> str:
    return "--" + dest.removeprefix("opt_").replace("_", "-")


def reject_unused(args: argparse.Namespace, ignored: Iterable[str], why: str, takes: Iterable[str] = ()) -> None:
    """One-line error if any of the ``ignored`` dests was typed: the chosen path would not use it.

    ``why`` names the path (``"method 'rtn'"``, ``"--format dequantized"``); ``takes`` lists the
    flags that path does take (shown in the message).
    """
    typed = sorted(typed_flag(args, d) for d in set(ignored) & given(args))
    if typed:
        takes = sorted(set(takes))
        tail = f"; it takes {', '.join(takes)}" if takes else "; it takes no such options"
        raise CompactLMError(f"{', '.join(typed)}: not used by {why}{tail}")


def value(args: argparse.Namespace, dest: str, recipe: dict | None = None, default: Any = None) -> Any:
    """A setting by precedence: typed flag > recipe value > the flag's default (``default`` when None)."""
    if dest in given(args):
        return getattr(args, dest)
    if recipe and dest in recipe:
        return recipe[dest]
    current = getattr(args, dest, None)
    return default if current is None else current


# --------------------------------------------------------------------------- deprecated aliases

class _DeprecatedAlias(argparse.Action):
    """A hidden old flag storing into the new flag's dest (converted with ``type``)."""

    def __init__(self, option_strings, dest, new_flag: str = "", const_value: Any = None, **kw):
        self.new_flag, self.const_value = new_flag, const_value
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const_value if self.nargs == 0 else values)
        _mark_given(namespace, self.dest, option_string)
        used = list(getattr(namespace, DEPRECATED, None) or [])
        used.append((option_string, self.new_flag))
        setattr(namespace, DEPRECATED, used)


def add_alias(p: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new_action: argparse.Action,
              const_value: Any = None) -> None:
    """Keep ``old`` working as a deprecated, hidden alias of the already added ``new_action``."""
    kw: dict = {"nargs": 0} if new_action.nargs == 0 else {"type": new_action.type}
    p.add_argument(old, dest=new_action.dest, action=_DeprecatedAlias, new_flag=new_action.option_strings[0],
                   const_value=const_value if const_value is not None else new_action.const, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS, **kw)


def deprecated_used(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``[(old flag, new flag)]`` of the deprecated aliases used on this command line."""
    return list(getattr(args, DEPRECATED, None) or [])


def _add(p, flag: str, aliases: Iterable[str] = (), **kw) -> argparse.Action:
    action = p.add_argument(flag, **kw)
    for old in aliases:
        add_alias(p, old, action)
    return action


# --------------------------------------------------------------------------- the spine's groups

def add_model(p, default: str | None = "smollm2-135m", required: bool = False, help: str | None = None) -> argparse.Action:
    """``--model``."""
    text = help or MODEL_HELP
    if default is not None and not required:
        text += " (default: %(default)s)"
    return _add(p, "--model", default=None if required else default, required=required, help=text)


def add_device(p) -> argparse.Action:
    """``--device`` (default ``auto``: CUDA when present, else CPU); resolve with :func:`device_of`."""
    return _add(p, "--device", default="auto",
                help="torch device: auto (cuda when present, else cpu), cpu, cuda, cuda:1 (default: %(default)s)")


def device_of(args: argparse.Namespace):
    """The :class:`torch.device` of ``--device`` (a one-line error for a device this machine lacks)."""
    from compactlm.devices import choose_device

    return choose_device(getattr(args, "device", None))


DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def add_dtype(p, default: str = "float32", auto: str | None = None) -> argparse.Action:
    """``--dtype``; ``auto`` is accepted when ``auto`` names what it means for this command."""
    choices = ", ".join((("auto (" + auto + ")",) if auto else ()) + DTYPE_CHOICES)
    return _add(p, "--dtype", default=default,
                help=f"dtype of activations and unquantized weights: {choices} (default: %(default)s)")


def add_data(p, data: str | None = "wiki", samples: int | None = 32, seq_len: int | None = 512, what: str = "calibration",
             data_aliases: Iterable[str] = (), samples_aliases: Iterable[str] = (), seq_len_aliases: Iterable[str] = (),
             seq_len_flag: str = "--seq-len") -> dict[str, argparse.Action]:
    """``--data --samples --seq-len`` (any of them can be left out by passing ``None`` as its default).

    ``seq_len_flag`` names the length flag where ``--seq-len`` already means something else in
    that command (e.g. ``lut apply``, whose ``--seq-len`` is the perplexity window as in ``eval``).
    """
    actions = {}
    g = p.add_argument_group(f"{what} data")
    if data is not None:
        actions["data"] = _add(g, "--data", data_aliases, default=data,
                               help=f"{what} corpus: a name (compactlm data list), PATH.txt or PATH.jsonl[:FIELD] "
                               "(default: %(default)s)")
    if samples is not None:
        actions["samples"] = _add(g, "--samples", samples_aliases, type=int, default=samples, metavar="N",
                                  help=f"{what} sequences drawn from --data (default: %(default)s)")
    if seq_len is not None:
        actions["seq_len"] = _add(g, seq_len_flag, seq_len_aliases, type=int, default=seq_len, metavar="N",
                                  help=f"tokens per {what} sequence (default: %(default)s)")
    return actions


def add_steps(p, default: int | None = None, help: str = "optimizer steps", aliases: Iterable[str] = ()) -> argparse.Action:
    """``--steps``: the optimisation budget."""
    return _add(p, "--steps", aliases, type=int, default=default, metavar="N", help=f"{help} (default: %(default)s)")


def add_batch_size(p, default: int | None = None, help: str = "sequences per step", aliases: Iterable[str] = ()) -> argparse.Action:
    """``--batch-size``."""
    return _add(p, "--batch-size", aliases, type=int, default=default, metavar="N", help=f"{help} (default: %(default)s)")


def add_seed(p, default: int | None = 0, help: str = "seed of every random draw of the run") -> argparse.Action:
    """``--seed``."""
    return _add(p, "--seed", type=int, default=default, metavar="N", help=f"{help} (default: %(default)s)")


def add_out(p, required: bool = True, help: str = "run directory to create (written atomically)",
            overwrite: bool = True) -> argparse.Action:
    """``--out`` and, with ``overwrite``, ``--overwrite``."""
    action = _add(p, "--out", required=required, default=None, help=help)
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return action


def add_recipe(p) -> argparse.Action:
    """``--recipe`` (load with :func:`compactlm.recipes.load_recipe`)."""
    return _add(p, "--recipe", default=None,
                help="YAML or JSON file of settings, keys as the flags with _ for - ; flags given beside it win")


def add_no_progress(p) -> argparse.Action:
    """``--no-progress``."""
    return p.add_argument("--no-progress", action="store_true", help="no progress bars")


def spine_keys(p: argparse.ArgumentParser) -> set[str]:
    """The dests of ``p``'s options (the keys a recipe for this command may hold)."""
    return {a.dest for a in p._actions if a.option_strings and a.dest not in ("help", "recipe", "out", "overwrite")}


# --------------------------------------------------------------------------- config dataclasses -> flags

def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the Google-style ``Attributes:`` sections of ``cls`` and its bases.

    An entry may document several fields at once (``quantizer / per / clip: ...``,
    ``steps, batch_size: ...``); a subclass's entry wins over its base's.
    """
    docs: dict[str, str] = {}
    for klass in reversed(inspect.getmro(cls)):
        doc = klass.__dict__.get("__doc__")
        if not doc:
            continue
        for names, text in _attributes_section(inspect.cleandoc(doc)):
            for name in names:
                docs[name] = text
    return docs


def _attributes_section(doc: str) -> list[tuple[list[str], str]]:
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return []
    entries: list[tuple[list[str], list[str]]] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        cur = len(line) - len(line.lstrip())
        if indent is None:
            indent = cur
        if cur < indent:
            break  # the next section
        m = re.match(r"([A-Za-z_][\w ,/.]*?)\s*(?:\([^)]*\))?:\s*(.*)$", line.strip()) if cur == indent else None
        if m:
            names = [n for n in re.split(r"[\s,/]+", m.group(1)) if n and n != "..."]
            entries.append((names, [m.group(2)]))
        elif entries:
            entries[-1][1].append(line.strip())
    return [(names, " ".join(t for t in text if t)) for names, text in entries]


def plain_doc(text: str) -> str:
    """Docstring markup out of help text (``code`` -> code, :class:`~a.B` -> B)."""
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text)
    return text.replace("``", "").replace("%", "%%")


def _bool(s: str) -> bool:
    table = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
    try:
        return table[s.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}") from None


def _flag_type(tp) -> tuple[Any, bool]:
    """``(argparse type, optional)`` of a dataclass field's annotation."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if args else str
    if tp is bool:
        conv = _bool
    elif tp in (int, float, str):
        conv = tp
    else:
        conv = str
    if not optional:
        return conv, False

    def maybe(s: str):
        return None if s.lower() in ("none", "auto") else conv(s)

    maybe.__name__ = getattr(conv, "__name__", "value")
    return maybe, True


@dataclasses.dataclass
class ConfigOption:
    """A flag made from a config-dataclass field: its dest and the configs that take it."""

    field: str
    dest: str
    owners: dict[str, Any]  # config name -> that config's default


def add_config_options(p, configs: dict[str, type], skip: Iterable[str] = (), dest_prefix: str = "opt_",
                       owner_word: str = "methods", help_overrides: dict[str, str] | None = None) -> dict[str, ConfigOption]:
    """One flag per field of the ``configs`` dataclasses (``{name: dataclass}``), e.g. the PTQ methods.

    Help text: the field's ``Attributes:`` documentation (per config where they document it
    differently), its default per config, and which configs take it. Parsed defaults are ``None``
    (= the config's own default); fields in ``skip`` are left to the caller (spine flags such as
    ``--seed``); ``help_overrides`` replaces the documentation of a field where the command gives
    it another default (e.g. ``work_dir``).
    """
    skip = set(skip)
    fields: dict[str, dict] = {}
    for name, cls in configs.items():
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip or not f.init:
                continue
            entry = fields.setdefault(f.name, {"type": hints.get(f.name, str), "docs": {}, "owners": {}})
            entry["docs"][name] = docs.get(f.name, "")
            entry["owners"][name] = _default_of(f)
    options = {}
    for fname in sorted(fields):
        entry = fields[fname]
        conv, optional = _flag_type(entry["type"])
        dest = dest_prefix + fname
        docs = {k: v for k, v in entry["docs"].items()}
        if help_overrides and fname in help_overrides:
            docs = {k: help_overrides[fname] for k in docs}
        p.add_argument(flag_name(fname), dest=dest, type=conv, default=None, metavar=_metavar(entry["type"]),
                       help=_option_help(docs, entry["owners"], optional, owner_word, len(configs)))
        options[fname] = ConfigOption(fname, dest, entry["owners"])
    return options


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _metavar(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), str)
    return {int: "N", float: "X", bool: "BOOL"}.get(tp, "STR")


def _by_value(mapping: dict[str, Any]) -> list[tuple[Any, list[str]]]:
    groups: dict[str, tuple[Any, list[str]]] = {}
    for owner, v in mapping.items():
        groups.setdefault(repr(v), (v, []))[1].append(owner)
    return list(groups.values())


def _option_help(docs: dict[str, str], owners: dict[str, Any], optional: bool, owner_word: str, n_configs: int) -> str:
    texts = _by_value({k: plain_doc(v).rstrip(".") if v else "undocumented option" for k, v in docs.items()})
    if len(texts) == 1:
        text = texts[0][0]
    else:
        text = "; ".join(f"{', '.join(who)}: {t}" for t, who in texts)
    defaults = _by_value(owners)
    if len(defaults) == 1:
        default = f"default {defaults[0][0]!r}"
    else:
        default = "default " + ", ".join(f"{v!r} ({', '.join(who)})" for v, who in defaults)
    none = "; none/auto for None" if optional else ""
    who = f"; {owner_word}: all" if len(owners) == n_configs and n_configs > 1 else f"; {owner_word}: {', '.join(owners)}"
    return f"{text} ({default}{none}{who})"


def config_values(args: argparse.Namespace, options: dict[str, ConfigOption], recipe: dict | None = None) -> dict[str, Any]:
    """``{field: value}`` of the config options that were typed (or set by a recipe)."""
    out = {}
    for fname, opt in options.items():
        if opt.dest in given(args):
            out[fname] = getattr(args, opt.dest)
        elif recipe and fname in recipe:
            out[fname] = recipe[fname]
    return out
