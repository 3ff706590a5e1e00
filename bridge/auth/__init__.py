"""SMART on FHIR authorization: the resource-server half.

- ``scopes``: SMART v1 and v2 scopes -> what a token may do (pure);
- ``grant``: who is asking and what they may see, as one value the handlers consult (pure);
- ``tokens``: bearer tokens verified (JWT against the issuer's JWKS, or RFC 7662 introspection), cached by digest;
- ``compartment``: a token's patient context (a FHIR Patient id) -> the PACS patients it stands for.
"""
