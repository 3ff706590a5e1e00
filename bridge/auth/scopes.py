"""SMART App Launch scopes (v1 and v2) -> what a token permits: pure.

``patient/ImagingStudy.read`` (v1), ``patient/ImagingStudy.rs`` (v2), ``user/*.read``, ``system/*.cruds`` …: a
context (``patient``, ``user``, ``system``), a resource type (or ``*``) and the interactions. A read needs v2's
``r`` (v1's ``read``), a search ``s`` (also v1's ``read``). A v2 scope with a query (``?category=…``) restricts
to resources the bridge cannot tell apart, so it grants nothing here: refusing is safer than widening it.
Anything else in the scope string (``openid``, ``launch/patient``, ``fhirUser``, ``offline_access``) grants no
access to data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_SCOPE = re.compile(r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<access>[a-z*]+)$")
#: v1 access words, as the v2 letters they mean.
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
#: v2 letters, in the order the specification requires them.
_V2 = "cruds"


class Context(StrEnum):
    """Whose data a scope is about: the token's patient, whatever the user may see, or a backend system's."""

    PATIENT = "patient"
    USER = "user"
    SYSTEM = "system"


class Interaction(StrEnum):
    READ = "r"
    SEARCH = "s"


@dataclass(frozen=True)
class Scope:
    context: Context
    resource_type: str  # "*" for every type
    access: frozenset[str]  # v2 letters


def parse_scope(text: str) -> Scope | None:
    """One scope, or None for one that grants no data access (or that this server cannot honour exactly)."""
    match = _SCOPE.match(text)
    if match is None:
        return None
    access = match["access"]
    if access in _V1:
        letters = _V1[access]
    elif access and all(letter in _V2 for letter in access) and _in_order(access):
        letters = access
    else:
        return None
    return Scope(Context(match["context"]), match["type"], frozenset(letters))


def _in_order(letters: str) -> bool:
    positions = [_V2.index(letter) for letter in letters]
    return positions == sorted(set(positions))


@dataclass(frozen=True)
class Scopes:
    """The data-access scopes of a token."""

    granted: frozenset[Scope]

    @classmethod
    def parse(cls, text: str) -> Scopes:
        """A space-separated scope string (RFC 6749 3.3); scopes that grant no data access are left out."""
        return cls(frozenset(scope for part in text.split() if (scope := parse_scope(part)) is not None))

    def contexts(self, resource_type: str, interaction: Interaction) -> frozenset[Context]:
        """The contexts in which ``interaction`` on ``resource_type`` is granted (empty: not at all)."""
        return frozenset(
            scope.context
            for scope in self.granted
            if scope.resource_type in (resource_type, "*") and interaction.value in scope.access
        )
