"""Recipe names -> recipe files: single files and composed families.

A recipe is one file, ``recipes/<name>.yaml`` (``quickstart``, ``table_forecast``), or a
combination of a *family*: ``recipes/<family>/index.yaml`` maps each task to its models, and
recipe ``<family>_<task>_<model>`` is the files ::

    recipes/<family>/base.yaml             what every combination shares
    recipes/<family>/task_<task>.yaml      the task (data.init_args.task, monitors, ...)
    recipes/<family>/model_<model>.yaml    the model
    recipes/<family>/<task>_<model>.yaml   only where the combination needs more (optional)

given in this order to LightningCLI, later files overriding earlier ones (mappings merge key
by key, lists are replaced). ``tsode fit --recipe physionet_forecast_odernn`` runs one;
:func:`load_recipe` gives the merged mapping (for scripts and tests).

Reading a recipe is bounded (:func:`check_recipe_file`, :func:`check_recipe_text`,
:func:`check_command_line_yaml`): size, YAML alias expansion, no duplicate keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tsode.errors import RecipeFileError

#: the repository's recipes folder
REPO_RECIPES = Path(__file__).resolve().parents[1] / "recipes"
INDEX = "index.yaml"


def _families(root: Path) -> dict[str, dict[str, list[str]]]:
    """family -> {task: [models]} for every ``<root>/<family>/index.yaml``."""
    found = {}
    for index in sorted(root.glob(f"*/{INDEX}")):
        table = yaml.safe_load(index.read_text(encoding="utf-8")) or {}
        if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
            raise RecipeFileError(f"{index}: expected a mapping of task -> [models]")
        found[index.parent.name] = {str(k): [str(m) for m in v] for k, v in table.items()}
    return found


def recipe_names(root: Path = REPO_RECIPES) -> list[str]:
    """Every recipe name under ``root``: single files, then each family's combinations."""
    names = sorted(p.stem for p in root.glob("*.yaml"))
    for family, tasks in _families(root).items():
        names += [f"{family}_{task}_{model}" for task, models in tasks.items() for model in models]
    return names


def recipe_files(name: str, root: Path = REPO_RECIPES) -> list[Path]:
    """The files of recipe ``name``, in the order they are given to the CLI.

    Raises:
        RecipeFileError: no such recipe (the message lists the known ones).
    """
    single = root / f"{name}.yaml"
    if single.is_file():
        return [single]
    for family, tasks in _families(root).items():
        if not name.startswith(f"{family}_"):
            continue
        rest = name[len(family) + 1 :]
        for task, models in tasks.items():
            model = rest[len(task) + 1 :] if rest.startswith(f"{task}_") else None
            if model in models:
                folder = root / family
                files = [folder / "base.yaml", folder / f"task_{task}.yaml", folder / f"model_{model}.yaml"]
                extra = folder / f"{task}_{model}.yaml"
                missing = [str(f) for f in files if not f.is_file()]
                if missing:
                    raise RecipeFileError(f"recipe {name!r}: missing file(s) {', '.join(missing)}")
                return [*files, *([extra] if extra.is_file() else [])]
    known = ", ".join(recipe_names(root))
    raise RecipeFileError(f"unknown recipe {name!r} (recipes in {root}: {known})")


def merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base`` as LightningCLI composes config files: mappings merge key
    by key, anything else (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return over


def load_recipe(name: str, root: Path = REPO_RECIPES) -> dict[str, Any]:
    """Recipe ``name`` as one mapping (its files merged with :func:`merge`)."""
    config: dict[str, Any] = {}
    for path in recipe_files(name, root):
        config = merge(config, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return config


# ---------------------------------------------------------------------- reading with bounds
#: Largest recipe file read (bytes), and most YAML nodes it may expand to (aliases included).
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_NODES = 100_000


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (naming key and line) and bounds the
    number of nodes the document expands to, aliases counted at every use (YAML alias bombs)."""

    def compose_document(self) -> Any:  # noqa: D102
        node = super().compose_document()
        _expanded_size(node, self.name, {})
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # noqa: D102
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable key: reported by SafeLoader itself
            if first is not None:
                raise RecipeFileError(
                    f"{self.name}: duplicate key {key!r} at line {line} (first given at line "
                    f"{first}); keep one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, name: str, memo: dict[int, int]) -> int:
    """Nodes ``node`` expands to (an alias counts the whole anchored subtree each time)."""
    if id(node) in memo:
        size = memo[id(node)]
    else:
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(_expanded_size(child, name, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(
                _expanded_size(k, name, memo) + _expanded_size(v, name, memo)
                for k, v in node.value
            )
        memo[id(node)] = size
    if size > MAX_RECIPE_NODES:
        raise RecipeFileError(
            f"{name}: the recipe expands to more than {MAX_RECIPE_NODES:,} YAML nodes "
            f"(line {node.start_mark.line + 1}; nested aliases such as a YAML 'alias bomb'?); "
            "write the values out or use fewer nested aliases"
        )
    return size


def check_recipe_file(path: str | Path) -> Any:
    """Read a recipe with bounded size and alias expansion and no duplicate keys; returns its
    content. Raises :class:`tsode.errors.RecipeFileError` naming the file (and key / line)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeFileError(
            f"{path}: recipe file is {size:,} bytes, more than the {MAX_RECIPE_BYTES:,} allowed"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    return check_recipe_text(text, str(path))


def check_recipe_text(text: str, name: str) -> Any:
    """:func:`check_recipe_file` for YAML given as text (``name`` says where it came from)."""
    if len(text.encode("utf-8", errors="replace")) > MAX_RECIPE_BYTES:
        raise RecipeFileError(f"{name}: {len(text):,} characters, more than the {MAX_RECIPE_BYTES:,} bytes allowed")
    loader = _RecipeLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise RecipeFileError(f"{name}: not valid YAML: {err}") from err
    finally:
        loader.dispose()


def _is_file(value: str) -> bool:
    """Whether ``value`` names an existing file (False for strings no path can be)."""
    try:
        return Path(value).is_file()
    except (OSError, ValueError):
        return False


def check_command_line_yaml(args: Sequence[str]) -> None:
    """The bounds of :func:`check_recipe_file` for YAML given on the command line: an inline
    ``--config '<yaml>'`` and any option value (jsonargparse parses values as YAML). Values that
    are not YAML are left to the parser."""
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if arg.startswith("--") and "=" not in arg:
            continue  # an option name; its value is the next item
        option = args[i - 1] if i and args[i - 1].startswith("-") and "=" not in args[i - 1] else arg.split("=", 1)[0]
        name = f"command-line value of {option}"
        if len(value.encode("utf-8", errors="replace")) > MAX_RECIPE_BYTES:
            raise RecipeFileError(
                f"{name}: {len(value):,} characters, more than the {MAX_RECIPE_BYTES:,} bytes allowed"
            )
        if ("&" in value or "*" in value or "\n" in value) and not _is_file(value):
            try:
                check_recipe_text(value, name)
            except RecipeFileError as err:
                if isinstance(err.__cause__, yaml.YAMLError):
                    continue  # not YAML: the parser will say what is wrong with it
                raise
