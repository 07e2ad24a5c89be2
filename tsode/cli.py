"""The ``tsode`` command: LightningCLI over every tsode model and data module.

Usage::

    tsode fit      --config recipes/<name>.yaml [--trainer.max_epochs 3 ...]
    tsode fit      --recipe physionet_forecast_odernn     (a recipe by name, see tsode.recipes)
    tsode validate --config recipes/<name>.yaml --ckpt_path <checkpoint>
    tsode test     --config recipes/<name>.yaml --ckpt_path <checkpoint>
    tsode predict  --config recipes/<name>.yaml --ckpt_path <checkpoint> --predictions.output f.csv
    tsode fit      --config recipes/<name>.yaml --print_config
    tsode quickstart [--config recipes/quickstart.yaml] [--max_epochs N]

(the console script, :mod:`tsode.__main__`, sends ``quickstart`` to :mod:`tsode.quickstart`,
which builds on this module; everything else to :func:`main` here.)

``--recipe NAME`` stands for the ``--config`` files of recipe ``NAME`` (a single file
``recipes/NAME.yaml``, or a composed combination such as ``physionet_forecast_odernn``: base,
task and model overlays, see :mod:`tsode.recipes`). A recipe names ``model.class_path`` (any ``tsode.models`` class), ``data.class_path`` (any
``tsode.data`` data module) and trainer options. ``num_channels`` /
``channel_means`` / ``channel_stds`` of the model are linked from the data module. Every run
logs to MLflow (:class:`tsode.tracking.MLflowLogger`, see ``docs/tracking.md``); the
``checkpoint`` section configures the best-checkpoint callback, ``tracking`` the MLflow
artifacts callback and ``predictions`` where ``tsode predict`` writes its forecasts.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from tsode.config import DATA_DERIVED_ARGS, legacy_key_hint
from tsode.data.config import data_key_hint
from tsode.errors import (
    RecipeFileError,
    SolverFailureContext,
    TrackingStoreError,
    TsodeError,
    explained,
)
from tsode.prediction_writer import ForecastWriter
from tsode.progress import (
    EpochLogger,
    has_trainable_parameters,
    logging_interval,
    quiet_lightning_warnings,
    stdout_is_tty,
)
from tsode.resume import (
    EpochSeed,
    ResumeCheckpoint,
    checkpoint_mlflow_run,
    close_orphaned_run,
    last_checkpoint,
    resume_dir,
)
from tsode.solvers import SolverError
from tsode.tracking import MLflowArtifacts, find_mlflow_logger

SUBCOMMANDS = ("fit", "validate", "test", "predict")
MONITOR = "val/mse"
REPO_RECIPES = Path(__file__).resolve().parents[1] / "recipes"

#: Values every model may take from the data module (linked only where the model accepts them).
LINKED_FROM_DATA = DATA_DERIVED_ARGS
#: Of those, the ones not every model takes: linked only when the chosen model (and, for
#: ``num_classes``, the data module: 0 unless ``task: classification``) has them.
OPTIONALLY_LINKED = ("num_static", "num_classes")


USAGE = """usage: tsode {fit,validate,test,predict} --config RECIPE.yaml [--key value ...]
       tsode {fit,validate,test,predict} --recipe NAME [--key value ...]   (e.g. physionet_forecast_odernn)
       tsode quickstart [--max_epochs N] [--config RECIPE.yaml]

  fit        train a model (an MLflow run)      validate / test   score a checkpoint (--ckpt_path)
  predict    forecast (--predictions.output f.csv)   quickstart   the README's main job
  options: --print_config, any recipe key (--trainer.max_epochs 3); tsode fit --help lists them
