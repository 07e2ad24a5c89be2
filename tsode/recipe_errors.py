"""Recipe errors of the ``tsode`` command: which key of which file, and why.

A rejected recipe is reported as ``tsode: invalid configuration in <file>: key '<key>':
<reason>``. The key comes from structure, not from jsonargparse's wording:

* a value a constructor rejects raises :class:`tsode.config.ParameterError`, which names its
  parameter (``anchor``, ``task.cutoff``, ``optim.lr``); :func:`explain_instantiation_error`
  finds it in the error's cause chain and the configured class that takes that parameter
  (other errors: the parameter of that class the message names; the Trainer's errors are
  told apart by where they were raised, see ``TsodeCLI._instantiate_trainer``);
* a recipe jsonargparse cannot parse is checked again by :func:`find_rejected_key`: every key
  of the recipe's ``model`` / ``data`` / ``trainer`` sections against the signature of the
  class it configures (unknown key, a class that cannot be imported, a value of the wrong
  type, a configuration block -- ``task``, ``loader``, ``optim`` -- rejecting a field).
  Only what that check cannot place (a top-level key, a missing key) falls back to reading
  jsonargparse's message, :func:`explain_parse_error`;
* :func:`locate_key` spells the key as written in the recipe files (plain mappings without
  ``init_args``, list indices) and finds the file holding it;
* :func:`report_recipe_error` prints the one-line report (with the new spelling of a former
  flat key: :func:`tsode.config.legacy_key_hint`, :func:`tsode.data.config.data_key_hint`).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from tsode.config import ParameterError, constructor_args, legacy_key_hint
from tsode.data.config import data_key_hint


class RecipeError(SystemExit):
    """A recipe (or command-line override) was rejected; the message names key and file."""


# ---------------------------------------------------------------- the recipe's own structure
#: the class each top-level section of a recipe configures when it names none itself
_IMPLICIT_CLASSES = {"trainer": "lightning.pytorch.Trainer"}
_CHECKED_SECTIONS = ("model", "data", "trainer")


def _import(path: str) -> Any:
    """The object a dotted ``module.Name`` path names (``ImportError`` / ``AttributeError``)."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ImportError(f"{path!r} is not a dotted import path")
    return getattr(importlib.import_module(module), name)


def _annotations(cls: type) -> dict[str, Any]:
    """Resolved annotations of the constructor arguments of ``cls`` (through ``**kwargs`` to
    the base classes, as :func:`tsode.config.constructor_args`); a class whose annotations
    cannot be resolved adds none (its values are not type-checked)."""
    hints: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            found = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 -- unresolvable annotations: those are not checked
            break
        hints = {**found, **hints}
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return hints


def _block_class(annotation: Any) -> type | None:
    """The configuration class in an annotation such as ``SolverConfig | None`` or
    ``TaskConfig | str | None`` (a class with named fields), else None."""
    for option in (*typing.get_args(annotation), annotation):
        if inspect.isclass(option) and option.__module__ not in ("builtins", "typing", "collections.abc"):
            if hasattr(option, "__dataclass_fields__"):
                return option
    return None


