"""Typed configuration: dataclass schemas, key=value parsing and validation that reports every problem.

Order of precedence: the method's defaults, then the values given (Python keyword arguments or
``key=value`` pairs with dotted keys such as ``optim_args.lr=0.5``). Every problem (unknown key, wrong type,
impossible value) is collected and raised once as a :class:`~kubedistill.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from kubedistill.data.transforms import DistillationTransformArgs
from kubedistill.errors import ConfigError
from kubedistill.methods.distillation.args import DEFAULT_OPTIMIZER, OPTIMIZERS, DistillationArgs
from kubedistill.tracking.config import MLflowArgs
from kubedistill.utils import to_plain as to_dict

_NONE_TYPE = type(None)


# --------------------------------------------------------------------------------------------------
# key=value parsing
# --------------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """Parse one CLI value with YAML rules: ``0.5`` -> float, ``[160,160]`` -> list, ``null`` -> None.

    A value that YAML cannot parse is kept as the raw string; type checking happens later.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_key_values(tokens: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a=1", "b.c=x"]`` into ``{"a": 1, "b": {"c": "x"}}``; malformed tokens are all reported."""
    result: dict[str, Any] = {}
    problems: list[str] = []
    for token in tokens:
        key, sep, raw = token.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"argument {token!r} is not of the form key=value (dotted keys allowed: a.b=1)")
            continue
        _set_dotted(result, key.split("."), parse_value(raw), token, problems)
    if problems:
        raise ConfigError(problems)
    return result


def to_key_values(values: Mapping[str, Any]) -> list[str]:
    """The inverse of ``parse_key_values``: ``{"a": 1, "b": {"c": "x"}}`` -> ``["a=1", "b.c=x"]``.

    Values are written so that ``parse_value`` reads them back unchanged: strings that YAML would read as
    something else (``"true"``, ``"1e-3"``, ``""``) are quoted, everything else is JSON (a subset of YAML).
    """
    tokens = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            tokens += [f"{key}.{token}" for token in to_key_values(value)]
        elif isinstance(value, str):
            tokens.append(f"{key}={value if value and parse_value(value) == value else json.dumps(value)}")
        else:
            tokens.append(f"{key}={json.dumps(value)}")
    return tokens


def _set_dotted(target: dict[str, Any], parts: list[str], value: Any, token: str, problems: list[str]) -> None:
    for part in parts[:-1]:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            problems.append(f"argument {token!r}: {part!r} was already given a plain value")
            return
        target = node
    target[parts[-1]] = value


# --------------------------------------------------------------------------------------------------
# dataclass <-> dict
# --------------------------------------------------------------------------------------------------


def build(cls: type, values: Mapping[str, Any] | None, *, path: str = "", problems: list[str]) -> Any:
    """Build dataclass ``cls`` from defaults overridden by ``values``; append problems instead of raising.

    Unknown keys are reported with the valid ones. Returns an instance even when problems were found
    (fields with bad values keep their defaults) so that validation can go on and find the rest.
    """
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in sorted(set(values) - set(fields)):
        problems.append(f"unknown key {_join(path, key)!r}; valid keys: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name not in values:
            continue
        kwargs[name] = coerce(values[name], hints[name], _join(path, name), problems, default=_default(fields[name]))
    missing = [n for n, f in fields.items() if n not in kwargs and _default(f) is dataclasses.MISSING]
    if missing:
        problems.append(f"{path or cls.__name__}: missing required key(s) {', '.join(missing)}")
        return None
    instance = cls(**kwargs)
    if instance is not None and hasattr(instance, "problems"):
        # Value checks that need the whole object (ranges, min <= max) live on the dataclass itself.
        problems.extend(_join(path, p) for p in instance.problems())
    return instance


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def coerce(value: Any, hint: Any, path: str, problems: list[str], *, default: Any = dataclasses.MISSING) -> Any:
    """Check ``value`` against type ``hint``, converting where it is lossless (int -> float, list -> tuple).

    Nested dataclasses accept a dict of overrides applied on top of the field's default.
    """
    ok, converted = _try_coerce(value, hint, path, problems, default)
    if not ok:
        problems.append(f"{path}: got {value!r}, expected {describe_type(hint)}")
        return default if default is not dataclasses.MISSING else value
    return converted


def _try_coerce(value: Any, hint: Any, path: str, problems: list[str], default: Any) -> tuple[bool, Any]:
    origin = get_origin(hint)
    if hint is Any:
        return True, value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, get_args(hint), path, problems, default)
    if origin is Literal:
        return (value in get_args(hint) and type(value) in {type(a) for a in get_args(hint)}), value
    if dataclasses.is_dataclass(hint):
        return _coerce_dataclass(value, hint, path, problems, default)
    if origin in (tuple, list) or hint in (tuple, list):
        return _coerce_sequence(value, hint, path, problems)
    if origin is dict or hint is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    return _coerce_scalar(value, hint)