"""


class RecipeError(SystemExit):
    """A recipe (or command-line override) was rejected; the message names key and file."""


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


def expand_recipe_args(args: Sequence[str]) -> tuple[list[str], str | None]:
    """``args`` with each ``--recipe NAME`` (or ``--recipe=NAME``) replaced by ``--config``
    options for the files of recipe ``NAME`` (:func:`tsode.recipes.recipe_files`), and the
    last name given (None: no ``--recipe``). Raises :class:`RecipeFileError` for an unknown
    name."""
    from tsode.recipes import recipe_files

    out: list[str] = []
    name = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--recipe" or arg.startswith("--recipe="):
            if arg == "--recipe":
                if i + 1 >= len(args):
                    raise RecipeFileError("--recipe needs a recipe name (e.g. physionet_forecast_odernn)")
                name, i = args[i + 1], i + 2
            else:
                name, i = arg.split("=", 1)[1], i + 1
            for path in recipe_files(name):
                out += ["--config", str(path)]
            continue
        out.append(arg)
        i += 1
    return out, name


def _run_name(files: Sequence[str]) -> str | None:
    """The recipe's name for MLflow run names and resume folders: the ``--recipe`` name, else
    the stem of the last ``--config`` file."""
    if TsodeArgumentParser.recipe_name:
        return TsodeArgumentParser.recipe_name
    return Path(files[-1]).stem if files else None


def _recipe_files(args: Sequence[str]) -> list[str]:
    """Config files given with ``--config`` / ``-c`` / ``--config=...``."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


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


def _normalizer_means(normalizer: Any) -> list[float]:
    return [float(x) for x in normalizer.mean]


def _normalizer_stds(normalizer: Any) -> list[float]:
    return [float(x) for x in normalizer.std]


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
#: (:class:`tsode.data.TaskConfig`, :class:`tsode.data.LoaderConfig`).
_BLOCK_FIELD_ERROR = re.compile(r"^\s*(?:- )?(?P<block>task|loader)\.(?P<field>[a-z_]+):? (?P<text>.+)$", re.M)


def block_field_error(message: str) -> tuple[str, str] | None:
    """``("task.cutoff", "task.cutoff must be ...")`` when ``message`` holds the error of a
    data module's configuration block, else None."""
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


class TsodeArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with recipe-aware error messages (key, reason and file)."""

    recipe_files: list[str] = []
    #: the ``--recipe`` name the files came from (None: given as ``--config`` files)
    recipe_name: str | None = None

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        key, reason = explain_parse_error(message)
        report_recipe_error(key, reason, message, self.recipe_files)


class MLflowSaveConfigCallback(SaveConfigCallback):
    """Log the fully resolved recipe to the MLflow run: flattened params + ``config/config.yaml``."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = find_mlflow_logger(trainer)
        if logger is None:
            return
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        # values linked from the data module are filled in at instantiation: take them from
        # the model, so the logged recipe is complete
        init_args = resolved.get("model", {}).setdefault("init_args", {})
        hparams = getattr(pl_module, "hparams", {})
        for name in LINKED_FROM_DATA:
            if name in hparams and init_args.get(name) is None:
                value = hparams[name]
                init_args[name] = list(value) if isinstance(value, tuple) else value
        logger.log_config(resolved)
        for path in TsodeArgumentParser.recipe_files:
            if Path(path).is_file():
                logger.experiment.log_artifact(logger.run_id, path, "config/recipe")


