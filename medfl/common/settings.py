"""Typed, checked configuration: every executor and controller declares its settings once, here or beside it.

A settings class is a pydantic model whose fields carry their type, default, range and a one-line meaning
(``description``). Loading rejects what a job must never silently get wrong: an unknown key (with the closest
known key, so ``learning_rte`` points at ``learning_rate``), a wrong type, an out-of-range value. The error is a
:class:`ConfigError` naming the site, the file and the key.

One vocabulary serves every job: ``data_root`` (the site's prepared data) and ``datalist`` (which items the site
has), ``network`` (:class:`NetworkSpec`), ``optimizer`` (:class:`OptimizerSpec`, learning rate included),
``local_epochs``, ``batch_size``, ``seed``, ``num_threads``, ``device``, ``state_dir``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Dict, Literal, Mapping, Optional, Tuple, Type, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import resolve_placeholder
from .errors import DataError

__all__ = ["ClientSettings", "ConfigError", "NetworkSpec", "OptimizerSpec", "Settings", "closest_key"]

S = TypeVar("S", bound="Settings")
MAX_ERRORS_SHOWN = 5


class ConfigError(DataError):
    """A configuration file holds an unknown key, a wrong type or a value out of its range."""


def closest_key(key: str, known) -> Optional[str]:
    """The known key most similar to ``key`` (``learning_rte`` -> ``learning_rate``), or ``None``."""
    matches = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _model_at(model: Type[BaseModel], location: Tuple) -> Optional[Type[BaseModel]]:
    """The nested settings model that holds the key at ``location`` (its last element), if any."""
    for part in location[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def describe_errors(model: Type[BaseModel], error: ValidationError) -> str:
    """One readable line per problem: ``unknown key 'learning_rte' (did you mean 'learning_rate'?)``."""
    lines = []
    for item in error.errors()[:MAX_ERRORS_SHOWN]:
        location = item["loc"]
        key = ".".join(str(part) for part in location)
        if item["type"] == "extra_forbidden":
            holder = _model_at(model, location)
            known = holder.model_fields if holder is not None else {}
            guess = closest_key(location[-1], known)
            hint = f" (did you mean '{'.'.join([*map(str, location[:-1]), guess])}'?)" if guess else ""
            lines.append(f"unknown key '{key}'{hint}; known keys: {', '.join(sorted(known))}")
        elif item["type"] == "missing":
            lines.append(f"missing key '{key}'")
        else:
            lines.append(f"'{key}': {item['msg']} (got {item.get('input')!r})")
    more = len(error.errors()) - MAX_ERRORS_SHOWN
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")


class Settings(BaseModel):
    """Base of every settings class: unknown keys are errors, values are checked on load and then fixed."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), validate_default=True)

    @classmethod
    def load(cls: Type[S], values: Mapping[str, Any], source: str, site: Optional[str] = None) -> S:
        """Validate ``values`` (read from the file ``source``) or raise :class:`ConfigError` naming it."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"expected a JSON object, got {type(values).__name__}", path=source, site=site)
        try:
            return cls.model_validate(dict(values))
        except ValidationError as e:
            raise ConfigError(describe_errors(cls, e), path=source, site=site) from None

    def path(self, key: str, site: Optional[str] = None) -> Path:
        """The path setting ``key`` with the ``DATASET_ROOT`` placeholder resolved (see :mod:`medfl.common.config`)."""
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"the setting '{key}' is not set", site=site)
        return Path(resolve_placeholder(str(value), site))

    def as_config(self) -> Dict[str, Any]:
        """The settings as a job's JSON holds them (every key, defaults included)."""
        return self.model_dump(mode="json")


class NetworkSpec(Settings):
    """A registered network and its constructor arguments (``medfl.common.networks.build_network``)."""

    name: str = Field(description="registered network name, or '<module>:<name>' to import its module first")
    args: Dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the network builder")


class OptimizerSpec(Settings):
    """A torch optimizer over the model's parameters; the learning rate lives here in every job."""

    name: Literal["sgd", "adam"] = Field(description="torch.optim.SGD or torch.optim.Adam")
    lr: float = Field(gt=0, le=1, description="learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (0 for Adam)")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="L2 weight decay")

    @model_validator(mode="after")
    def _adam_has_no_momentum(self) -> "OptimizerSpec":
        if self.name == "adam" and self.momentum:
            raise ValueError("'momentum' applies to SGD only (Adam's moments are its own)")
        return self


class ClientSettings(Settings):
    """What every client reads from ``config_train.json``; a method's client adds its own keys in a subclass."""

    network: NetworkSpec = Field(description="the trained network")
    optimizer: OptimizerSpec = Field(description="the local optimizer (its learning rate included)")
    local_epochs: int = Field(1, ge=1, description="local epochs per round")
    batch_size: int = Field(ge=1, description="training batch size")
    seed: int = Field(0, ge=0, description="seed of Python, numpy, torch and the MONAI random transforms")
    num_threads: int = Field(0, ge=0, description="torch threads of this client process (0: torch's default)")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    state_dir: str = Field("", description=(
        "folder of the state this client saves after each round for an exact resume (optimizers, random states, "
        "local models; the last two rounds kept). '': medfl_state in the site's workspace. The simulator empties "
        "its workspace at start: set it outside. DATASET_ROOT allowed"))