def _coerce_union(value: Any, options: tuple, path: str, problems: list[str], default: Any) -> tuple[bool, Any]:
    if value is None:
        return _NONE_TYPE in options, None
    # Try the options without side effects first, so a failing option does not leave problems behind.
    for option in options:
        if option is _NONE_TYPE:
            continue
        scratch: list[str] = []
        ok, converted = _try_coerce(value, option, path, scratch, default)
        if ok and not scratch:
            return True, converted
    # Report the nested problems of a dataclass option (e.g. an unknown key inside a dict).
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, Mapping):
            return _coerce_dataclass(value, option, path, problems, default)
    return False, value


def _coerce_dataclass(value: Any, cls: type, path: str, problems: list[str], default: Any) -> tuple[bool, Any]:
    if isinstance(value, cls):
        return True, value
    if not isinstance(value, Mapping):
        return False, value
    base = to_dict(default) if dataclasses.is_dataclass(default) else {}
    return True, build(cls, {**base, **value}, path=path, problems=problems)


def _coerce_sequence(value: Any, hint: Any, path: str, problems: list[str]) -> tuple[bool, Any]:
    if not isinstance(value, (list, tuple)):
        return False, value
    origin = get_origin(hint) or hint
    args = get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return False, value
        items = [coerce(v, a, f"{path}[{i}]", problems) for i, (v, a) in enumerate(zip(value, args, strict=True))]
    else:
        item_hint = args[0] if args else Any
        items = [coerce(v, item_hint, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return True, tuple(items) if origin is tuple else list(items)


def _coerce_scalar(value: Any, hint: Any) -> tuple[bool, Any]:
    if hint is _NONE_TYPE:
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        # YAML turns e.g. `teacher_weights=123` into an int; a path-like string is still meant.
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        return ok, str(value) if ok else value
    return isinstance(value, hint), value


def describe_type(hint: Any) -> str:
    """Human-readable type, e.g. ``int or 'auto'``, ``one of 'cpu', 'cuda'``."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in get_args(hint))
    if origin is Literal:
        values = ", ".join(repr(a) for a in get_args(hint))
        return f"one of {values}" if len(get_args(hint)) > 1 else values
    if hint is _NONE_TYPE:
        return "null"
    if dataclasses.is_dataclass(hint):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(hint))}"
    if origin is tuple:
        args = get_args(hint)
        if args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {describe_type(args[0])}s"
        return "a list"
    if origin is list:
        return f"a list of {describe_type(get_args(hint)[0])}" if get_args(hint) else "a list"
    return getattr(hint, "__name__", str(hint))


# --------------------------------------------------------------------------------------------------
# The training configuration
# --------------------------------------------------------------------------------------------------

# LightlyTrain calls this method "distillationv1" today; both names select it.
METHOD_ALIASES = {"distillation": "distillation", "distillationv1": "distillation"}
PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-teacher")


@dataclass
class LoaderArgs:
    """``loader_args``: DataLoader settings and the tolerance for unreadable images."""

    pin_memory: bool | Literal["auto"] = "auto"
    persistent_workers: bool = True
    prefetch_factor: int | None = 2
    # The run stops with a clear error once more than this fraction of the images failed to decode.
    max_bad_fraction: float = 0.05
    # gs:// images: "stage" copies them to the node's local disk in parallel before training, "stream" reads
    # each from the bucket when the loader needs it, "auto" stages when they fit on the cache disk.
    remote: Literal["auto", "stage", "stream"] = "auto"
    # Node-local folder for staged images; default $KUBEDISTILL_CACHE_DIR/data or ~/.cache/kubedistill/data.
    cache_dir: str | None = None
    # Who decodes and augments: "torch" (DataLoader workers on the CPU), "dali" (NVIDIA DALI: nvJPEG and the
    # augmentations on the GPU, its CPU backend on a CPU; needs `pip install kubedistill[gpu]`), "auto" (DALI
    # when training on CUDA with DALI installed, else torch). The random choices are ours either way.
    backend: Literal["auto", "torch", "dali"] = "auto"

    def problems(self) -> list[str]:
        found = []
        if not 0 <= self.max_bad_fraction <= 1:
            found.append(f"max_bad_fraction: must be in [0, 1], got {self.max_bad_fraction}")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            found.append(f"prefetch_factor: must be >= 1 or null, got {self.prefetch_factor}")
        return found


@dataclass
class TrainConfig:
    """Everything ``train`` takes; written to ``out/config.yaml`` fully resolved."""

    out: str
    data: str | list[str]
    model: str
    method: str = "distillation"
    method_args: DistillationArgs = field(default_factory=DistillationArgs)
    epochs: int = 100
    max_steps: int | None = None
    batch_size: int = 128
    num_workers: int | Literal["auto"] = "auto"
    accelerator: Literal["auto", "cpu", "cuda", "gpu"] = "auto"  # gpu = cuda (Lightning's name)
    devices: int | Literal["auto"] = "auto"
    num_nodes: int = 1
    precision: Literal["auto", "32-true", "bf16-mixed", "bf16-teacher", "16-mixed"] = "auto"
    # torch.compile of the frozen teacher and the student: "auto" on CUDA for runs long enough to repay the
    # compile time (never on a CPU, where it measured slower), true on any device, false never.
    compile: bool | Literal["auto"] = "auto"
    seed: int = 0
    resume_interrupted: bool = False
    checkpoint: str | None = None
    overwrite: bool = False
    optim: Literal["auto", "lars", "adamw"] = "auto"
    # Filled by build_train_config with the dataclass of the chosen optimizer.
    optim_args: Any = None
    transform_args: DistillationTransformArgs = field(default_factory=DistillationTransformArgs)
    loader_args: LoaderArgs = field(default_factory=LoaderArgs)
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int | None = None
    # MLflow tracking (rank 0 only); unset fields come from MLFLOW_TRACKING_URI / _EXPERIMENT_NAME / _RUN_ID.
    mlflow: MLflowArgs | None = None

    def problems(self) -> list[str]:
        found = []
        for name in ("epochs", "batch_size", "num_nodes", "log_every_n_steps"):
            if getattr(self, name) < 1:
                found.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "checkpoint_every_n_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                found.append(f"{name}: must be >= 1 or null, got {value}")
        if self.num_workers != "auto" and self.num_workers < 0:
            found.append(f"num_workers: must be >= 0 or 'auto', got {self.num_workers}")
        if self.devices != "auto" and self.devices < 1:
            found.append(f"devices: must be >= 1 or 'auto', got {self.devices}")
        if not self.out:
            found.append("out: must be a directory path")
        elif "://" in str(self.out) and not str(self.out).startswith(("gs://", "file://")):
            found.append(f"out: {self.out} is neither a local folder nor gs://bucket/prefix")
        if not self.data:
            found.append(
                "data: must be a folder, an image file, a gs://bucket/prefix, a manifest.jsonl from `kubedistill "
                "validate`, or a list of them"
            )
        if self.resume_interrupted and self.checkpoint:
            found.append(
                "checkpoint: cannot be combined with resume_interrupted=true (resume continues the run in `out`; "
                "checkpoint starts a new run from earlier weights): pick one"
            )
        return found


def build_train_config(values: Mapping[str, Any]) -> TrainConfig:
    """Validate ``values`` (nested dict) against TrainConfig and resolve the optimizer; all problems at once."""
    from kubedistill.models.students import check_student_name

    values = dict(values)
    raw_optim_args = values.pop("optim_args", None)
    problems: list[str] = []
    method = values.get("method", "distillation")
    if method not in METHOD_ALIASES:
        problems.append(f"method: unknown method {method!r}; valid: {', '.join(METHOD_ALIASES)}")
    else:
        values["method"] = METHOD_ALIASES[method]
    config = build(TrainConfig, values, problems=problems)
    if config is None:
        raise ConfigError(problems)
    if isinstance(config.model, str):
        problems.extend(check_student_name(config.model))
    config.optim = DEFAULT_OPTIMIZER if config.optim == "auto" else config.optim
    if raw_optim_args is not None and not isinstance(raw_optim_args, Mapping):
        problems.append(f"optim_args: got {raw_optim_args!r}, expected a mapping of optimizer settings")
        raw_optim_args = None
    config.optim_args = build(OPTIMIZERS[config.optim], raw_optim_args, path="optim_args", problems=problems)
    if problems:
        raise ConfigError(problems)
    return config


def method_defaults(method: str = "distillation") -> dict[str, Any]:
    """Every default of a method, as printed by ``kubedistill describe``."""
    if method not in METHOD_ALIASES:
        raise ConfigError([f"method: unknown method {method!r}; valid: {', '.join(METHOD_ALIASES)}"])
    defaults = TrainConfig(out="", data="", model="")
    return {
        "method": METHOD_ALIASES[method],
        "method_args": to_dict(defaults.method_args),
        "optim": DEFAULT_OPTIMIZER,
        "optim_args": to_dict(OPTIMIZERS[DEFAULT_OPTIMIZER]()),
        "transform_args": to_dict(defaults.transform_args),
        "loader_args": to_dict(defaults.loader_args),
        "epochs": defaults.epochs,
        "batch_size": defaults.batch_size,
    }


@dataclass
class ValidateConfig:
    """Everything ``validate`` takes."""

    data: str
    out: str
    min_size: int = 32
    max_bad_fraction: float = 0.05
    dedup: bool = True
    labels: Literal["auto", "folder", "none"] = "auto"
    workers: int | Literal["auto"] = "auto"
    max_pixels: int = 178_956_970  # data.images.MAX_IMAGE_PIXELS
    # MLflow: the report and counts as a nested "validate" run; unset fields come from MLFLOW_* variables.
    mlflow: MLflowArgs | None = None

    def problems(self) -> list[str]:
        found = []
        if not self.data:
            found.append("data: must be a folder or a gs://bucket/prefix")
        elif isinstance(self.data, str) and self.data.lower().endswith(".jsonl"):
            found.append(f"data: {self.data} is a manifest; validate the image folder or prefix it came from")
        if not self.out:
            found.append("out: must be a directory (local or gs://) for manifest.jsonl and the report")
        if self.min_size < 1:
            found.append(f"min_size: must be >= 1 pixel, got {self.min_size}")
        if not 0 <= self.max_bad_fraction <= 1:
            found.append(f"max_bad_fraction: must be in [0, 1], got {self.max_bad_fraction}")
        if self.workers != "auto" and self.workers < 1:
            found.append(f"workers: must be >= 1 or 'auto', got {self.workers}")
        if self.max_pixels < 1:
            found.append(f"max_pixels: must be >= 1, got {self.max_pixels}")
        return found


def build_validate_config(values: Mapping[str, Any]) -> ValidateConfig:
    """Validate ``values`` against ValidateConfig; every problem at once."""
    problems: list[str] = []
    config = build(ValidateConfig, dict(values), problems=problems)
    if config is None or problems:
        raise ConfigError(problems)
    return config
