"""A search as a grant confined to some patients may run it: pure.

A search that names a patient outside the grant is a 403 (SMART Imaging Access: never an empty Bundle that
would pass for "no studies"); any other is ANDed with the grant's patients, so the PACS is asked for them alone
and every match is checked against them as a ``patient:identifier`` criterion is. The added criterion is not a
parameter the client sent: the page links leave it out (the next page is confined again by the same token).
"""

from __future__ import annotations

from dataclasses import replace

from bridge.auth.grant import Patients
from bridge.errors import Forbidden
from bridge.search.parameters import BY_NAME
from bridge.search.query import Criterion, SearchQuery
from bridge.search.values import Reference, Token


def confine(query: SearchQuery, patients: Patients) -> SearchQuery:
    for criterion in query.criteria:
        if not criterion.parameter.names_patient:
            continue
        for value in criterion.values:
            if isinstance(value, Reference):
                named = value.type == "Patient" and patients.names(None, value.id)
            else:
                named = isinstance(value, Token) and patients.names(value.system, value.code)
            if not named:
                name = criterion.applied[0] if criterion.applied else criterion.name
                raise Forbidden(f"{name} names a patient this token may not see")
    values = tuple(Token(system, value) for system, value in sorted(patients.identifiers, key=str))
    if not values:
        values = (Token("", ""),)  # a compartment that maps to no PACS patient: an empty value matches nothing
    granted = Criterion(BY_NAME["patient"], "identifier", values, applied=None)
    return replace(query, criteria=(*query.criteria, granted))
