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
"""

from __future__ import annotations

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
