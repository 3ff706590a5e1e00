"""The mapper, table-driven: each ``tests/data/mapping/<case>.qido.json`` maps to ``<case>.fhir.json``.

The ``orthanc_*`` inputs were recorded from a real Orthanc (``python -m tests.support.record_qido``); the
others are written by hand to hold what real PACSes send at their worst. After a deliberate change of the
mapping, ``UPDATE_GOLDEN=1 pytest tests/test_mapping.py`` rewrites the expected files: review the diff.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from bridge import terminology
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson
from bridge.mapping.imagingstudy import MappingOptions, SeriesRows, StudyRows, imaging_study, series_element
from tests.support.fhircheck import validate

CASES = Path(__file__).parent / "data" / "mapping"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
STUDY_UID = "2.25.7001"


def load_case(name: str) -> tuple[StudyRows, MappingOptions]:
    case = orjson.loads((CASES / f"{name}.qido.json").read_bytes())
    options: dict[str, Any] = dict(case["options"])
    if "zone" in options:
        options["zone"] = ZoneInfo(options["zone"])
    series = None
    if case["series"] is not None:
        series = [SeriesRows(s["series"], s["instances"]) for s in case["series"]]
    return StudyRows(case["study"], series), MappingOptions(**options)


@pytest.mark.parametrize("name", sorted(p.name.removesuffix(".qido.json") for p in CASES.glob("*.qido.json")))
def test_case_maps_to_expected_fhir(name: str) -> None:
    rows, options = load_case(name)
    resource = imaging_study(rows, options).resource
    validate(resource)
    expected_file = CASES / f"{name}.fhir.json"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_bytes(orjson.dumps(resource, option=orjson.OPT_INDENT_2) + b"\n")
    assert resource == orjson.loads(expected_file.read_bytes())


def test_disagreeing_counts_are_reported_and_lists_win() -> None:
    rows, options = load_case("hostile_values")
    mapped = imaging_study(rows, options)
    assert mapped.resource["numberOfSeries"] == 2
    assert mapped.resource["numberOfInstances"] == 4
    assert any("PACS counts 7 series, listed 2" in note for note in mapped.notes)
    assert any("PACS counts 5 instances, listed 2" in note for note in mapped.notes)


def test_mapping_is_deterministic_whatever_the_row_order() -> None:
    rows, options = load_case("orthanc_full")
    assert rows.series is not None
    shuffled = StudyRows(rows.study, [SeriesRows(s.series, s.instances[::-1]) for s in rows.series[::-1]])
    assert imaging_study(shuffled, options).resource == imaging_study(rows, options).resource


def test_a_row_without_a_study_uid_is_refused() -> None:
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        imaging_study(StudyRows({"0020000D": {"vr": "UI", "Value": ["not a uid"]}}), MappingOptions())


def test_uid_names_are_pydicoms() -> None:
    # Read from pydicom's data module without importing pydicom (bridge.terminology): the same names.
    from pydicom.uid import UID, UID_dictionary

    for uid in UID_dictionary:
        assert terminology.uid_name(uid) == UID(uid).name
    assert terminology.uid_name("1.2.840.10008.5.1.4.1.1.2") == "CT Image Storage"
    assert terminology.uid_name("1.2.3.4") is None


def attribute(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def by_name(**attributes: dict[str, Any]) -> DicomJson:
    """Attributes named by their ``bridge.mapping.tags`` constant: ``by_name(MODALITY=attribute("CS", "CT"))``."""
    return {getattr(tags, name): value for name, value in attributes.items()}


def study_row(**attributes: dict[str, Any]) -> DicomJson:
    return by_name(STUDY_INSTANCE_UID=attribute("UI", STUDY_UID), **attributes)


def series_row(number: int, **attributes: dict[str, Any]) -> DicomJson:
    uid = attribute("UI", f"{STUDY_UID}.{number}")
    return by_name(SERIES_INSTANCE_UID=uid, SERIES_NUMBER=attribute("IS", number), **attributes)


def full_study(*series: SeriesRows, **attributes: dict[str, Any]) -> dict[str, Any]:
    """The resource of a study read in full, validated (R5 and ist-1..ist-7)."""
    resource = imaging_study(StudyRows(study_row(**attributes), series), MappingOptions()).resource
    validate(resource)
    return resource


def dcm(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": DCM, "code": code, "display": display}]}


def test_the_modality_table_is_cid_33() -> None:
    # The defined terms the mapper codes, against pydicom's own copy of CID 33 (an older edition: same codes).
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr._concepts_dict import concepts

    cid_33 = {code for name in cid_concepts[33]["DCM"] for code in concepts["DCM"][name]}
    table = resources.files(terminology).joinpath("modality-codes.csv").read_text(encoding="utf-8")
    assert {line.split(",")[0] for line in table.splitlines()[1:]} == cid_33
    assert all(terminology.modality_display(code) for code in cid_33)
    assert terminology.modality_display("XYZ") is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["CT"], dcm("CT", "Computed Tomography")),
        (["ct"], dcm("CT", "Computed Tomography")),  # CS is upper case by definition: an unambiguous repair
        (["SEG"], dcm("SEG", "Segmentation")),
        (["CT", "CT"], dcm("CT", "Computed Tomography")),
        (["XYZ"], {"text": "XYZ"}),  # not a DICOM defined term: no DCM code says what it is
        (["CT MR"], {"text": "CT MR"}),
        (["ST"], {"text": "ST"}),  # retired, not in CID 33
        (["CT", "MR"], {"text": "CT\\MR"}),  # Modality has one value: of two, neither is the series'
        ([], dcm("OT", "Other Modality")),  # series.modality is 1..1
        ([" "], dcm("OT", "Other Modality")),
    ],
)
def test_only_dicom_defined_modalities_are_dcm_codings(values: list[str], expected: dict[str, Any]) -> None:
    row = series_row(1, MODALITY=attribute("CS", *values))
    assert series_element(row, MappingOptions())["modality"] == expected
    resource = full_study(SeriesRows(row, ()))  # and ist-7 holds with it
    assert resource["modality"] == [expected]


def test_study_modalities_are_the_series_codings_and_texts() -> None:
    resource = full_study(
        SeriesRows(series_row(1, MODALITY=attribute("CS", "XYZ")), ()),
        SeriesRows(series_row(2, MODALITY=attribute("CS", "CT")), ()),
        SeriesRows(series_row(3, MODALITY=attribute("CS", "XYZ")), ()),
        SeriesRows(series_row(4, MODALITY=attribute("CS", "ct")), ()),
        MODALITIES_IN_STUDY=attribute("CS", "CT", "MR"),  # stale: the series list wins
    )
    assert resource["modality"] == [{"text": "XYZ"}, dcm("CT", "Computed Tomography")]


def test_study_level_modalities_keep_terms_dicom_does_not_define_as_text() -> None:
    study = study_row(MODALITIES_IN_STUDY=attribute("CS", "CT", "XYZ", "ct", "CT MR"))
    resource = imaging_study(StudyRows(study), MappingOptions()).resource
    validate(resource)
    # A search for modality=XYZ matches DCM codings and so does not find this study: XYZ is no DICOM modality.
    assert resource["modality"] == [dcm("CT", "Computed Tomography"), {"text": "XYZ"}, {"text": "CT MR"}]


def test_performers_functions_are_those_of_r5s_value_set() -> None:
    # series-performer-function holds CON VRF PRF SPRF REF: the equipment and the institution (DEV and LOC in
    # v3-ParticipationType) are performers without a function, their actor's type saying what they are.
    row = series_row(
        1,
        PERFORMING_PHYSICIAN_NAME=attribute("PN", {"Alphabetic": "Cuddy^Lisa"}),
        OPERATORS_NAME=attribute("PN", {"Alphabetic": "Tech^Tom"}, {"Alphabetic": "Aide^Ann"}),
        MANUFACTURER=attribute("LO", "ACME"),
        MANUFACTURER_MODEL_NAME=attribute("LO", "Scan 3000"),
        INSTITUTION_NAME=attribute("LO", "St. Elsewhere"),
    )
    [series] = full_study(SeriesRows(row, ()))["series"]

    def function(code: str, display: str) -> dict[str, Any]:
        return {"coding": [{"system": PARTICIPATION_TYPE, "code": code, "display": display}]}

    assert series["performer"] == [
        {"function": function("PRF", "performer"), "actor": {"type": "Practitioner", "display": "Lisa Cuddy"}},
        {"function": function("SPRF", "secondary performer"), "actor": {"type": "Practitioner", "display": "Tom Tech"}},
        {"function": function("SPRF", "secondary performer"), "actor": {"type": "Practitioner", "display": "Ann Aide"}},
        {"actor": {"type": "Device", "display": "ACME Scan 3000"}},
        {"actor": {"type": "Organization", "display": "St. Elsewhere"}},
    ]


def instance_row(series: int, number: int, **attributes: dict[str, Any]) -> DicomJson:
    uid, mammogram = attribute("UI", f"{STUDY_UID}.{series}.{number}"), attribute("UI", "1.2.840.10008.5.1.4.1.1.1.2")
    return by_name(SOP_INSTANCE_UID=uid, SOP_CLASS_UID=mammogram, INSTANCE_NUMBER=attribute("IS", number), **attributes)


LEFT = {"coding": [{"system": terminology.SNOMED, "code": "7771000", "display": "Left"}]}
RIGHT = {"coding": [{"system": terminology.SNOMED, "code": "24028007", "display": "Right"}]}
BILATERAL = {"coding": [{"system": terminology.SNOMED, "code": "51440002", "display": "Bilateral"}]}


@pytest.mark.parametrize(
    ("series_laterality", "image_lateralities", "expected"),
    [
        (None, ["L", "L"], LEFT),  # mammography: on the images, not the series
        (None, ["R"], RIGHT),
        (None, ["B", "B"], BILATERAL),  # B exists only per image
        (None, ["L", "R"], None),  # a series of left and right images is of neither side alone
        (None, ["L", None], None),  # one image says nothing: the series cannot be said to be left
        (None, [None, "L"], None),
        (None, ["U", "U"], None),  # unpaired: no laterality
        (None, ["X"], None),
        (None, [], None),
        ("R", ["L"], RIGHT),  # the series' own Laterality wins
        ("R", [None], RIGHT),
        ("X", ["L"], LEFT),  # an unusable series Laterality is none
    ],
)
def test_laterality_falls_back_to_the_images(
    series_laterality: str | None, image_lateralities: list[str | None], expected: dict[str, Any] | None
) -> None:
    row = series_row(1, MODALITY=attribute("CS", "MG"))
    if series_laterality:
        row |= by_name(LATERALITY=attribute("CS", series_laterality))
    instances = [
        instance_row(1, n, **({"IMAGE_LATERALITY": attribute("CS", side)} if side else {}))
        for n, side in enumerate(image_lateralities, 1)
    ]
    [series] = full_study(SeriesRows(row, instances))["series"]
    assert series.get("laterality") == expected


def test_image_laterality_on_a_series_row_is_one_images_not_the_series() -> None:
    # Orthanc asked for (0020,0062) at series level answers one instance's value: L for a series of L and R images.
    row = series_row(1, MODALITY=attribute("CS", "MG"), IMAGE_LATERALITY=attribute("CS", "L"))
    instances = [
        instance_row(1, 1, IMAGE_LATERALITY=attribute("CS", "L")),
        instance_row(1, 2, IMAGE_LATERALITY=attribute("CS", "R")),
    ]
    [series] = full_study(SeriesRows(row, instances))["series"]
    assert "laterality" not in series
    assert "laterality" not in series_element(row, MappingOptions())
