"""Search values of FHIR's token and reference types, and the parsers each parameter row picks from: pure.

Every parser takes the parameter's name (for the message), one OR value and the ``Context`` of the request, and
returns a typed value or raises ``InvalidRequest`` saying what is wrong with it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from bridge.datatypes import is_fhir_id
from bridge.errors import InvalidRequest
from bridge.search.dates import DateValue, parse_date


@dataclass(frozen=True)
class Token:
    """``system|code``; ``system`` None means any system, "" means explicitly none."""

    system: str | None
    code: str


@dataclass(frozen=True)
class TypedToken:
    """``:of-type`` value: identifier type ``system|code`` and the identifier value."""

    type_system: str
    type_code: str
    value: str


@dataclass(frozen=True)
class Reference:
    type: str
    id: str


Value = Token | TypedToken | Reference | DateValue | bool


@dataclass(frozen=True)
class PatientRule:
    """``Patient/<id>`` -> DICOM PatientID, from the BRIDGE_PATIENT_REFERENCE template (``mrn-{PatientID}``)."""

    template: str = "{PatientID}"

    def patient_id(self, patient_id: str) -> str | None:
        """The PatientID a Patient id stands for; None when the id does not fit the template."""
        prefix, _, suffix = self.template.partition("{PatientID}")
        if len(patient_id) <= len(prefix) + len(suffix) or not patient_id.startswith(prefix):
            return None
        if suffix and not patient_id.endswith(suffix):
            return None
        return patient_id[len(prefix) : len(patient_id) - len(suffix)]


#: The default: a Patient's id is its PatientID.
DEFAULT_PATIENTS = PatientRule()


@dataclass(frozen=True)
class Context:
    """What reading a value depends on besides the value: the request's server and configuration."""

    #: The zone of date values without one (and of whole days): BRIDGE_TIMEZONE, else UTC.
    zone: dt.tzinfo = dt.UTC
    #: How a ``Patient/<id>`` stands for a PatientID.
    patients: PatientRule = DEFAULT_PATIENTS
    #: This server's FHIR base URL: an absolute reference is accepted only under it (None: none is).
    base: str | None = None


def token(name: str, value: str, context: Context) -> Token:
    if value.count("|") > 1:
        raise InvalidRequest(f"{name}: a token is [system|]code, not {value!r}")
    system, bar, code = value.rpartition("|")
    if not code:
        raise InvalidRequest(f"{name}: {value!r} has no code")
    return Token(system if bar else None, code)


def uid_token(name: str, value: str, context: Context) -> Token:
    """A token whose code is a resource id or UID (``_id``, ``series``, ``instance``)."""
    parsed = token(name, value, context)
    if not is_fhir_id(parsed.code):
        raise InvalidRequest(f"{name}={value!r} is not a DICOM UID")
    return parsed


def typed_token(name: str, value: str, context: Context) -> TypedToken:
    parts = value.split("|")
    if len(parts) != 3 or not all(parts):
        raise InvalidRequest(f"{name}:of-type takes system|code|value, not {value!r}")
    return TypedToken(*parts)


def boolean(name: str, value: str, context: Context) -> bool:
    if value not in ("true", "false"):
        raise InvalidRequest(f"{name}:missing takes true or false, not {value!r}")
    return value == "true"


def date(name: str, value: str, context: Context) -> DateValue:
    return parse_date(name, value, context.zone)


def patient_reference(name: str, value: str, context: Context) -> Reference:
    """A Patient reference, as the PatientID its id stands for (an id outside the template stands for none:
    ``""``). Another type is kept, and matches nothing."""
    reference = _reference(name, value, "Patient", context.base)
    if reference.type != "Patient":
        return reference
    return Reference("Patient", context.patients.patient_id(reference.id) or "")


def endpoint_reference(name: str, value: str, context: Context) -> Reference:
    return _reference(name, value, "Endpoint", context.base)


def _reference(name: str, value: str, default_type: str, base: str | None) -> Reference:
    """``id``, ``Type/id``, or ``[base]/Type/id`` where ``base`` is this server's own."""
    parts = _relative(name, value, base).rstrip("/").split("/")
    if "_history" in parts:
        raise InvalidRequest(f"{name}: versioned references are not supported ({value!r})")
    if len(parts) > 2:
        raise InvalidRequest(f"{name}: {value!r} is not a reference (Type/id)")
    type_, id_ = (default_type, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if not re.fullmatch(r"[A-Z][A-Za-z]+", type_) or not id_:
        raise InvalidRequest(f"{name}: {value!r} is not a reference (Type/id)")
    return Reference(type_, id_)


#: A scheme (``http:``) before the first slash: an absolute URL. ``P:1`` stays an id (PatientIDs may hold ``:``).
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^/]*/|/")


def _relative(name: str, value: str, base: str | None) -> str:
    """The reference relative to this server: an absolute URL (or a path from the root) must be under ``base``.

    Another server's ``http://other/fhir/Patient/P1`` names another server's patient, whose id may mean someone
    else here: it is refused, never read as the local ``Patient/P1``."""
    if not _ABSOLUTE.match(value):
        return value
    url, own = urlsplit(value), urlsplit(base or "")
    root = own.path.rstrip("/") + "/"
    if (
        base is None
        or (url.scheme.lower(), url.netloc.lower()) != (own.scheme.lower(), own.netloc.lower())
        or not url.path.startswith(root)
        or url.query
        or url.fragment
    ):
        where = f"this server's base {base}" if base else "this server"
        raise InvalidRequest(f"{name}: {value!r} refers to another server; only references to {where} are searched")
    return url.path[len(root) :]
