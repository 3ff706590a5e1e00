"""FHIR search over QIDO-RS: the parameter table, parsing, planning, exact matching, execution, Bundles."""
