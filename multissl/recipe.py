"""Recipes: typed, validated configuration read from YAML, every key overridable on the command line.

Unknown keys and wrong types are errors that name the key (and suggest the closest known one). The
recipes shipped with multissl live in ``multissl/recipes/<modality>/<name>.yaml`` and are addressed by
name (``text/tiny``) wherever a recipe file is taken.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import os
import re
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from multissl.core.blocks import EncoderConfig
from multissl.core.health import HealthConfig
from multissl.data.config import DataConfig
from multissl.data.masking import MaskConfig
from multissl.errors import RecipeError
from multissl.methods import get_method
from multissl.methods.data2vec import Data2VecConfig
from multissl.modalities import get_modality

__all__ = ["RECIPES", "CardConfig", "DataConfig", "Recipe", "RecipeError", "RecipeInfo", "TrainConfig", "describe",
           "field_docs", "find_recipe", "from_dict", "keys_help", "load_recipe", "parse_overrides", "recipe_info",
           "shipped_recipes", "type_name"]

RECIPES = Path(__file__).resolve().parent / "recipes"
"""The recipes shipped inside the package (package data, so they come with the wheel)."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping, handed to transformers' ``TrainingArguments``."""

    output_dir: str = ""
    """Run folder: checkpoints, logs, the recipe used. Also ``--output_dir``."""

    max_steps: int = 1000
    """Optimiser updates."""

    batch_size: int = 8
    """Samples per device per forward (before multi-mask clones)."""

    grad_accum: int = 1
    """Forwards accumulated per optimiser update."""

    lr: float = 2e-4
    """Peak learning rate."""

    betas: tuple[float, float] = (0.9, 0.98)
    """Adam betas."""

    eps: float = 1e-6
    """Adam epsilon."""

    weight_decay: float = 0.01
    """Decoupled weight decay (not on biases and norms)."""

    schedule: Literal["cosine", "linear", "constant_with_warmup", "warmup_stable_decay"] = "cosine"
    """Learning-rate schedule after warm-up; warmup_stable_decay is fairseq's tri-stage."""

    warmup_steps: int = 0
    """Linear warm-up updates."""

    decay_steps: int = 0
    """Final decay updates (warmup_stable_decay only)."""

    max_grad_norm: float = 0.0
    """Gradient clipping norm; 0 disables it."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Mixed precision for the forward passes (EMA weights stay fp32)."""

    logging_steps: int = 10
    """Log every this many updates."""

    save_steps: int = 500
    """Checkpoint every this many updates."""

    save_total_limit: int = 3
    """Checkpoints kept."""

    seed: int = 1
    """Seed for weights, dropout, data order and masks."""

    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Trainer loggers (tensorboard, wandb, ...); a JSON-lines and CSV log is always written."""

    max_nonfinite: int = 20
    """An update whose loss or gradient is NaN/inf is skipped and counted; after this many in a row the
    run saves a checkpoint (the last healthy weights) and stops."""

    fused_adamw: bool = True
    """Use PyTorch's fused AdamW kernel on GPUs (the CPU keeps the default one)."""

    compile: bool = False
    """``torch.compile`` each transformer block of the student and the teacher (shapes marked dynamic,
    since sparse students see varying lengths)."""

    fsdp: Literal["", "full_shard", "shard_grad_op"] = ""
    """FSDP (version 2, through the Trainer) for models that do not fit one device: ``full_shard``
    also frees the gathered weights after each forward, ``shard_grad_op`` keeps them until the
    backward. Each transformer block is a unit; the teacher is sharded like the student. Empty: DDP
    under torchrun."""

    def validate(self, where: str = "train") -> None:
        for key in ("max_steps", "batch_size", "grad_accum", "logging_steps", "save_steps", "max_nonfinite"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise RecipeError(f"{where}.lr must be > 0, got {self.lr}")


@dataclass
class CardConfig:
    """Model card metadata for export and push."""

    license: str = "apache-2.0"
    """License of the exported weights."""

    datasets: list[str] = field(default_factory=list)
    """Hub ids or names of the pretraining data."""

    language: list[str] = field(default_factory=list)
    """Language codes of the data."""


@dataclass
class Recipe:
    """A pretraining recipe."""

    modality: str = "text"
    """Registered modality adapter."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Shared transformer stack."""

    adapter: dict[str, Any] = field(default_factory=dict)
    """Modality adapter settings (checked against the adapter's own config)."""

    views: dict[str, Any] = field(default_factory=dict)
    """Augmented views, for objectives that compare views of a sample (checked against the modality's
    views config)."""

    method: Any = field(default_factory=Data2VecConfig, metadata={"parse": "method"})
    """The objective: ``name`` picks it (default data2vec) and types the rest of the section."""

    mask: MaskConfig = field(default_factory=MaskConfig)
    """Student masking."""

    health: HealthConfig = field(default_factory=HealthConfig)
    """Collapse guards."""

    data: DataConfig = field(default_factory=DataConfig)
    """Input data."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""

    init_from: str = ""
    """An HF model folder to start from (continued pretraining); empty: random init."""

    card: CardConfig = field(default_factory=CardConfig)
    """Model card metadata."""

    def adapter_config(self) -> Any:
        """The adapter section parsed into the adapter's config class."""
        try:
            cls = get_modality(self.modality).config_class
        except KeyError as e:
            raise RecipeError(str(e.args[0])) from None
        return from_dict(cls, self.adapter, "adapter")

    def views_config(self) -> Any:
        """The views section parsed into the modality's views class (None: the modality makes no views)."""
        try:
            cls = get_modality(self.modality).views_class
        except KeyError as e:
            raise RecipeError(str(e.args[0])) from None
        wanted = get_method(self.method.name).student_view(self.method).views
        if cls is None and (wanted or self.views):
            raise RecipeError(f"views: modality {self.modality!r} makes no augmented views"
                              + (f" (method {self.method.name!r} compares views)" if wanted else ""))
        if self.views and not wanted:
            raise RecipeError(f"views: method {self.method.name!r} takes no augmented views (remove the section)")
        return from_dict(cls, self.views, "views") if cls is not None else None

    def validate(self) -> None:
        """Check every section; raises :class:`RecipeError` naming the key."""
        try:
            for name in ("encoder", "method", "mask", "health", "data", "train"):
                getattr(self, name).validate(name)
            adapter = self.adapter_config()
            if hasattr(adapter, "validate"):
                adapter.validate("adapter")
            views = self.views_config()
            if views is not None:
                views.validate("views")
        except RecipeError:
            raise
        except ValueError as e:
            raise RecipeError(str(e)) from None
        takes_labels = get_method(self.method.name).labels
        if takes_labels and not self.data.label_column:
            raise RecipeError(f"data.label_column is empty: method {self.method.name!r} trains on labels "
                              "(pass --label-column COLUMN)")
        if self.data.label_column and not takes_labels:
            raise RecipeError(f"data.label_column: method {self.method.name!r} takes no labels (remove it)")
        try:
            get_method(self.method.name).check(self.method, self.encoder, self.mask)
            if views is not None and get_method(self.method.name).student_view(self.method).views:
                get_method(self.method.name).check_views(self.method, views)
        except ValueError as e:
            raise RecipeError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> None:
        """Write the recipe as YAML (to a temporary name, then renamed)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(tmp, path)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


# Why not pydantic (tried with 2.14): validating these dataclasses through a pydantic model with
# extra="forbid" (TypeAdapter takes no config for a dataclass), its errors translated to ours, passes
# tests/test_config.py, but lax mode turns booleans into numbers (`lr: true` trains at 1.0; `--compile 1`
# is True) and only strict mode stops that, which also refuses what recipes rely on: "1e-3" as a float
# (PyYAML reads 1e-3 as a string), a list for a tuple, 1.0 for an int. Comma-separated lists
# (`--report_to none,wandb`) would need a marker on every list field, the method section still needs
# its own pass (its class depends on its name), and the table mapping pydantic's error types to our
# one-line messages is about as long as this function. It also adds ~0.2 s (import, schema build) to
# the first load. So the coercion stays hand-written.
def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RecipeError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise RecipeError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise RecipeError(f"{key}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str) and origin is list:
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and Ellipsis not in args:
            if len(value) != len(args):
                raise RecipeError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        return origin(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    raise RecipeError(f"{key}: unsupported type {tp}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and type.

    >>> from_dict(MaskConfig, {"kind": "span", "prob": 0.65}).prob
    0.65
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(fields)}"
            raise RecipeError(f"unknown key '{full}'{hint}")
        if fields[key].metadata.get("parse") == "method":
            kwargs[key] = _method_config(value, full)
        else:
            kwargs[key] = _coerce(hints[key], value, full)
    return cls(**kwargs)


def method_class(section: Any) -> type:
    """The config class of a ``method`` section, by its ``name`` (data2vec when it has none: recipes
    and run folders written before methods had names)."""
    name = section.get("name", "data2vec") if isinstance(section, dict) else "data2vec"
    try:
        return get_method(str(name)).config_class
    except KeyError as e:
        raise RecipeError(str(e.args[0])) from None


def _method_config(value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        raise RecipeError(f"{key}: expected a mapping, got {value!r}")
    return from_dict(method_class(value), value, key)


@functools.cache
def _leaf_paths(cls: type, prefix: str = "", method: type = Data2VecConfig) -> tuple[str, ...]:
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if f.metadata.get("parse") == "method":
            out += _leaf_paths(method, path + ".")
        elif dataclasses.is_dataclass(hints[f.name]):
            out += _leaf_paths(hints[f.name], path + ".")
        else:
            out.append(path)
    return tuple(out)


ALIASES = {"data": "data.path", "tokenizer": "data.tokenizer"}


def resolve_key(key: str, modality: str, method: type = Data2VecConfig) -> list[str]:
    """The dotted path an override key stands for: a full path, an alias, or a unique leaf name
    (of the recipe, its modality's adapter section and its method's section)."""
    key = key.replace("-", "_")
    if key in ALIASES:
        return ALIASES[key].split(".")
    if key.startswith("views."):  # checked against the modality's views class when the recipe is built
        return key.split(".")
    paths = list(_leaf_paths(Recipe, method=method))
    try:
        paths += _leaf_paths(get_modality(modality).config_class, "adapter.")
    except KeyError:
        pass
    if key in paths:
        return key.split(".")
    hits = [p for p in paths if p.endswith("." + key)]
    if len(hits) == 1:
        return hits[0].split(".")
    if len(hits) > 1:
        raise RecipeError(f"override --{key} is ambiguous: use one of {', '.join('--' + h for h in hits)}")
    close = difflib.get_close_matches(key, [p.split(".")[-1] for p in paths] + paths, n=1)
    raise RecipeError(f"unknown override --{key}" + (f" (did you mean --{close[0]}?)" if close else ""))


def parse_overrides(tokens: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Command-line ``--key value``, ``--key=value`` and bare ``--flag`` (true) tokens as {key: value},
    each value read as YAML (``5`` an int, ``[0.9, 0.95]`` a list, ``none`` a string).

    >>> parse_overrides(["--max_steps", "5", "--betas=[0.9, 0.95]", "--strict"])
    {'max_steps': 5, 'betas': [0.9, 0.95], 'strict': True}
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise RecipeError(f"override {token!r}: expected --key value")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                value = "true"  # a bare flag
            else:
                i += 1
                value = tokens[i]
        out.pop(key, None)  # a repeated key counts where it was last given
        out[key] = yaml.safe_load(value) if value != "" else ""
        i += 1
    return out


def shipped_recipes() -> list[str]:
    """The names of the recipes shipped with multissl (``modality/name``), sorted.

    >>> "text/tiny" in shipped_recipes()
    True
    """
    return sorted(p.relative_to(RECIPES).with_suffix("").as_posix() for p in RECIPES.glob("*/*.yaml"))


def find_recipe(recipe: str | Path) -> Path:
    """The file of ``recipe``: a path to a YAML file, or the name of a shipped recipe (``text/tiny``;
    ``text/tiny.yaml`` and ``recipes/text/tiny.yaml`` also name it). A file of that path wins.

    >>> find_recipe("text/tiny").name
    'tiny.yaml'
    """
    path = Path(recipe)
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml").removeprefix("recipes/")
    names = shipped_recipes()
    if name in names:
        return RECIPES / f"{name}.yaml"
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    known = f"did you mean {', '.join(close)}?" if close else "multissl recipes lists the shipped ones"
    raise RecipeError(f"recipe {recipe}: no such file, and no shipped recipe of that name ({known})")


def _read(recipe: str | Path) -> dict[str, Any]:
    path = find_recipe(recipe)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: the top level must be a mapping")
    return raw


def load_recipe(path: str | Path | Recipe | None, overrides: list[str] | None = None,
                values: Mapping[str, Any] | None = None) -> Recipe:
    """Read a recipe (a YAML file, the name of a shipped one such as ``text/tiny``, or a :class:`Recipe`),
    apply the command-line ``overrides`` (``--key value`` tokens) and then ``values`` (key -> Python
    value, the keys spelled as in overrides: ``method.ema.decay``, ``max_steps``, ``data``), then validate.

    >>> load_recipe(None, ["--max_steps", "5"]).train.max_steps
    5
    >>> load_recipe("text/tiny", values={"method.ema.decay": 0.99}).method.ema.decay
    0.99
    """
    if isinstance(path, Recipe):
        raw, path = path.to_dict(), None
    else:
        raw = _read(path) if path else {}
    changes = {**parse_overrides(overrides or []), **(values or {})}
    modality = str(raw.get("modality", "text"))
    section = raw.get("method") if isinstance(raw.get("method"), dict) else {}
    method_cls = method_class({"name": changes.get("method.name", section.get("name", "data2vec"))})
    for key, value in changes.items():
        path_ = resolve_key(key, modality, method_cls)
        node = raw
        for part in path_[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override --{key}: '{part}' is not a section")
        node[path_[-1]] = str(value) if isinstance(value, os.PathLike) else value
    where = f"recipe {path}: " if path else ""
    try:
        recipe = from_dict(Recipe, raw)
        recipe.validate()
    except RecipeError as e:
        raise RecipeError(where + str(e)) from None
    return recipe


@dataclass
class RecipeInfo:
    """A shipped recipe, as ``multissl recipes`` lists it."""

    name: str
    """What ``multissl pretrain`` takes, e.g. ``text/tiny``."""

    modality: str
    """The recipe's ``modality``."""

    method: str
    """The objective's ``method.name``, with its version where it has one (``data2vec v2``)."""

    description: str
    """The first sentence of the recipe's leading comment, its remarks in parentheses left out."""

    path: Path
    """The file."""


def describe(text: str) -> str:
    r"""The first sentence of the comment block that opens a recipe, without the remarks in parentheses.

    >>> describe("# A tiny encoder (4 blocks): fast. Used by tests.\nmodality: text\n")
    'A tiny encoder'
    """
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    summary = " ".join(lines)
    while (shorter := re.sub(r"\s*\([^()]*\)", "", summary)) != summary:
        summary = shorter
    return re.split(r"[.:;](?:\s|$)", summary, maxsplit=1)[0].strip()


def recipe_info(name: str) -> RecipeInfo:
    """Modality, method and description of a recipe (loaded and validated, so they are what a run uses).

    >>> recipe_info("text/mlm-tiny").method
    'mlm'
    """
    path = find_recipe(name)
    recipe = load_recipe(path)
    method = recipe.method.name
    if getattr(recipe.method, "version", None) is not None:
        method += f" v{recipe.method.version}"
    return RecipeInfo(name, recipe.modality, method, describe(path.read_text()), path)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring of each field of dataclass ``cls``: the string literal under the field in its
    source (base classes included). Fields without one are missing.

    >>> field_docs(TrainConfig)["max_steps"]
    'Optimiser updates.'
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # bases first: a subclass's text wins
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, IndexError, AttributeError):
            continue  # no source (a built-in, a frozen install): the help shows no text
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def type_name(tp: Any) -> str:
    """A field's type as the help shows it.

    >>> type_name(tuple[int, ...]), type_name(Literal["a", "b"]), type_name(float | None)
    ('tuple[int, ...]', "'a' | 'b'", 'float | None')
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if tp is type(None):
        return "None"
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _yaml(value: Any) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def _short_name(path: str, modality: str, method: type) -> str | None:
    """The shorter override that means ``path`` (an alias or its unique last part), if any."""
    for alias, target in ALIASES.items():
        if target == path:
            return alias
    leaf = path.rsplit(".", 1)[-1]
    if leaf == path:
        return None
    try:
        return leaf if resolve_key(leaf, modality, method) == path.split(".") else None
    except RecipeError:
        return None


def keys_help(recipe: Recipe, name: str = "", width: int = 100) -> str:
    """Every key of ``recipe`` with its type, value and docstring, grouped by section: generated from
    the dataclasses (the adapter's and the method's config classes included), so it cannot drift.

    >>> "--train.max_steps, --max_steps  int = 1000" in keys_help(load_recipe(None))
    True
    """
    method = type(recipe.method)
    hints, section_docs = typing.get_type_hints(Recipe), field_docs(Recipe)
    out = [textwrap.fill(f"Keys of {name or 'the recipe'} and their values (overrides given included). Set any "
                         "with --key value after the recipe; the short form after a comma (a key's last part, "
                         "where no other key ends the same way) works as well.", width)]

    def row(path: str, tp: Any, value: Any, doc: str) -> None:
        short = _short_name(path, recipe.modality, method)
        out.append(f"  --{path}{f', --{short}' if short else ''}  {type_name(tp)} = {_yaml(value)}")
        if doc:
            out.append(textwrap.fill(" ".join(doc.split()), width, initial_indent=" " * 6, subsequent_indent=" " * 6))

    def rows(obj: Any, prefix: str) -> None:
        types_, docs = typing.get_type_hints(type(obj)), field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                rows(value, f"{prefix}{f.name}.")
            else:
                row(prefix + f.name, types_[f.name], value, docs.get(f.name, ""))

    sections = []
    out += ["", "top level:"]
    for f in dataclasses.fields(Recipe):
        value = recipe.adapter_config() if f.name == "adapter" else getattr(recipe, f.name)
        if f.name == "views":  # the modality's views config, where the method takes views
            value = recipe.views_config() if get_method(recipe.method.name).student_view(recipe.method).views else None
            if value is None:
                continue
        if dataclasses.is_dataclass(value):
            sections.append((f.name, value))
        else:  # modality, init_from
            row(f.name, hints[f.name], value, section_docs.get(f.name, ""))
    for key, value in sections:
        label = f"{key} ({type(value).__name__})" if key in ("adapter", "method", "views") else key
        out += ["", textwrap.fill(f"{label}: {' '.join(section_docs.get(key, '').split())}", width)]
        rows(value, f"{key}.")
    return "\n".join(out) + "\n"