def _wrong_type(annotation: Any, value: Any) -> bool:
    """Whether jsonargparse rejects ``value`` for an argument typed ``annotation`` (checked
    with a one-argument parser, so the failing key is the one asked about)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_argument("--value", type=annotation)
    except Exception:  # noqa: BLE001 -- a type jsonargparse cannot take alone: not checked
        return False
    try:
        parser.parse_object({"value": value})
    except Exception:  # noqa: BLE001 -- any rejection is a wrong value
        return True
    return False


def _check_class(
    cls: type, init_args: Any, path: str, name: str | None = None
) -> tuple[str, str] | None:
    """The first key of ``init_args`` (a recipe mapping for ``cls``, named ``name`` in the
    recipe) that ``cls`` rejects."""
    if not isinstance(init_args, Mapping):
        return None
    name = name or f"{cls.__module__}.{cls.__qualname__}"
    names = constructor_args(cls)
    hints = _annotations(cls)
    for arg, value in init_args.items():
        key = f"{path}.{arg}"
        if arg not in names:
            return key, f"unknown key (not a parameter of {name})"
        found = _check_value(hints.get(arg), value, key)
        if found is not None:
            return found
    return None


def _check_value(annotation: Any, value: Any, key: str) -> tuple[str, str] | None:
    """The rejected key under ``key`` for a recipe ``value`` of an argument typed
    ``annotation`` (None: unknown type), else None."""
    if isinstance(value, Mapping) and "class_path" in value:
        return _check_class_node(value, key)
    if isinstance(value, list) and all(isinstance(v, Mapping) and "class_path" in v for v in value):
        for index, item in enumerate(value):
            found = _check_class_node(item, f"{key}[{index}]")
            if found is not None:
                return found
        return None
    block = _block_class(annotation) if annotation is not None else None
    if block is not None and isinstance(value, Mapping):
        return _check_block(block, value, key)
    if annotation is not None and _wrong_type(annotation, value):
        return key, f"wrong type: expected {_type_name(annotation)}, got {value!r}"
    return None


def _check_class_node(node: Mapping[str, Any], key: str) -> tuple[str, str] | None:
    """A ``{class_path, init_args}`` node: the class must import, its arguments fit."""
    class_path = node["class_path"]
    if not isinstance(class_path, str) or "." not in class_path:
        return None  # a short name jsonargparse resolves itself
    try:
        cls = _import(class_path)
    except (ImportError, AttributeError) as error:
        return f"{key}.class_path", f"class_path '{class_path}': {error}"
    if not inspect.isclass(cls):
        return None
    return _check_class(cls, node.get("init_args") or {}, f"{key}.init_args", class_path)


def _check_block(block: type, fields: Mapping[str, Any], key: str) -> tuple[str, str] | None:
    """A configuration block given as a mapping (``solver:``, ``task:``, ``loader:``,
    ``optim:``): known fields of the right type, then the block's own validation."""
    found = _check_class(block, fields, key)
    if found is not None:
        return found
    try:
        block(**fields)
    except ParameterError as error:  # names its field, relative to the block's owner
        owner = key.rpartition(".")[0]
        return f"{owner}.{error.param}", str(error)
    except (TypeError, ValueError) as error:
        field = _named_parameter(str(error), fields)
        return (f"{key}.{field}" if field else key), str(error)
    return None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def merged_recipe(files: Sequence[str]) -> dict[str, Any]:
    """The recipe files merged in order (later files override, as ``--config`` does)."""

    def merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
        for name, value in new.items():
            if isinstance(value, Mapping) and isinstance(into.get(name), dict):
                merge(into[name], value)
            else:
                into[name] = dict(value) if isinstance(value, Mapping) else value

    out: dict[str, Any] = {}
    for file in files:
        try:
            loaded = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(loaded, Mapping):
            merge(out, loaded)
    return out


#: command-line options that are not recipe keys
_NOT_RECIPE_KEYS = ("config", "c", "recipe", "print_config", "ckpt_path", "help", "h")


def with_overrides(recipe: dict[str, Any], args: Sequence[str]) -> dict[str, Any]:
    """``recipe`` with the command line's ``--a.b.c value`` overrides set (values read as
    YAML, as jsonargparse does); a ``--model CLASS`` shorthand becomes its ``class_path``."""
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            i += 1
            continue
        if "=" in arg:
            name, text = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            name, text = arg[2:], args[i + 1]
            i += 2
        else:
            i += 1
            continue
        if name in _NOT_RECIPE_KEYS:
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        *parents, last = name.split(".")
        node: Any = recipe
        for part in parents:
            child = node.get(part)
            if isinstance(child, str):  # a class given by name: its class_path
                child = {"class_path": child}
            if not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        if not parents and isinstance(value, str) and isinstance(node.get(last), dict):
            node[last] = {"class_path": value, "init_args": node[last].get("init_args") or {}}
        else:
            node[last] = value
    return recipe


def find_rejected_key(files: Sequence[str], args: Sequence[str] = ()) -> tuple[str, str] | None:
    """``(dotted key, reason)`` of the first key in the recipe's ``model``, ``data`` and
    ``trainer`` sections (the files, then the command line's ``args`` overrides) that the
    configured classes reject, else None (the key is spelled as in the files:
    ``model.init_args.solver.rtol``, ``trainer.callbacks[0].init_args...``)."""
    try:
        return _first_rejected(with_overrides(merged_recipe(files), args))
    except Exception:  # noqa: BLE001 -- the check must never hide the error it explains
        return None


