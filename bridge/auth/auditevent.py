"""One request to patient data -> one R5 AuditEvent (as JSON-ready dicts): pure.

The shape follows IHE's Basic Audit Log Patterns (BALP) for a RESTful read or query, in R5's elements:

- ``category`` ``rest`` and ``code`` the FHIR interaction (``read``, ``search-type`` …); ``action`` ``R`` for a
  read, ``E`` for a search (a query is executed);
- ``occurredDateTime`` when the request arrived, ``recorded`` when it was answered;
- ``outcome`` 0 (success), 4 (refused or not found: a 4xx) or 8 (failed: a 5xx), with the HTTP status as detail;
- ``agent``: the client (its OAuth client id, else its address; the requestor unless a user is named), the user
  (the token's ``sub``, the requestor) and the bridge itself; ``source.observer`` the bridge replica;
- ``patient``: the token's patient context; ``entity``: the request (its ``X-Request-ID``), a search's query (its
  path and parameters as received, base64, as FHIR's ``entity.query`` is), each patient named, and each study returned,
  refused or asked for in vain, with its disposition.

No bearer token ever reaches an AuditEvent: none is passed in, and an ``access_token`` parameter (RFC 6750 2.3)
is removed from a recorded query.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from bridge.bases import base_of

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
#: BALP's code for an entity that is the request's X-Request-ID.
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"

#: Dispositions of a study entity.
RETURNED, REFUSED, REQUESTED = "returned", "refused", "requested"


class Access(NamedTuple):
    """One request to patient data, as the web layer saw it."""

    #: When it was answered (epoch seconds), and how long that took.
    ended: float
    seconds: float
    request_id: str
    method: str
    #: The FHIR interaction, a code of http://hl7.org/fhir/restful-interaction (``read``, ``search-type`` …).
    interaction: str
    status: int
    #: Who asked: the token's client id and subject (None when unknown: no token, or authorization off).
    client_id: str | None
    subject: str | None
    #: The token's patient context (a FHIR Patient id), if any.
    patient: str | None
    #: The client's network address.
    address: str | None
    #: The raw request target (path and query string) and, for a POST search, its form body.
    target: str
    form: bytes | None
    #: The resource id a read asked for (None for a search).
    read_id: str | None
    #: The patients the request named, and the StudyInstanceUIDs returned and refused.
    named: Sequence[str]
    returned: Sequence[str]
    refused: Sequence[str]


class Observer(NamedTuple):
    """The bridge, as it names itself in every event."""

    #: This replica (its host name): the ``source.observer``.
    replica: str
    #: The FHIR base URL clients use, when known.
    base_url: str | None = None


#: The agent that answered: the bridge (BALP's "Destination Role ID"), at the FHIR base the client used: its URL
#: under the public URL, else its path (``/fhir/r4``).
def _server(observer: Observer, target: str) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": _concept(DCM, "110152", "Destination Role ID"),
        "who": {"display": "imaging-bridge", "identifier": {"value": observer.replica}},
        "requestor": False,
    }
    base = base_of(target.partition("?")[0])
    agent["networkUri"] = base.url(observer.base_url) if observer.base_url else base.path
    return agent


def audit_event(access: Access, observer: Observer) -> dict[str, Any]:
    """The R5 AuditEvent of ``access``."""
    read = access.read_id is not None
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "category": [_concept(AUDIT_EVENT_TYPE, "rest", "Restful Operation")],
        "code": _concept(RESTFUL_INTERACTION, access.interaction),
        "action": "R" if read else "E",
        "occurredDateTime": instant(access.ended - access.seconds),
        "recorded": instant(access.ended),
        "outcome": {"code": outcome_code(access.status), "detail": [{"text": f"HTTP {access.status}"}]},
        "agent": [*_requestors(access), _server(observer, access.target)],
        "source": {
            "observer": {"display": "imaging-bridge", "identifier": {"value": observer.replica}},
            "type": [_concept(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": _entities(access),
    }
    if access.patient:
        event["patient"] = {"reference": f"Patient/{access.patient}"}
    return event


def outcome_code(status: int) -> dict[str, str]:
    """http://terminology.hl7.org/CodeSystem/audit-event-outcome: 0 success, 4 the client's failure (a 4xx:
    refused, not found, too many requests), 8 the server's (a 5xx). 12 (the system died) is never recorded."""
    if status < 400:
        return {"system": OUTCOME, "code": "0", "display": "Success"}
    if status < 500:
        return {"system": OUTCOME, "code": "4", "display": "Minor failure"}
    return {"system": OUTCOME, "code": "8", "display": "Serious failure"}


