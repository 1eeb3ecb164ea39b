"""Routing: which targets one envelope goes to (globs, fan-out, loop guard, only_targets)."""

from __future__ import annotations

from dataclasses import dataclass

from .envelope import Envelope
from .targets import Catalog, Target


@dataclass(frozen=True)
class Route:
    """The targets to deliver to, the `only_targets` names that cannot be served, and loop skips."""

    targets: tuple[Target, ...]
    rejected: tuple[tuple[str, str], ...] = ()
    looped: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.targets and not self.rejected


def route(envelope: Envelope, catalog: Catalog) -> Route:
    trail = set(envelope.trail)
    if envelope.only_targets is None:
        matching = [t for t in catalog.targets.values() if t.enabled and t.matches(envelope.uri)]
        return Route(
            targets=tuple(t for t in matching if t.name not in trail),
            looped=tuple(t.name for t in matching if t.name in trail),
        )
    targets: list[Target] = []
    rejected: list[tuple[str, str]] = []
    looped: list[str] = []
    for name in dict.fromkeys(envelope.only_targets):
        target = catalog.targets.get(name)
        if name in trail:
            looped.append(name)
        elif target is None and name in catalog.broken:
            rejected.append((name, f"target '{name}' is broken: {catalog.broken[name]}"))
        elif target is None:
            rejected.append((name, f"target '{name}' does not exist"))
        elif not target.enabled:
            rejected.append((name, f"target '{name}' is disabled"))
        elif not target.matches(envelope.uri):
            rejected.append((name, f"target '{name}' no longer subscribes to {envelope.uri}"))
        else:
            targets.append(target)
    return Route(targets=tuple(targets), rejected=tuple(rejected), looped=tuple(looped))
