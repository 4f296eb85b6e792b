"""Recipes: typed, validated configuration read from YAML, every key overridable on the command line.

Unknown keys and wrong types are errors that name the key (and suggest the closest known one).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
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

__all__ = ["CardConfig", "DataConfig", "Recipe", "RecipeError", "TrainConfig", "from_dict", "load_recipe"]


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

    def validate(self) -> None:
        """Check every section; raises :class:`RecipeError` naming the key."""
        try:
            for name in ("encoder", "method", "mask", "health", "data", "train"):
                getattr(self, name).validate(name)
            adapter = self.adapter_config()
            if hasattr(adapter, "validate"):
                adapter.validate("adapter")
        except RecipeError:
            raise
        except ValueError as e:
            raise RecipeError(str(e)) from None
        try:
            get_method(self.method.name).check(self.method, self.encoder, self.mask)
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
        if origin is tuple and len(args) == 2 and args[1] is not Ellipsis:
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


def _leaf_paths(cls: type, prefix: str = "", method: type = Data2VecConfig) -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if f.metadata.get("parse") == "method":
            out += _leaf_paths(method, path + ".")
        elif dataclasses.is_dataclass(hints[f.name]):
            out += _leaf_paths(hints[f.name], path + ".")
        else:
            out.append(path)
    return out


ALIASES = {"data": "data.path", "tokenizer": "data.tokenizer"}


def resolve_key(key: str, modality: str, method: type = Data2VecConfig) -> list[str]:
    """The dotted path an override key stands for: a full path, an alias, or a unique leaf name
    (of the recipe, its modality's adapter section and its method's section)."""
    key = key.replace("-", "_")
    if key in ALIASES:
        return ALIASES[key].split(".")
    paths = _leaf_paths(Recipe, method=method)
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


def _override_value(overrides: list[str], key: str) -> str | None:
    """The value given to ``--key`` (as ``--key value`` or ``--key=value``) in ``overrides``, if any."""
    for i, token in enumerate(overrides):
        if token == f"--{key}" and i + 1 < len(overrides):
            return overrides[i + 1]
        if token.startswith(f"--{key}="):
            return token.split("=", 1)[1]
    return None


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe and apply ``--key value`` overrides, then validate.

    >>> load_recipe(None, ["--max_steps", "5"]).train.max_steps
    5
    """
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise RecipeError(f"recipe {p}: no such file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe {p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"recipe {p}: the top level must be a mapping")
    overrides = list(overrides or [])
    modality = str(raw.get("modality", "text"))
    method = _override_value(overrides, "method.name") or (raw.get("method") or {}).get("name", "data2vec")
    method_cls = method_class({"name": method})
    i = 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--"):
            raise RecipeError(f"override {token!r}: expected --key value")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(overrides) or overrides[i + 1].startswith("--"):
                value = "true"  # a bare flag
            else:
                i += 1
                value = overrides[i]
        path_ = resolve_key(key, modality, method_cls)
        node = raw
        for part in path_[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override --{key}: '{part}' is not a section")
        node[path_[-1]] = yaml.safe_load(value) if value != "" else ""
        i += 1
    where = f"recipe {path}: " if path else ""
    try:
        recipe = from_dict(Recipe, raw)
        recipe.validate()
    except RecipeError as e:
        raise RecipeError(where + str(e)) from None
    return recipe
