"""One way to plug a thing in: erasure methods, attacks, evaluation protocols and MiniCanvas trainers.

Each kind is a `Registry`: a dict of `Entry`s by name (peft's `PEFT_TYPE_TO_CONFIG_MAPPING` filled by
`register_peft_method` is the model). An entry names its options: the fields of a config dataclass (methods,
attacks, protocols), or, with no config class, the keyword arguments of the function it runs (trainers).
`Registry.config` is the one place that turns a name and options into a config: an unknown name or option, or
an option that contradicts a value the entry fixes (what makes `hirm-r` HiRM-R), is a one-line `HirmError`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hirm.errors import HirmError


def option(default: Any, help: str, budget: bool = False) -> Any:
    """A config field with its help text, shown by `hirm methods NAME` (transformers' and peft's configs declare
    theirs the same way: `field(default=..., metadata={"help": ...})`). `budget`: a count that sets how hard a
    search works (an attack's steps or generations), which `scaled_budget` multiplies."""
    return field(default=default, metadata={"help": help, "budget": budget})


def scaled_budget(config: Any, factor: float) -> Any:
    """`config` with every `budget` field multiplied by `factor` (rounded, at least 1)."""
    if factor <= 0 or factor != factor:
        raise HirmError(f"budget factor {factor}: need a positive number (1: as configured)")
    changes = {f.name: max(1, round(getattr(config, f.name) * factor)) for f in dataclasses.fields(config)
               if f.metadata.get("budget")}
    return dataclasses.replace(config, **changes)


@dataclass(frozen=True)
class Entry:
    """A registered thing: its name, what it runs, a one-line summary, and where its options come from."""

    name: str
    config_cls: type | None  # a dataclass whose fields are the options; None: `run`'s keyword arguments are
    run: Callable[..., Any] | None
    summary: str
    fixed: Mapping[str, Any] = field(default_factory=dict)  # config values that define the entry

    def options(self) -> list[str]:
        return sorted(name for name, _, _ in self.option_help())

    def option_defaults(self) -> dict[str, Any]:
        """The entry's own values over its config class's defaults: what it fixes."""
        return dict(self.fixed)

    def option_help(self) -> list[tuple[str, Any, str]]:
        """(option, default, help) of every option, in declaration order: a config class's fields with their
        `help` metadata and the entry's own defaults on top, or `run`'s keyword arguments."""
        if self.config_cls is None:
            params = inspect.signature(self.run).parameters.values() if self.run is not None else []
            return [(p.name, p.default, "") for p in params if p.default is not p.empty]
        own = self.option_defaults()
        return [(f.name, own.get(f.name, f.default), f.metadata.get("help", ""))
                for f in dataclasses.fields(self.config_cls)]


E = TypeVar("E", bound=Entry)


class Registry(dict[str, E], Generic[E]):
    """Entries of one kind by name. `flags=True` names options as the CLI flags they are given with
    (`--concept`), for kinds whose options are command-line flags (protocols)."""

    def __init__(self, kind: str, entries: Iterable[E] = (), flags: bool = False):
        super().__init__()
        self.kind = kind
        self.flags = flags
        for entry in entries:
            self.register(entry)

    def register(self, entry: E) -> E:
        if entry.name in self:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self[entry.name] = entry
        return entry

    def lookup(self, name: str) -> E:
        if name not in self:
            raise HirmError(f"unknown {self.kind} {name!r}; available: {', '.join(self)}")
        return self[name]

    def config(self, name: str, options: Mapping[str, Any]) -> Any:
        """The config of entry `name` from `options` (None values mean "not given"), its fixed values on top:
        an instance of its config class, or a dict of keyword arguments for an entry without one."""
        entry = self.lookup(name)
        values = {k: v for k, v in options.items() if v is not None}
        clash = sorted(k for k, v in entry.fixed.items() if k in values and values[k] != v)
        if clash:
            raise HirmError(f"{self.kind} {name} fixes {clash[0]}={entry.fixed[clash[0]]!r} (it is what makes it "
                            f"{name}): drop that option, or choose the {self.kind} with the value you want")
        values.update(entry.fixed)
        accepted = entry.options()
        unknown = sorted(set(values) - set(accepted))
        if unknown:
            if self.flags:
                def flag(name: str) -> str:
                    return "--" + name.replace("_", "-")

                raise HirmError(f"{', '.join(flag(k) for k in unknown)} does not apply to --{self.kind} {name} "
                                f"(it takes: {', '.join(flag(k) for k in accepted) or 'no options'})")
            raise HirmError(f"{self.kind} {name} has no option {unknown[0]!r}; options: {', '.join(accepted)}")
        return values if entry.config_cls is None else entry.config_cls(**values)


__all__ = ["Entry", "Registry", "option", "scaled_budget"]
