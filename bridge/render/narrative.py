"""The human-readable ``text`` of an ImagingStudy, the same in R4 and R5: pure.

What the study is of and when, what it holds: patient, date, description, modalities, series and instance
counts. Every value comes from the PACS, so every value is escaped, and the characters XML 1.0 cannot carry
(most C0 controls, lone surrogates, U+FFFE/U+FFFF) are dropped: the div must parse as XHTML (txt-1) whatever a
PatientName holds. The markup is fixed text with only ``<div>``, ``<p>`` and ``<b>``, nothing a reader could run.
"""

from __future__ import annotations

import html
import re
from typing import Any

from bridge.mapping.facts import Concept, StudyFacts

XHTML = "http://www.w3.org/1999/xhtml"
#: What XML 1.0's Char production excludes (tab, LF and CR are allowed).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escaped(value: str) -> str:
    """A PACS value as XHTML text: markup characters escaped, characters XML cannot carry dropped."""
    if not value.isprintable():
        value = _NOT_XML.sub("", value)
    return html.escape(value, quote=True)


def narrative(facts: StudyFacts) -> dict[str, Any]:
    """``{status: generated, div}``: made from the structured data alone, so ``generated``."""
    lines = [f"<p><b>Imaging study</b> {escaped(facts.description)}</p>" if facts.description else
             "<p><b>Imaging study</b></p>"]  # fmt: skip
    patient = facts.patient
    shown_id = patient.id if patient.id is not None and patient.id_writable else None
    if patient.name or shown_id:
        named = escaped(patient.name) if patient.name else ""
        identified = f" ({escaped(shown_id)})" if shown_id and patient.name else escaped(shown_id or "")
        lines.append(f"<p>Patient: {named}{identified}</p>")
    if facts.started:
        lines.append(f"<p>Date: {escaped(facts.started)}</p>")
    if facts.modalities:
        lines.append(f"<p>Modalities: {', '.join(escaped(_named(m)) for m in facts.modalities)}</p>")
    counts = [_counted(facts.number_of_series, "series", "series"),
              _counted(facts.number_of_instances, "instance", "instances")]  # fmt: skip
    if said := [count for count in counts if count]:
        lines.append(f"<p>{', '.join(said)}</p>")
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{"".join(lines)}</div>'}


def _named(concept: Concept) -> str:
    return concept.codings[0].code if concept.codings else concept.text or ""


def _counted(number: int | None, one: str, many: str) -> str:
    if number is None:
        return ""
    return f"{number} {one if number == 1 else many}"