def _first_rejected(recipe: Mapping[str, Any]) -> tuple[str, str] | None:
    for section in _CHECKED_SECTIONS:
        node = recipe.get(section)
        if section in _IMPLICIT_CLASSES and isinstance(node, Mapping) and "class_path" not in node:
            node = {"class_path": _IMPLICIT_CLASSES[section], "init_args": node}
        if isinstance(node, Mapping) and "class_path" in node:
            found = _check_class_node(node, section)
            if found is not None:
                key, reason = found
                # the implicit Trainer node has no init_args in the recipe
                return key.replace("trainer.init_args.", "trainer.", 1), reason
    return None


# ------------------------------------------------------------ jsonargparse's message (fallback)
def explain_parse_error(message: str) -> tuple[str | None, str]:
    """Pull the offending dotted key and a one-line reason out of a jsonargparse message: the
    fallback for what :func:`find_rejected_key` cannot place (a top-level key, a missing
    key, a command-line override)."""
    top = re.search(r"does not accept option '([^']+)'", message)
    if top:
        return top.group(1), "unknown key"
    path: list[str] = []
    reason = "invalid value"
    token = re.compile(
        r"Parser key \"(?P<key>[^\"]+)\"|class_path '(?P<cls>[^']+)'|"
        r"Option '(?P<opt>[^']+)' is not accepted|Key \"(?P<k2>[^\"]+)\" is required|"
        r"(?P<exp>Expected a [^\n]*)"
    )
    owner = None
    for match in token.finditer(message):
        if match.group("key"):
            path.append(match.group("key"))
        elif match.group("cls"):
            owner = match.group("cls")
            detail = message[match.end() :].lstrip(":").strip().splitlines()
            first = detail[0].strip() if detail else ""
            if first and not token.match(first) and not first.startswith("Does not validate"):
                path.append("class_path")
                reason = f"class_path '{owner}': {first}"
                break
            path.append("init_args")
        elif match.group("opt"):
            path.append(match.group("opt"))
            reason = f"unknown key (not a parameter of {owner})" if owner else "unknown key"
            break
        elif match.group("k2"):
            path.append(match.group("k2"))
            reason = "required key missing"
            break
        elif match.group("exp"):
            if "NoneType" in match.group("exp"):
                continue
            reason = f"wrong type: {match.group('exp').strip()}"
            break
    if path and path[-1] == "init_args":
        path.pop()
    key = ".".join(path) if path else None
    return key, reason


# ------------------------------------------------------------------- where the key is written
def locate_key(key: str, files: Sequence[str]) -> tuple[str, str | None]:
    """Spell ``key`` (dotted) as it is written in a recipe.

    jsonargparse names nested class arguments ``<section>.init_args.<name>`` even where the
    recipe gives them as a plain mapping (``solver: {rtol: ...}``) and does not say which
    item of a list (``trainer.callbacks``) is wrong. Walking the recipe files (last one
    first) drops the ``init_args`` the file does not have and adds list indices
    (``trainer.callbacks[0].init_args.patience``). Returns the key and the file holding it
    (None: not in any file, e.g. a command-line override).
    """
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    partial: str | None = None  # spelled along the recipe up to a missing last key
    for file in reversed(list(files)):
        try:
            node: Any = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError):
            continue
        out: list[str] = []
        found = True
        for i, part in enumerate(parts):
            if isinstance(node, list):
                rest = parts[i:]
                index = next(
                    (
                        j
                        for j, item in enumerate(node)
                        if isinstance(item, dict)
                        and (rest[0] in item or rest[0] in (item.get("init_args") or {}))
                        and (len(rest) < 2 or rest[0] != "init_args"
                             or rest[1] in (item.get("init_args") or {}))
                    ),
                    None,
                )
                if index is None:
                    found = False
                    break
                out[-1] += f"[{index}]"
                node = node[index]
            if isinstance(node, dict) and part in node:
                out.append(part)
                node = node[part]
            elif isinstance(node, dict) and part == "init_args":
                continue  # given as a plain mapping in the recipe
            else:
                if i == len(parts) - 1 and isinstance(node, dict) and partial is None:
                    partial = ".".join([*out, part])  # e.g. a key set on the command line
                found = False
                break
        if found:
            return ".".join(out), file
    return partial or key, None


