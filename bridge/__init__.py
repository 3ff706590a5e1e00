"""A DICOMweb-to-FHIR bridge: FHIR R5 ImagingStudy resources synthesized from a PACS's QIDO-RS service."""

__version__ = "0.1.0"
#: The date of this release, used as the CapabilityStatement's date.
RELEASE_DATE = "2026-11-27"
