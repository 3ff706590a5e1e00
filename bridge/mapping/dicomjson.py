"""Reading values out of the DICOM JSON model (PS3.18 F.2) defensively.

PACSes send IS/DS values as numbers or strings, pad strings with spaces, leave ``Value`` out of empty
attributes and occasionally send garbage. Every accessor here returns a clean Python value or None: never
raises on bad data, so the mapper can drop what it cannot repair.
"""

from __future__ import annotations

import re
from typing import Any

from bridge.datatypes import is_fhir_id, is_uid

#: One dataset in the DICOM JSON model: tag -> {"vr": ..., "Value": [...]}.
DicomJson = dict[str, Any]

# C0/C1 control characters other than tab, CR and LF have no place in a FHIR string.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Whitespace other than space, tab, CR, LF (no-break space is common in Latin-1 data): made a plain space,
# since FHIR strings admit only those four.
_ODD_SPACE = re.compile(r"[^\S \t\r\n]")


def clean(value: str) -> str | None:
    """A DICOM string as FHIR can carry it: control characters removed, odd spaces plain, padding stripped."""
    if value.isprintable():
        # Nearly every value: no control characters and no space but the plain one, so no regex is needed
        # (a profile of a 10,000-instance read had these substitutions at a tenth of the mapping's time).
        return value.strip(" ") or None
    cleaned = _ODD_SPACE.sub(" ", _CONTROL.sub("", value)).strip()
    return cleaned or None


def values(ds: DicomJson, tag: str) -> list[Any]:
    """All values of an attribute, or an empty list."""
    element = ds.get(tag)
    if not isinstance(element, dict):
        return []
    found = element.get("Value")
    return found if isinstance(found, list) else []


def first(ds: DicomJson, tag: str) -> Any:
    found = values(ds, tag)
    return found[0] if found else None


def text(ds: DicomJson, tag: str) -> str | None:
    """The first value as a string with DICOM padding removed; None if absent or blank."""
    # ``first`` written out: this runs about ten times per instance, and the calls were a tenth of a large read.
    element = ds.get(tag)
    found = element.get("Value") if isinstance(element, dict) else None
    value = found[0] if isinstance(found, list) and found else None
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return clean(str(value))
    return None


def texts(ds: DicomJson, tag: str) -> list[str]:
    """Every non-blank string value, padding removed."""
    out = []
    for value in values(ds, tag):
        if isinstance(value, str) and (cleaned := clean(value)):
            out.append(cleaned)
    return out


def unsigned(ds: DicomJson, tag: str) -> int | None:
    """The first value as a non-negative int (IS arrives as a number or a string); None if not one."""
    value = first(ds, tag)
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        stripped = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,12}", stripped):
            return None
        value = int(stripped)
    if isinstance(value, int) and 0 <= value <= 2_147_483_647:  # FHIR unsignedInt range
        return value
    return None


def uid(ds: DicomJson, tag: str) -> str | None:
    """The first value if it is a usable DICOM UID (digits and dots, at most 64 characters)."""
    value = text(ds, tag)
    return value if value is not None and is_uid(value) else None


def fhir_id(ds: DicomJson, tag: str) -> str | None:
    """The first value if it can stand as a FHIR id: a UID, or a broken one that still fits ``[A-Za-z0-9-.]{1,64}``."""
    value = text(ds, tag)
    return value if value is not None and is_fhir_id(value) else None


def person_name(ds: DicomJson, tag: str) -> str | None:
    """The first person name as display text: ``Doe^John^^Dr`` -> ``Dr John Doe``."""
    names = person_names(ds, tag)
    return names[0] if names else None


def person_names(ds: DicomJson, tag: str) -> list[str]:
    out = []
    for value in values(ds, tag):
        if isinstance(value, dict):
            raw = value.get("Alphabetic") or value.get("Ideographic") or value.get("Phonetic")
        else:
            raw = value  # some PACSes send PN as a plain string
        if isinstance(raw, str) and (shown := _format_name(raw)):
            out.append(shown)
    return out


def _format_name(raw: str) -> str | None:
    parts = [clean(p) or "" for p in raw.split("=")[0].split("^")]
    parts += [""] * (5 - len(parts))
    family, given, middle, prefix, suffix = parts[:5]
    shown = " ".join(p for p in (prefix, given, middle, family) if p)
    if suffix:
        shown = f"{shown}, {suffix}" if shown else suffix
    return shown or None


def items(ds: DicomJson, tag: str) -> list[DicomJson]:
    """The items of a sequence attribute."""
    return [item for item in values(ds, tag) if isinstance(item, dict)]
