"""Generated studies for the FHIR search tests against Orthanc, and the expected answers computed from them.

Every patient ID and accession number starts with ``QSX`` so that expectations are exact whatever else the PACS
holds (the read-path catalog, pydicom's samples). Expectations are computed here from the ``StudySpec``s and FHIR's
own rules (token equality, date ranges and prefixes), never from the bridge.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from tests.support.dicomgen import (
    CT_IMAGE,
    MR_IMAGE,
    InstanceSpec,
    SeriesSpec,
    StudySpec,
    new_uid,
    simple_study,
)

#: A SOP Class UID no other study in the PACS uses (under pydicom's test root, away from ``new_uid``'s).
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.77.1"

Key = tuple[str, str | None]  # (StudyInstanceUID, PatientID): one patient's part of a study


def key(spec: StudySpec) -> Key:
    return (spec.uid, spec.patient_id)


def _study(patient_id: str, *series: SeriesSpec, **fields: object) -> StudySpec:
    return StudySpec(patient_id=patient_id, series=list(series), **fields)  # type: ignore[arg-type]


def _series(modality: str = "CT", sop_class: str = CT_IMAGE, instances: int = 1, **fields: object) -> SeriesSpec:
    return SeriesSpec(
        modality=modality,
        instances=[InstanceSpec(sop_class=sop_class, number=n + 1) for n in range(instances)],
        **fields,  # type: ignore[arg-type]
    )


@dataclass
class SearchCatalog:
    #: identifier, _id, based-on: accession numbers that differ by case, with spaces and non-ASCII.
    ids: dict[str, StudySpec] = field(default_factory=dict)
    #: patient IDs: spaces, slashes, non-ASCII, case twins, and decoys a wildcard query would also match.
    patients: dict[str, StudySpec] = field(default_factory=dict)
    #: one StudyInstanceUID under two patients, each with their own series.
    twins: tuple[StudySpec, StudySpec] = field(default_factory=lambda: (StudySpec(), StudySpec()))
    #: started: zones around midnight, leap day, date-only, no date (one patient).
    dates: dict[str, StudySpec] = field(default_factory=dict)
    #: StudyDate values a PACS holds verbatim but the bridge repairs or drops (another patient).
    odd_dates: dict[str, StudySpec] = field(default_factory=dict)
    #: modality, body-site, dicom-class, series, instance (one patient).
    kinds: dict[str, StudySpec] = field(default_factory=dict)
    #: 45 studies of one patient, for paging (ties in date, one without a date).
    paging: list[StudySpec] = field(default_factory=list)
    #: 60 more tiny studies of another patient: with ``paging``, more than the _count cap.
    bulk: list[StudySpec] = field(default_factory=list)

    def all(self) -> list[StudySpec]:
        return [
            *self.ids.values(), *self.patients.values(), *self.twins, *self.dates.values(), *self.odd_dates.values(),
            *self.kinds.values(),
            *self.paging, *self.bulk,
        ]  # fmt: skip


IDS_PATIENT = "QSX-IDS"
DATES_PATIENT = "QSX-DATES"
ODD_DATES_PATIENT = "QSX-DATES-ODD"
KINDS_PATIENT = "QSX-KINDS"
PAGING_PATIENT = "QSX-PAGE"
BULK_PATIENT = "QSX-BULK"
ODD_PATIENT = "QSX 01/ä"


def build() -> SearchCatalog:
    cat = SearchCatalog()
    cat.ids = {
        "acc1": simple_study(patient_id=IDS_PATIENT, accession="QSX-ACC-1"),
        "acc1_lower": simple_study(patient_id=IDS_PATIENT, accession="qsx-acc-1"),
        "acc_odd": simple_study(patient_id=IDS_PATIENT, accession="QSX ACC/ö 2"),
        "no_acc": simple_study(patient_id=IDS_PATIENT, accession=None),
    }
    cat.patients = {
        "odd": simple_study(instances=2, patient_id=ODD_PATIENT, patient_name="Ärger^Öde"),
        "odd_twice": simple_study(patient_id=ODD_PATIENT, date="20230101"),
        # What ``QSX*01/*`` (the wildcard form of the odd ID) and case-insensitive matching would also return.
        "decoy_dash": simple_study(patient_id="QSX-01/ä"),
        "decoy_ascii": simple_study(patient_id="QSX 01/a"),
        "decoy_longer": simple_study(patient_id="QSX 01/äb"),
        "decoy_upper": simple_study(patient_id="QSX 01/Ä"),
        "case_lower": simple_study(patient_id="qsx-case"),
        "case_upper": simple_study(patient_id="QSX-CASE"),
        "case_upper_2": simple_study(patient_id="QSX-CASE", date="20220202"),
    }
    shared = new_uid()
    cat.twins = (
        _study("QSX-TWIN-A", _series(instances=1, number=1), uid=shared),
        _study("QSX-TWIN-B", _series(instances=2, number=1), _series("MR", MR_IMAGE, 1, number=2), uid=shared),
    )
    cat.dates = {
        "date_only": simple_study(patient_id=DATES_PATIENT, date="20230615", time="120000"),
        # 2024-01-01T00:30+02:00 is 2023-12-31T22:30Z: its local date is not its UTC date.
        "east_after_midnight": simple_study(
            patient_id=DATES_PATIENT, date="20240101", time="003000", tz_offset="+0200"
        ),
        # 2023-12-31T23:30-05:00 is 2024-01-01T04:30Z.
        "west_before_midnight": simple_study(
            patient_id=DATES_PATIENT, date="20231231", time="233000", tz_offset="-0500"
        ),
        # The extremes of TimezoneOffsetFromUTC, both 2024-01-01T11:00:00Z, two local days apart.
        "plus_14": simple_study(patient_id=DATES_PATIENT, date="20240102", time="010000", tz_offset="+1400"),
        "minus_12": simple_study(patient_id=DATES_PATIENT, date="20231231", time="230000", tz_offset="-1200"),
        "leap_day_end": simple_study(patient_id=DATES_PATIENT, date="20240229", time="235959", tz_offset="+0000"),
        # 2024-03-01T00:00+01:00 is 2024-02-29T23:00Z.
        "march_first_cet": simple_study(patient_id=DATES_PATIENT, date="20240301", time="000000", tz_offset="+0100"),
        "mid_march": simple_study(patient_id=DATES_PATIENT, date="20240315", time="101500"),
        "next_year": simple_study(patient_id=DATES_PATIENT, date="20250704", time=None),
        "no_date": simple_study(patient_id=DATES_PATIENT, date=None, time=None),
    }
    cat.odd_dates = {
        # Read back as started 1997-04-24 (the unambiguous repair the README documents).
        "dotted": simple_study(patient_id=ODD_DATES_PATIENT, date="1997.04.24", time="14:04:38"),
        # Read back without started: not a date at all.
        "impossible": simple_study(patient_id=ODD_DATES_PATIENT, date="20231345", time="250000"),
        "regular": simple_study(patient_id=ODD_DATES_PATIENT, date="19970424", time="090000"),
    }
    cat.kinds = {
        "ct_chest": _study(KINDS_PATIENT, _series("CT", body_part="CHEST", number=1)),
        "mr_knee": _study(KINDS_PATIENT, _series("MR", MR_IMAGE, body_part="KNEE", number=1)),
        "ct_mr": _study(
            KINDS_PATIENT,
            _series("CT", body_part="CHEST", number=1),
            _series("MR", MR_IMAGE, body_part="HEAD", number=2),
        ),
        "pt": _study(KINDS_PATIENT, _series("PT", "1.2.840.10008.5.1.4.1.1.128", number=1)),
        "private_class": _study(KINDS_PATIENT, _series("OT", PRIVATE_SOP_CLASS, instances=2, number=1)),
    }
    # Paging: 45 studies, newest 2024-12-31, some sharing a date (the UID decides), one without a date (last).
    base = dt.date(2024, 12, 31)
    for n in range(44):
        day = base - dt.timedelta(days=n // 2 * 3)  # pairs of studies on the same day
        cat.paging.append(simple_study(patient_id=PAGING_PATIENT, date=day.strftime("%Y%m%d"), time="080000"))
    cat.paging.append(simple_study(patient_id=PAGING_PATIENT, date=None, time=None))
    cat.bulk = [simple_study(patient_id=BULK_PATIENT, date="20200101") for _ in range(60)]
    return cat


# ---- expected started semantics (FHIR R5 search.html#date), independent of the bridge ----


def started_range(spec: StudySpec) -> tuple[dt.datetime, dt.datetime] | None:
    """The instants ``started`` spans: with a zone, the second given; without, the whole day (in UTC)."""
    if spec.date is None:
        return None
    day = dt.datetime.strptime(spec.date, "%Y%m%d")
    if spec.tz_offset is None or spec.time is None:
        low = day.replace(tzinfo=dt.UTC)
        return low, low + dt.timedelta(days=1)
    sign = -1 if spec.tz_offset[0] == "-" else 1
    zone = dt.timezone(sign * dt.timedelta(hours=int(spec.tz_offset[1:3]), minutes=int(spec.tz_offset[3:5])))
    local = day.replace(hour=int(spec.time[0:2]), minute=int(spec.time[2:4]), second=int(spec.time[4:6]))
    low = local.replace(tzinfo=zone).astimezone(dt.UTC)
    return low, low + dt.timedelta(seconds=1)


def search_range(value: str) -> tuple[dt.datetime, dt.datetime]:
    """The instants a (prefix-less) FHIR date search value spans; without a zone, UTC."""
    date_part, _, time_part = value.partition("T")
    pieces = [int(p) for p in date_part.split("-")]
    if len(pieces) == 1:
        return dt.datetime(pieces[0], 1, 1, tzinfo=dt.UTC), dt.datetime(pieces[0] + 1, 1, 1, tzinfo=dt.UTC)
    if len(pieces) == 2:
        year, month = pieces
        nxt = (year + 1, 1) if month == 12 else (year, month + 1)
        return dt.datetime(year, month, 1, tzinfo=dt.UTC), dt.datetime(*nxt, 1, tzinfo=dt.UTC)
    if not time_part:
        low = dt.datetime(*pieces, tzinfo=dt.UTC)
        return low, low + dt.timedelta(days=1)
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)
    clock = re.match(r"\d{2}:\d{2}(:\d{2})?", time_part)
    assert clock, value
    step = dt.timedelta(seconds=1) if clock[1] else dt.timedelta(minutes=1)
    return parsed, parsed + step


def started_matches(prefix: str, value: str, spec: StudySpec) -> bool:
    target = started_range(spec)
    if target is None:
        return False  # a study without a date is never matched by a started search
    low, high = target
    s_low, s_high = search_range(value)
    contained = s_low <= low and high <= s_high
    return {
        "eq": contained,
        "ne": not contained,
        "gt": high > s_high,
        "lt": low < s_low,
        "ge": high > s_high or contained,
        "le": low < s_low or contained,
        "sa": low >= s_high,
        "eb": high <= s_low,
    }[prefix]


def paging_order(specs: list[StudySpec]) -> list[str]:
    """Newest first by started, then by UID; studies without a date last."""

    def order(spec: StudySpec) -> tuple[int, float, str]:
        target = started_range(spec)
        return (1, 0.0, spec.uid) if target is None else (0, -target[0].timestamp(), spec.uid)

    return [spec.uid for spec in sorted(specs, key=order)]
