"""What a verified token says, as ``Claims``: from a JWT's payload or an introspection answer alike. Pure.

``InvalidToken`` lives here so that each verifier can raise it; ``bridge.auth.tokens`` exports it with the
``TokenVerifier`` seam. Its messages say what is wrong and never carry the token, nor a claim's value the
token's holder could have chosen (a value may be a secret, or be made to look like a message of ours).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bridge.auth.grant import Claims
from bridge.errors import Unauthorized

#: A FHIR id (R5 datatypes: 1-64 of A-Z a-z 0-9 - .). A patient context must be one: it is put in a URL.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class InvalidToken(Unauthorized):
    """A token that is malformed, forged, expired, not yet valid, for another issuer or audience, or unknown."""


def claims_from(payload: Mapping[str, Any], *, patient_claim: str = "patient") -> Claims:
    """The ``Claims`` of a verified JWT payload or an active introspection answer.

    client_id from ``client_id``, else ``azp``; subject ``sub``; scope from ``scope`` (a space-separated string)
    or ``scp`` (a list, or a string as Azure writes it); the patient context from ``patient_claim``; expiry
    ``exp``. A claim of the wrong type makes the token invalid: guessing what it meant could widen access.
    """
    client_id = _string(payload, "client_id")
    if client_id is None:
        client_id = _string(payload, "azp")
    if "scope" in payload:
        scope = _string(payload, "scope") or ""
    elif isinstance(payload.get("scp"), list):
        if not all(isinstance(item, str) for item in payload["scp"]):
            raise InvalidToken("the token's scp claim is not a list of strings")
        scope = " ".join(payload["scp"])
    else:
        scope = _string(payload, "scp") or ""
    patient = _string(payload, patient_claim) or None  # "" is no context: no patient's data
    if patient is not None and not FHIR_ID.fullmatch(patient):
        raise InvalidToken(f"the token's patient context ({patient_claim}) is not a FHIR Patient id")
    return Claims(
        client_id=client_id,
        subject=_string(payload, "sub"),
        scope=scope,
        patient=patient,
        expires_at=numeric_date(payload, "exp"),
        issuer=_string(payload, "iss"),
    )


def numeric_date(payload: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 2: seconds since the epoch), None if absent."""
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        raise InvalidToken(f"the token's {name} claim is not a number of seconds")
    return float(value)


def _string(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidToken(f"the token's {name} claim is not a string")
    return value
