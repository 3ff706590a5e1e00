"""The awkward studies real PACSes hold, as ``StudySpec``s the integration tests load and read back."""

from __future__ import annotations

from tests.support.dicomgen import (
    BASIC_TEXT_SR,
    DIGITAL_MAMMOGRAPHY,
    ENCAPSULATED_PDF,
    KEY_OBJECT_SELECTION,
    MR_IMAGE,
    SEGMENTATION,
    InstanceSpec,
    SeriesSpec,
    StudySpec,
    new_uid,
    simple_study,
)


def studies() -> dict[str, StudySpec]:
    """Named studies; each name says what makes it awkward."""
    full = StudySpec(
        patient_id="PAT-FULL",
        patient_name="Müller^Jürgen^^Dr.",
        issuer="HOSP",
        tz_offset="+0100",
        date="20240305",
        time="143015.25",
        accession="ACC-1001",
        description="CT Thorax mit KM",
        referring="House^Gregory",
        series=[
            SeriesSpec(
                modality="CT", number=2, description="Lung 1mm", body_part="CHEST", date="20240305",
                time="143512", performing="Cuddy^Lisa", operators="Tech^Tom", institution="St. Elsewhere",
                manufacturer="ACME", instances=[InstanceSpec(number=n) for n in (3, 1, 2)],
            ),
            SeriesSpec(
                modality="MR", number=1, body_part="KNEE", laterality="L",
                instances=[InstanceSpec(sop_class=MR_IMAGE, number=1)],
            ),
        ],
    )  # fmt: skip
    odd_patient = simple_study(
        series=1, instances=2, patient_id="ID 7/3 b", patient_name="Ñúñez^Zoë", accession="A B/7"
    )
    malformed_dates = simple_study(series=1, instances=1, date="1997.04.24", time="14:04:38")
    impossible_date = simple_study(series=1, instances=1, date="20231345", time="250000")
    no_date = simple_study(series=1, instances=1, date=None, time=None, patient_name=None)
    negative_zone = simple_study(series=1, instances=1, date="20231231", time="235959.123456", tz_offset="-0500")
    sr_and_seg = StudySpec(
        patient_id="PAT-SR",
        series=[
            SeriesSpec(modality="CT", number=1, body_part="HEAD", instances=[InstanceSpec(number=1)]),
            SeriesSpec(modality="SR", number=2, instances=[
                InstanceSpec(sop_class=BASIC_TEXT_SR, number=1, concept_name="Radiology Report")]),
            SeriesSpec(modality="SEG", number=3, instances=[InstanceSpec(sop_class=SEGMENTATION, number=1)]),
            SeriesSpec(modality="DOC", number=4, instances=[
                InstanceSpec(sop_class=ENCAPSULATED_PDF, number=1, document_title="Referral letter")]),
            SeriesSpec(modality="KO", number=None, instances=[InstanceSpec(sop_class=KEY_OBJECT_SELECTION)]),
        ],
    )  # fmt: skip
    no_modality = StudySpec(
        patient_id="PAT-NOMOD", series=[SeriesSpec(modality=None, number=1, instances=[InstanceSpec(number=1)])]
    )
    # Mammography gives laterality per image (Image Laterality), not per series: a series of left images is of
    # the left breast, one of left and right images of neither alone; B (both) exists only per image.
    mammography = StudySpec(
        patient_id="PAT-MG",
        series=[
            SeriesSpec(modality="MG", number=1, instances=[
                InstanceSpec(sop_class=DIGITAL_MAMMOGRAPHY, number=n, image_laterality="L") for n in (1, 2)]),
            SeriesSpec(modality="MG", number=2, instances=[
                InstanceSpec(sop_class=DIGITAL_MAMMOGRAPHY, number=n, image_laterality=side)
                for n, side in ((1, "L"), (2, "R"))]),
            SeriesSpec(modality="MG", number=3, instances=[
                InstanceSpec(sop_class=DIGITAL_MAMMOGRAPHY, number=1, image_laterality="B")]),
        ],
    )  # fmt: skip
    many_series = simple_study(series=150, instances=1, patient_id="PAT-MANY")
    big_series = simple_study(series=1, instances=130, patient_id="PAT-BIG")
    return {
        "full": full,
        "odd_patient": odd_patient,
        "malformed_dates": malformed_dates,
        "impossible_date": impossible_date,
        "no_date": no_date,
        "negative_zone": negative_zone,
        "sr_and_seg": sr_and_seg,
        "no_modality": no_modality,
        "mammography": mammography,
        "many_series": many_series,
        "big_series": big_series,
    }


SHARED_UID = new_uid()


def shared_uid_pair() -> list[StudySpec]:
    """Two patients' studies under one StudyInstanceUID, as migrations and bad anonymisation leave them."""
    return [
        simple_study(series=1, instances=1, uid=SHARED_UID, patient_id="TWIN-A", patient_name="Alpha^A"),
        simple_study(series=1, instances=2, uid=SHARED_UID, patient_id="TWIN-B", patient_name="Beta^B"),
    ]
