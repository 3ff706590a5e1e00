"""Pure mapping from DICOM JSON (QIDO-RS answers) to FHIR R5 resources: no I/O, no aiohttp."""
