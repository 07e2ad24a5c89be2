"""Recipe errors of the ``tsode`` command: which key of which file, and why.

jsonargparse reports a rejected recipe as a message (no structured error); the functions here
turn it into ``tsode: invalid configuration in <file>: key '<key>': <reason>``:

* :func:`explain_parse_error`: the dotted key and reason of a parse error (unknown key,
  wrong type, missing key, a class that cannot be imported);
* :func:`explain_instantiation_error`: the key of a value a constructor rejected. A data
  module's configuration block names its own field (``task.cutoff must be ...``,
  :func:`block_field_error`), which is mapped straight to ``data.init_args.task.cutoff``;
  other constructors' messages are matched against the class's arguments;
* :func:`locate_key`: the key as written in the recipe files (plain mappings without
  ``init_args``, list indices) and the file holding it;
* :func:`report_recipe_error`: the one-line report (with the new spelling of a former flat
  key: :func:`tsode.config.legacy_key_hint`, :func:`tsode.data.config.data_key_hint`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from tsode.config import legacy_key_hint
from tsode.data.config import data_key_hint


class RecipeError(SystemExit):
    """A recipe (or command-line override) was rejected; the message names key and file."""


def explain_parse_error(message: str) -> tuple[str | None, str]:
    """Pull the offending dotted key and a one-line reason out of a jsonargparse message."""
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
                # the class itself is the problem (not importable, not a subclass, ...)
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


def locate_key(key: str, files: Sequence[str]) -> tuple[str, str | None]:
    """Spell ``key`` (dotted, from :func:`explain_parse_error`) as it is written in a recipe.

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


def _class_sections(config: Any, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """class_path -> (dotted section, its init_args) for every class named in ``config``."""
    found: dict[str, tuple[str, Any]] = {}
    items: Any
    if hasattr(config, "items") and callable(config.items):
        items = config.items() if not hasattr(config, "__dict__") else vars(config).items()
    elif isinstance(config, list):
        items = ((f"[{i}]", v) for i, v in enumerate(config))
    else:
        return found
    for name, value in items:
        name = str(name)
        dotted = f"{prefix}{name}" if name.startswith("[") or not prefix else f"{prefix}.{name}"
        class_path = getattr(value, "class_path", None) if not isinstance(value, dict) else (
            value.get("class_path")
        )
        if isinstance(class_path, str):
            init_args = (
                value.get("init_args") if isinstance(value, dict) else getattr(value, "init_args", None)
            )
            found.setdefault(class_path, (dotted, init_args))
        found.update({k: v for k, v in _class_sections(value, dotted).items() if k not in found})
    return found


#: A configuration block's own error names its field first: ``task.cutoff must be ...``
#: (:class:`tsode.data.TaskConfig`, :class:`tsode.data.LoaderConfig`,
#: :class:`tsode.config.OptimConfig`).
_BLOCK_FIELD_ERROR = re.compile(
    r"^\s*(?:- )?(?P<block>task|loader|optim)\.(?P<field>[a-z_]+):? (?P<text>.+)$", re.M
)


def block_field_error(message: str) -> tuple[str, str] | None:
    """``("task.cutoff", "task.cutoff must be ...")`` when ``message`` holds the error of a
    configuration block (a data module's ``task`` / ``loader``, a model's ``optim``), else
    None."""
    found = _BLOCK_FIELD_ERROR.search(message)
    if found is None:
        return None
    return f"{found['block']}.{found['field']}", found.group(0).strip().removeprefix("- ")


def explain_instantiation_error(error: BaseException, config: Any) -> tuple[str | None, str]:
    """Key and reason of an error raised while building the recipe's objects.

    The class whose constructor failed is found from the message (``class_path 'X'``) or
    the traceback; the argument it names (``grid must be one of ...``, or a block's field:
    ``task.cutoff must be ...``) completes the key.
    """
    message = str(error)
    block = block_field_error(message)
    bullets = re.findall(r"^\s*- (.+)$", message, flags=re.M)
    reason = next((b for b in bullets if "NoneType" not in b), None) or message.splitlines()[0]
    sections = _class_sections(config)
    owner = None
    named = re.search(r"class_path='([^']+)'|class_path '([^']+)'", message)
    if named:
        owner = named.group(1) or named.group(2)
    if owner is None:  # walk the traceback for a constructor of a configured class
        tb = error.__traceback__
        while tb is not None:
            local_self = tb.tb_frame.f_locals.get("self")
            if tb.tb_frame.f_code.co_name == "__init__" and local_self is not None:
                cls = type(local_self)
                for path in (f"{cls.__module__}.{cls.__qualname__}",):
                    if path in sections:
                        owner = path
                tb_owner = [c for c in sections if c.rsplit(".", 1)[-1] == cls.__name__]
                if owner is None and tb_owner:
                    owner = tb_owner[0]
            tb = tb.tb_next
    if owner is None or owner not in sections:
        if any(name.startswith(("Trainer.", "_AcceleratorConnector.")) for name in traceback_names(error)):
            trainer = config.get("trainer") if hasattr(config, "get") else None
            options = list(vars(trainer)) if hasattr(trainer, "__dict__") else list(trainer or {})
            words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", reason)
            option = next((w for w in words if w in options), None)
            return ("trainer." + option if option else "trainer"), f"rejected by the Trainer: {reason}"
        return None, reason
    section, init_args = sections[owner]
    if block is not None:  # the block names its field
        return f"{section}.init_args.{block[0]}", f"rejected by {owner}: {block[1]}"
    names = list(vars(init_args)) if hasattr(init_args, "__dict__") else list(init_args or {})
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", reason)
    param = next((w for w in words if w in names), None)
    key = f"{section}.init_args.{param}" if param else section
    return key, f"rejected by {owner}: {reason}"


def traceback_names(error: BaseException) -> list[str]:
    """Qualified names of the functions an exception passed through (outermost first)."""
    names = []
    tb = error.__traceback__
    while tb is not None:
        local_self = tb.tb_frame.f_locals.get("self")
        prefix = type(local_self).__name__ + "." if local_self is not None else ""
        names.append(prefix + tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


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
