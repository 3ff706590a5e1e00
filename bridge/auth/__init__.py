"""SMART on FHIR authorization: the resource-server half.

Pure:
- ``scopes``: SMART v1 and v2 scopes -> what a token may do;
- ``grant``: who is asking and what they may see, as one value the handlers consult;
- ``claims``: a verified JWT's payload or an introspection answer -> ``Claims`` (and ``InvalidToken``);
- ``discovery``: the smart-configuration document and the CapabilityStatement's ``rest.security``;
- ``auditevent``: one request to patient data -> the R5 AuditEvent the audit log writes.

Shell (HTTP to the authorization and clinical FHIR servers, ``remote.JsonClient``; fetches shared and backed
off, ``fetched.Fetched``):
- ``tokens``: bearer tokens verified, cached by digest: the ``TokenVerifier`` seam and ``token_verifier(settings)``;
- ``jwt_tokens`` with ``jwks`` and ``issuer``: JWTs against the issuer's key set, found through its metadata;
- ``introspection``: opaque tokens by RFC 7662;
- ``clinical``: a token's patient context (a FHIR Patient id) -> that Patient's identifiers, from the clinical
  FHIR server;
- ``compartment``: a token's patient context -> the PACS patients it stands for.
"""