class TsodeCLI(LightningCLI):
    """LightningCLI in subclass mode over ``LightningModule`` / ``LightningDataModule``."""

    #: where ``tsode fit`` keeps ``last.ckpt`` (see :func:`tsode.resume.resume_dir`)
    resume_dir: Path | None = None

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        import tsode.data  # noqa: F401  (registers the data modules as subclasses)
        import tsode.models  # noqa: F401  (registers the models as subclasses)

        kwargs.setdefault("parser_kwargs", {"parser_mode": "yaml"})
        super().__init__(
            model_class=pl.LightningModule,
            datamodule_class=pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=MLflowSaveConfigCallback,
            save_config_kwargs={"save_to_log_dir": False},
            trainer_defaults={
                "logger": {"class_path": "tsode.tracking.MLflowLogger"},
                # progress bars on a terminal only; elsewhere EpochLogger (a line per epoch)
                "enable_progress_bar": stdout_is_tty(),
            },
            args=list(args) if args is not None else None,
            **kwargs,
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        self.parser_class = TsodeArgumentParser
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (a list, as on the command line; None: ``sys.argv``)."""
        self.config = parser.parse_args(args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch}",
            }
        )
        parser.add_lightning_class_args(MLflowArtifacts, "tracking")
        parser.add_lightning_class_args(ForecastWriter, "predictions")
        # (``num_static`` is linked in ``before_instantiate_classes``, only for a model whose
        # constructor takes it: jsonargparse passes a link target the class lacks as an
        # unexpected keyword argument under ``validate``/``test``/``predict``)
        parser.link_arguments("data.num_channels", "model.init_args.num_channels", apply_on="instantiate")
        parser.link_arguments(
            "data.normalizer", "model.init_args.channel_means", compute_fn=_normalizer_means,
            apply_on="instantiate",
        )
        parser.link_arguments(
            "data.normalizer", "model.init_args.channel_stds", compute_fn=_normalizer_stds,
            apply_on="instantiate",
        )

    def _link_optional(self, config: Any, names: Sequence[str]) -> None:
        """Link ``data.<name>`` into ``model.init_args.<name>`` for each ``name`` the chosen
        model's constructor accepts (and the recipe leaves at its default)."""
        model = config.get("model") if hasattr(config, "get") else None
        class_path = getattr(model, "class_path", None)
        if not isinstance(class_path, str):
            return
        module_name, _, class_name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
            accepted = inspect.signature(cls.__init__).parameters
        except (ImportError, AttributeError, TypeError, ValueError):
            return  # reported by instantiation
        parser = self._parser(self.subcommand)
        init_args = getattr(model, "init_args", None)
        data_class = _config_class(config.get("data") if hasattr(config, "get") else None)
        for name in names:
            if name not in accepted:
                continue
            if data_class is not None and not hasattr(data_class, name):
                continue  # a data module without it (e.g. a user's own): nothing to link
            given = getattr(init_args, name, None) if init_args is not None else None
            if given is None or given == accepted[name].default:  # not set by the recipe
                parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        """Build the recipe's objects; a constructor rejecting a value is a recipe error
        (key, reason and file), not a traceback."""
        try:
            super().instantiate_classes()
        except (RecipeError, KeyboardInterrupt):
            raise
        except Exception as error:
            store_error = _caused_by(error, TrackingStoreError)
            if store_error is not None:  # the tracking store, not the recipe's trainer.logger
                raise store_error from error
            data_error = _data_error(error)
            if data_error is not None:  # the data is wrong, not the recipe
                sys.stderr.write(f"tsode: invalid data: {data_error}\n")
                raise RecipeError(2) from error
            config = self.config[self.subcommand] if self.subcommand else self.config
            key, reason = explain_instantiation_error(error, config)
            report_recipe_error(key, reason, str(error), TsodeArgumentParser.recipe_files)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> pl.Trainer:
        """The recipe's trainer, plus :class:`SolverFailureContext` (solver failures name
        series ids, stage, epoch and batch); its :class:`MLflowArtifacts` callbacks log
        ``Forecaster.from_trained`` as the pyfunc model."""
        extra: list[Any] = [SolverFailureContext()]
        if not config.get("enable_progress_bar", True) and self.subcommand == "fit":
            extra.append(EpochLogger())
        if self.subcommand == "fit" and getattr(self, "resume_dir", None) is not None:
            # last.ckpt where the next `tsode fit ... --ckpt_path last` finds it; per-epoch seeds
            extra.extend([ResumeCheckpoint(self.resume_dir), EpochSeed()])
        trainer = super()._instantiate_trainer(config, [*callbacks, *extra])
        from tsode.api import Forecaster

        for callback in trainer.callbacks:  # the pyfunc model MLflowArtifacts logs
            if isinstance(callback, MLflowArtifacts) and callback.forecaster_factory is None:
                callback.forecaster_factory = Forecaster.from_trained
        return trainer

    def before_fit(self) -> None:
        """Refuse a fit with an empty validation split before any training (the checkpoint and
        early stopping monitor ``val/mse``)."""
        from tsode.api import check_validation_split

        if self.datamodule is not None and hasattr(self.datamodule, "train_dataloader"):
            try:
                self.datamodule.setup("fit")
                batches = len(self.datamodule.train_dataloader())
            except (TypeError, NotImplementedError):  # no sized loader: leave the interval
                batches = 0
            self.trainer.log_every_n_steps = logging_interval(self.trainer.log_every_n_steps, batches)
        monitors = [getattr(cb, "monitor", None) for cb in self.trainer.callbacks]
        if self.datamodule is None or not any(isinstance(m, str) and m.startswith("val/") for m in monitors):
            return
        self.datamodule.setup("fit")
        fractions = None if getattr(self.datamodule, "splits", None) is not None else getattr(
            self.datamodule, "split_fractions", None
        )
        try:
            check_validation_split(self.datamodule, fractions, where="tsode fit")
        except TsodeError as err:
            raise type(err)(
                f"{err} (or, in the recipe, no EarlyStopping callback and checkpoint.monitor: null)"
            ) from None

    def _parse_ckpt_path(self) -> None:
        """Check ``ckpt_path`` (command line or recipe) before Lightning reads it (see
        :func:`check_checkpoint`), then let Lightning take the model arguments it stores."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_checkpoint(self.config[subcommand].get("ckpt_path"))
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand; an ODE solver failure is re-raised naming the series ids."""
        try:
            with quiet_lightning_warnings(has_trainable_parameters(self.model)):
                super()._run_subcommand(subcommand)
        except SolverError as err:
            found = explained(err)
            if found is None:
                raise
            raise found from err
        if subcommand == "fit" and self.trainer.is_global_zero:
            print(
                fit_summary(
                    self.trainer, TsodeArgumentParser.recipe_files, TsodeArgumentParser.recipe_name
                ),
                flush=True,
            )

    def _parent_run_tags(self, config: Any) -> dict[str, str]:
        """Tags making a test / predict run a child of the fit run that wrote its checkpoint."""
        ckpt = config.get("ckpt_path") if hasattr(config, "get") else None
        if self.subcommand not in ("validate", "test", "predict") or not ckpt:
            return {}
        run_id = fit_run_id(ckpt)
        if run_id is None:
            return {}
        return {"mlflow.parentRunId": run_id, "tsode.fit_run_id": run_id,
                "tsode.checkpoint": str(ckpt), "tsode.subcommand": self.subcommand}

    def before_instantiate_classes(self) -> None:
        """Link ``num_static`` when the model takes it; name the MLflow run after the recipe
        file unless the recipe names it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._link_optional(config, OPTIONALLY_LINKED)
        logger = config.get("trainer", {}).get("logger")
        files = TsodeArgumentParser.recipe_files
        if logger is not None and not isinstance(logger, bool):
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
            if init_args is not None:
                stem = _run_name(files)
                tags = self._parent_run_tags(config)
                if tags:  # a child run of the fit: `<recipe>-test`, `<recipe>-predict`
                    init_args["tags"] = {**tags, **dict(init_args.get("tags") or {})}
                    if init_args.get("run_name") is None and stem:
                        init_args["run_name"] = f"{stem}-{self.subcommand}"
                if init_args.get("run_name") is None and stem:
                    init_args["run_name"] = stem
        if self.subcommand == "fit":
            self._resolve_resume(config, logger)

    def _resolve_resume(self, config: Any, logger: Any) -> None:
        """Set :attr:`resume_dir` (where this fit keeps ``last.ckpt``) and turn ``--ckpt_path
        last`` into that file, continuing the MLflow run stored in it."""
        from tsode.tracking import MLflowLogger, resolve_tracking_uri

        stem = _run_name(TsodeArgumentParser.recipe_files)
        init_args = None
        class_path = getattr(logger, "class_path", None) if logger is not None else None
        if isinstance(class_path, str) and _is_subclass(class_path, MLflowLogger):
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is not None:
            self.resume_dir = resume_dir(
                init_args.get("save_dir") or "outputs",
                init_args.get("experiment_name") or "tsode",
                init_args.get("run_name") or stem,
            )
        else:
            root = config.get("trainer", {}).get("default_root_dir") or "."
            self.resume_dir = resume_dir(Path(root) / "outputs", None, stem)
        found = last_checkpoint(self.resume_dir)
        if str(config.get("ckpt_path")) != "last":
            if found is not None:
                close_orphaned_run(found)  # a killed fit's run is not left RUNNING
            return
        if found is None:
            sys.stderr.write(
                f"tsode: fit --ckpt_path last: no last checkpoint in {self.resume_dir}; "
                "training from scratch\n"
            )
            config["ckpt_path"] = None
            return
        check_checkpoint(str(found))
        config["ckpt_path"] = str(found)
        sys.stderr.write(f"tsode: resuming from {found}\n")
        if init_args is not None and init_args.get("run_id") is None:
            uri = resolve_tracking_uri(init_args.get("tracking_uri"))
            init_args["run_id"] = checkpoint_mlflow_run(found, uri)


def _is_subclass(class_path: str, base: type) -> bool:
    """Whether ``class_path`` names a subclass of ``base`` (False if it cannot be imported)."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, base)


def _config_class(node: Any) -> type | None:
    """The class a ``class_path`` config node names (None if it has none or cannot be imported)."""
    class_path = getattr(node, "class_path", None)
    if not isinstance(class_path, str):
        return None
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if isinstance(cls, type) else None


def fit_run_id(ckpt: str | Path) -> str | None:
    """The MLflow run id of the fit that wrote checkpoint ``ckpt``: the one saved in it by
    :class:`tsode.tracking.MLflowArtifacts`, else the run folder of its path
    (``<save_dir>/<experiment id>/<run id>/checkpoints/<file>``); None if neither."""
    if str(ckpt) in SPECIAL_CKPT_PATHS or not Path(ckpt).is_file():
        return None
    from tsode.tracking import checkpoint_run_id

    found = checkpoint_run_id(ckpt)
    if found is not None:
        return found
    path = Path(ckpt).resolve()
    if path.parent.name == "checkpoints" and re.fullmatch(r"[0-9a-f]{32}", path.parent.parent.name):
        return path.parent.parent.name
    return None


def fit_summary(
    trainer: pl.Trainer, recipe_files: Sequence[str], recipe_name: str | None = None
) -> str:
    """What a finished ``tsode fit`` produced and what to run next: the MLflow run, the best
    checkpoint, the best validation score (and the last epoch's validation metrics). The next
    commands name ``--recipe recipe_name`` when given, else the ``--config`` files."""
    lines = [f"tsode: fit finished after {trainer.current_epoch} epoch(s)"]
    logger = find_mlflow_logger(trainer)
    if logger is not None and logger.initialized:
        lines.append(f"  MLflow run:      {logger.run_id} (experiment "
                     f"{logger.experiment_id}, {logger.tracking_uri})")
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") or ""
    if best:
        lines.append(f"  best checkpoint: {best}")
    score = getattr(callback, "best_model_score", None)
    if score is not None:
        lines.append(f"  best {callback.monitor}: {float(score):.6g}")
    val = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if val:
        shown = ", ".join(f"{k} {float(v):.4g}" for k, v in sorted(val.items())[:8])
        lines.append(f"  last epoch:      {shown}")
    if best:
        config = (
            f"--recipe {recipe_name}" if recipe_name
            else " ".join(f"--config {f}" for f in recipe_files) or "--config <recipe>"
        )
        lines.append(f"  next:            tsode test {config} --ckpt_path {best}")
        lines.append(f"                   tsode predict {config} --ckpt_path {best} "
                     "--predictions.output forecasts.csv")
    return "\n".join(lines)


def limit_threads() -> None:
    """One intra-op thread unless ``OMP_NUM_THREADS`` says otherwise.

    tsode's models run many small ops (ODE steps on small batches); on a busy CPU, torch's
    intra-op thread pool makes each of them orders of magnitude slower.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


#: ``ckpt_path`` values Lightning resolves itself (not files).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def check_checkpoint(ckpt: Any) -> None:
    """A missing, truncated, tampered (pickled objects), non-finite or foreign checkpoint is a
    :class:`tsode.errors.CheckpointFileError` naming the file; read with ``weights_only=True``."""
    if not isinstance(ckpt, str | Path) or str(ckpt) in SPECIAL_CKPT_PATHS or str(ckpt).startswith(
        "registry:"
    ):
        return
    import torch

    from tsode.checkpoints import load_checkpoint_weights
    from tsode.errors import CheckpointFileError
    from tsode.models import allowed_model_class

    load_checkpoint_weights(ckpt)  # exists, readable, weights only, finite
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hparams = state.get("hyper_parameters") or {}
    named = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if named is not None and (not isinstance(named, str) or allowed_model_class(named) is None):
        raise CheckpointFileError(
            f"{ckpt}: names model class {named!r}, which is not a tsode model or a class "
            "registered with tsode.register_model; refusing to use it"
        )


def _ckpt_args(args: Sequence[str]) -> list[str]:
    """``--ckpt_path`` values given on the command line."""
    found = []
    for i, arg in enumerate(args):
        if arg == "--ckpt_path" and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--ckpt_path="):
            found.append(arg.split("=", 1)[1])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tsode`` command's LightningCLI subcommands (``fit`` / ``validate`` / ``test`` /
    ``predict``); the console script (:mod:`tsode.__main__`) routes ``quickstart`` elsewhere."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(USAGE)
        return 2
    if args and args[0] == "quickstart":  # dispatched by the console script, tsode.__main__
        sys.stderr.write(
            "tsode: 'quickstart' is run by the tsode console script (tsode.__main__:main; "
            "python -m tsode quickstart); reinstall tsode if your script predates it\n"
        )
        return 2
    try:
        expanded, _ = expand_recipe_args(args)
    except RecipeFileError as err:
        sys.stderr.write(f"tsode: invalid recipe: {err}\n")
        return 2
    missing = [path for path in _recipe_files(expanded) if not _is_file(path)]
    if missing:
        sys.stderr.write(f"tsode: recipe file not found: {', '.join(missing)}{_moved_hint(missing)}\n")
        return 2
    from tsode.data import DataValidationError

    try:
        run(args)
    except RecipeFileError as err:
        sys.stderr.write(f"tsode: invalid recipe: {err}\n")
        return 2
    except (TsodeError, DataValidationError) as err:  # explained: no traceback
        sys.stderr.write(f"tsode: error: {' '.join(str(err).split())}\n")
        return 1
    return 0


def _moved_hint(missing: Sequence[str]) -> str:
    """For a missing file named like a recipe (``recipes/physionet_forecast_odernn.yaml``,
    now composed from overlays), the ``--recipe`` option that runs it."""
    from tsode.recipes import recipe_names

    names = set(recipe_names())
    found = [Path(m).stem for m in missing if Path(m).stem in names]
    if not found:
        return ""
    return f" (recipe {found[0]!r} is composed from overlays: use --recipe {found[0]})"


def run(args: Sequence[str]) -> TsodeCLI:
    """Run the ``tsode`` LightningCLI on ``args`` in this process (``--recipe NAME`` expanded
    to its ``--config`` files); returns the CLI object (its ``trainer``, ``model`` and
    ``datamodule`` are inspectable afterwards)."""
    limit_threads()
    args, name = expand_recipe_args(args)
    TsodeArgumentParser.recipe_name = name
    check_command_line_yaml(args)  # inline YAML: bounded size / alias expansion
    files = [f for f in _recipe_files(args) if _is_file(f)]  # others: inline YAML
    for file in files:  # bounded size / alias expansion, no duplicate keys (RecipeFileError)
        check_recipe_file(file)
    for ckpt in _ckpt_args(args):  # before the (slow) parser is built
        check_checkpoint(ckpt)
    TsodeArgumentParser.recipe_files = files
    return TsodeCLI(args=args)


if __name__ == "__main__":
    sys.exit(main())