def _requestors(access: Access) -> list[dict[str, Any]]:
    """The client (BALP's "Source Role ID") and, when the token names one, the user: the requestor."""
    user = access.subject if access.subject and access.subject != access.client_id else None
    client: dict[str, Any] = {
        "type": _concept(DCM, "110153", "Source Role ID"),
        "who": {"identifier": {"value": access.client_id}} if access.client_id else {"display": "unidentified client"},
        "requestor": user is None,
    }
    if access.address:
        client["networkString"] = access.address
    if user is None:  # no user named, or a backend service's token, whose subject is the client itself
        return [client]
    person = {"type": _concept(PARTICIPATION, "IRCP", "information recipient"),
              "who": {"identifier": {"value": user}}, "requestor": True}  # fmt: skip
    return [client, person]


def _entities(access: Access) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = [
        {"what": {"identifier": {"type": _concept(BALP_ENTITY, "XrequestId"), "value": access.request_id}}}
    ]
    if access.read_id is None:
        entities.append({
            "role": _concept(OBJECT_ROLE, "24", "Query"),
            "query": base64.b64encode(search_query(access.target, access.form)).decode("ascii"),
        })  # fmt: skip
    patients = ([access.patient] if access.patient else []) + [p for p in access.named if p != access.patient]
    for patient in dict.fromkeys(patients):
        entities.append({"what": patient_reference(patient), "role": _concept(OBJECT_ROLE, "1", "Patient")})
    studies = dict.fromkeys(access.returned, RETURNED) | dict.fromkeys(access.refused, REFUSED)
    if access.read_id is not None and access.read_id not in studies:
        # A read whose handler said nothing of the study (a 404, or a refusal before the handler ran): the
        # study asked for is named all the same; the outcome says whether it was served.
        studies[access.read_id] = RETURNED if access.status < 400 else REQUESTED
    for study, disposition in studies.items():
        entities.append({
            "what": {"reference": f"ImagingStudy/{study}"},
            "role": _concept(OBJECT_ROLE, "4", "Domain Resource"),
            "detail": [{"type": {"text": "disposition"}, "valueString": disposition}],
        })  # fmt: skip
    return entities


def patient_reference(named: str) -> dict[str, Any]:
    """A patient as a search named it: ``Patient/123`` or a URL (a reference as given), ``system|value`` (an
    identifier), or a bare id (``Patient/{id}``)."""
    if "/" in named and "|" not in named:
        return {"reference": named}
    system, bar, value = named.rpartition("|")
    if bar:
        return {"identifier": {"system": system, "value": value} if system else {"value": value}}
    return {"reference": f"Patient/{named}"}


#: Parameters that are never recorded: a bearer token may be sent as one (RFC 6750 2.2, 2.3).
SECRET_PARAMETERS = frozenset({"access_token"})


def search_query(target: str, form: bytes | None) -> bytes:
    """A search as received: its path (a compartment search names its patient there), then its parameters, the
    query string's and a POST's form body's joined with ``&`` as one ``application/x-www-form-urlencoded``
    string; ``access_token`` removed."""
    path, _, query = target.partition("?")
    parts = [query] if query else []
    if form:
        parts.append(form.decode("utf-8", "replace"))
    pairs = [
        pair
        for part in parts
        for pair in part.split("&")
        if pair and unquote_plus(pair.partition("=")[0]).strip() not in SECRET_PARAMETERS
    ]
    return (f"{path}?{'&'.join(pairs)}" if pairs else path).encode()


def instant(epoch: float) -> str:
    """A FHIR instant in UTC, to the millisecond (truncated)."""
    whole, milliseconds = divmod(int(epoch * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{milliseconds:03d}Z"


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}