def report_recipe_error(
    key: str | None, reason: str, details: str, files: Sequence[str]
) -> NoReturn:
    """Print ``tsode: invalid configuration in <file>: key '<key>': <reason>`` (plus the
    details) and exit with status 2 (:class:`RecipeError`)."""
    where = ", ".join(files) if files else "command-line arguments"
    hint = (legacy_key_hint(key) or data_key_hint(key)) if key else None
    if hint is not None:
        reason = f"{reason}: {hint}"
    if key:
        key, file = locate_key(key, files)
        if file is not None:
            where = file
        elif files:
            where += " / command-line arguments"
    headline = f"tsode: invalid configuration in {where}"
    if key:
        headline += f": key '{key}': {reason}"
    elif reason != "invalid value":
        headline += f": {reason}"
    indented = "\n".join(f"  {line}" for line in details.splitlines())
    sys.stderr.write(
        f"{headline}\n{indented}\n(see accepted keys with `tsode <subcommand> --help`, "
        f"or the resolved recipe with --print_config)\n"
    )
    raise RecipeError(2)


# ------------------------------------------------------------- errors while building objects
def _items(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, list):
        yield from ((f"[{i}]", v) for i, v in enumerate(node))
    elif isinstance(node, Mapping):
        yield from node.items()
    elif hasattr(node, "__dict__") and hasattr(node, "items"):  # a jsonargparse Namespace
        yield from vars(node).items()


def _get(node: Any, name: str) -> Any:
    return node.get(name) if isinstance(node, Mapping) else getattr(node, name, None)


def class_sections(config: Any, prefix: str = "") -> dict[str, tuple[str, list[str]]]:
    """Dotted section -> (class_path, its argument names) for every class the resolved
    ``config`` configures (``model``, ``data``, ``trainer.callbacks[0]``, ...), in order."""
    found: dict[str, tuple[str, list[str]]] = {}
    for name, value in _items(config):
        name = str(name)
        dotted = f"{prefix}{name}" if name.startswith("[") or not prefix else f"{prefix}.{name}"
        class_path = _get(value, "class_path") if not isinstance(value, (str, list)) else None
        if isinstance(class_path, str):
            init_args = _get(value, "init_args")
            found[dotted] = (class_path, [str(k) for k, _ in _items(init_args)])
        for sub, entry in class_sections(value, dotted).items():
            found.setdefault(sub, entry)
    return found


def _named_parameter(message: str, names: Any) -> str | None:
    """The first word of ``message`` that is one of ``names`` (an error naming its argument)."""
    return next((w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message) if w in names), None)


def _root_cause(error: BaseException) -> BaseException:
    """The exception a chain of wrappers (jsonargparse's included) started from."""
    seen = {id(error)}
    while True:
        cause = error.__cause__ or error.__context__
        if cause is None or id(cause) in seen:
            return error
        seen.add(id(cause))
        error = cause


def explain_instantiation_error(
    error: BaseException, config: Any, trainer_failed: bool = False
) -> tuple[str | None, str]:
    """Key and reason of an error raised while building the recipe's objects.

    A :class:`~tsode.config.ParameterError` names its parameter: the key is that parameter
    under the configured class that takes it (``model.init_args.anchor``,
    ``data.init_args.task.cutoff``). Any other error is mapped to the first configured
    class with an argument its message names; ``trainer_failed``: the Trainer's own options.
    """
    named = _caused_by(error, ParameterError)
    root = named if named is not None else _root_cause(error)
    reason = " ".join(str(root).split("\n", 1)[0].split()) or type(root).__name__
    if trainer_failed:
        trainer = _get(config, "trainer")
        option = _named_parameter(reason, [name for name, _ in _items(trainer)])
        return ("trainer." + option if option else "trainer"), f"rejected by the Trainer: {reason}"
    sections = class_sections(config)
    if isinstance(named, ParameterError):
        head = named.param.split(".")[0]
        for section, (class_path, names) in sections.items():
            if head in names:
                return f"{section}.init_args.{named.param}", f"rejected by {class_path}: {reason}"
    for section, (class_path, names) in sections.items():
        param = _named_parameter(reason, names)
        if param is not None:
            return f"{section}.init_args.{param}", f"rejected by {class_path}: {reason}"
    return None, reason


def _caused_by(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``error`` itself, or the first exception of type ``kind`` in its cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _data_error(error: BaseException) -> BaseException | None:
    """The :class:`tsode.data.DataValidationError` behind ``error`` (itself, or its cause or
    context, e.g. when jsonargparse wraps it), if any."""
    from tsode.data import DataValidationError

    return _caused_by(error, DataValidationError)
