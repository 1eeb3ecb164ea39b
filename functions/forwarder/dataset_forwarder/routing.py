"""Routing: which targets one envelope goes to (globs, fan-out, loop guard, only_targets)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .envelope import Envelope
from .targets import Catalog, Target

# How much of the unknown names a dead letter's `target` attribute and `detail` show (the body holds them all).
MAX_LABEL_CHARS = 200
MAX_LISTED_CHARS = 800
MAX_NAME_CHARS = 64  # an unknown name is shown cut to this (it may be anything, up to the whole message)


@dataclass(frozen=True)
class Route:
    """The targets to deliver to, the `only_targets` names that cannot be served, and loop skips.

    `rejected` holds one (label, reason) per dead letter to write. A named target that exists but cannot be served
    (broken, disabled, no longer subscribed) is rejected under its own name. All names that match no target share
    one rejection, so a hostile `only_targets` costs one letter: its label (the letter's `target` attribute) is the
    names joined by "," — when longer than MAX_LABEL_CHARS, the first names (each cut to MAX_NAME_CHARS) then
    ",+N more" —, its reason lists them within MAX_LISTED_CHARS, and `aimed_at` maps the label to every name, for
    the letter's body (`only_targets` = exactly those names, so a redrive after creating them delivers there).
    """

    targets: tuple[Target, ...]
    rejected: tuple[tuple[str, str], ...] = ()
    looped: tuple[str, ...] = ()
    aimed_at: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.targets and not self.rejected

    def names_of(self, label: str) -> tuple[str, ...]:
        """The `only_targets` names a rejection stands for (the letter's replay is aimed at them)."""
        return self.aimed_at.get(label, (label,))


def route(envelope: Envelope, catalog: Catalog) -> Route:
    trail = set(envelope.trail)
    if envelope.only_targets is None:
        matching = [t for t in catalog.targets.values() if t.enabled and t.matches(envelope.uri)]
        return Route(
            targets=tuple(t for t in matching if t.name not in trail),
            looped=tuple(t.name for t in matching if t.name in trail),
        )
    targets: list[Target] = []
    rejected: list[tuple[str, str] | None] = []  # None: where the rejection of the unknown names goes
    looped: list[str] = []
    unknown: list[str] = []
    for name in dict.fromkeys(envelope.only_targets):
        target = catalog.targets.get(name)
        if name in trail:
            looped.append(name)
        elif target is None and name in catalog.broken:
            rejected.append((name, f"target '{name}' is broken: {catalog.broken[name]}"))
        elif target is None:
            if not unknown:
                rejected.append(None)
            unknown.append(name)
        elif not target.enabled:
            rejected.append((name, f"target '{name}' is disabled"))
        elif not target.matches(envelope.uri):
            rejected.append((name, f"target '{name}' no longer subscribes to {envelope.uri}"))
        else:
            targets.append(target)
    aimed_at: dict[str, tuple[str, ...]] = {}
    if unknown:
        label = _label(unknown)
        aimed_at[label] = tuple(unknown)
        rejected = [(label, _unknown_reason(unknown)) if item is None else item for item in rejected]
    return Route(
        targets=tuple(targets),
        rejected=tuple(item for item in rejected if item is not None),
        looped=tuple(looped),
        aimed_at=aimed_at,
    )


def _short(name: str) -> str:
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"


def _joined(names: list[str], separator: str, limit: int) -> str:
    """As many names (each cut to MAX_NAME_CHARS) as fit in `limit` characters, then "+N more"."""
    shown: list[str] = []
    for index, name in enumerate(names):
        rest = len(names) - index - 1
        more = f"{separator}+{rest} more" if rest else ""
        if len(separator.join([*shown, _short(name)])) + len(more) > limit:
            return separator.join(shown) + f"{separator if shown else ''}+{len(names) - index} more"
        shown.append(_short(name))
    return separator.join(shown)


def _label(names: list[str]) -> str:
    """The names joined by "," when they fit in MAX_LABEL_CHARS; else the first ones, then ",+N more"."""
    joined = ",".join(names)
    return joined if len(joined) <= MAX_LABEL_CHARS else _joined(names, ",", MAX_LABEL_CHARS)


def _unknown_reason(names: list[str]) -> str:
    if len(names) == 1:
        return f"target '{_short(names[0])}' does not exist"
    return f"{len(names)} targets named in only_targets do not exist: {_joined(names, ', ', MAX_LISTED_CHARS)}"
