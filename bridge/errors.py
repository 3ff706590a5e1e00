"""The bridge's one exception tree.

Every failure a client can see is one of these; the web layer turns each into an OperationOutcome with the
status and FHIR issue code the class declares (``bridge.web.outcomes``), so handlers never build error JSON.

    BridgeError
    ├── InvalidRequest        400  the client's request is malformed
    │   ├── TooCostly         400  well-formed, but more than the bridge will ask of the PACS
    │   │   └── BudgetExceeded  400  found so while asking (bridge.qido.budget): said again with what to narrow
    │   ├── UriTooLong        414  a URL longer than the bridge reads
    │   └── HeadersTooLarge   431  a header, or all of them, larger than the bridge reads
    ├── Unauthorized          401  no bearer token, or one that is not valid (WWW-Authenticate: invalid_token)
    ├── Forbidden             403  a valid token without the scope, or for another patient (insufficient_scope)
    ├── NotFound              404  no such resource
    ├── NotAcceptable         406  a response format we do not serve
    ├── UnsupportedMediaType  415  a request body we do not read
    ├── RequestTimeout        408  the client did not send its request body in time
    ├── MisdirectedRequest    421  a Host this server does not answer for (links would carry it)
    ├── Conflict              409  the PACS holds contradicting data (one StudyInstanceUID, two patients)
    ├── TooManyRequests       429  the client's rate (BRIDGE_RATE_LIMIT) is spent; Retry-After says when
    ├── AuthServerUnavailable 503  a token cannot be checked now: the authorization (or clinical FHIR) server failed
    ├── AuditUnavailable      503  the audit log cannot keep up: patient data is not served unaudited
    └── UpstreamError              the PACS failed us
        ├── UpstreamBadResponse   502  an HTTP error status or a body that is not DICOM JSON
        ├── UpstreamUnavailable   503  connection refused, reset or dropped
        └── UpstreamTimeout       504  no answer within BRIDGE_QIDO_TIMEOUT
            └── DeadlineExceeded  504  the client request's own deadline passed (not the PACS's fault)

Messages are written for the person who must act on them and never carry credentials or the PACS URL's
userinfo. ``ConfigError`` stands apart: it stops the service at start and never reaches a client.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error a client can see."""

    status: int = 500
    #: The FHIR ``IssueType`` code (http://hl7.org/fhir/issue-type) of the OperationOutcome.
    issue_code: str = "exception"
    #: Whether the connection is closed after the answer.
    close_connection: bool = False

    def __init__(
        self, diagnostics: str, *, retry_after: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        #: Seconds after which a retry may succeed (sent as Retry-After), when known.
        self.retry_after = retry_after
        #: Headers the answer must carry (``WWW-Authenticate``).
        self.headers = headers or {}


class InvalidRequest(BridgeError):
    status = 400
    issue_code = "invalid"


class TooCostly(InvalidRequest):
    issue_code = "too-costly"


class BudgetExceeded(TooCostly):
    """A request's PACS budget ran out while it was being answered; the message says which part."""


class UriTooLong(InvalidRequest):
    status = 414
    issue_code = "too-long"


class HeadersTooLarge(InvalidRequest):
    status = 431
    issue_code = "too-long"


class Unauthorized(BridgeError):
    """RFC 6750 3.1 ``invalid_token`` (or no token at all: then no error code, as RFC 6750 3 says)."""

    status = 401
    issue_code = "login"

    def __init__(self, diagnostics: str, *, error: str | None = "invalid_token") -> None:
        challenge = 'Bearer realm="imaging"' + (f', error="{error}"' if error else "")
        super().__init__(diagnostics, headers={"WWW-Authenticate": challenge})


class Forbidden(BridgeError):
    """RFC 6750 3.1 ``insufficient_scope``: the token is good, but does not allow this."""

    status = 403
    issue_code = "forbidden"

    def __init__(self, diagnostics: str, *, scope: str | None = None) -> None:
        challenge = 'Bearer realm="imaging", error="insufficient_scope"' + (f', scope="{scope}"' if scope else "")
        super().__init__(diagnostics, headers={"WWW-Authenticate": challenge})


class NotFound(BridgeError):
    status = 404
    issue_code = "not-found"


class NotAcceptable(BridgeError):
    status = 406
    issue_code = "not-supported"


class UnsupportedMediaType(BridgeError):
    status = 415
    issue_code = "not-supported"


class RequestTimeout(BridgeError):
    status = 408
    issue_code = "timeout"
    #: The connection holds the rest of a body never read: it cannot carry another request.
    close_connection = True


class MisdirectedRequest(BridgeError):
    status = 421
    issue_code = "not-supported"


class Conflict(BridgeError):
    status = 409
    issue_code = "multiple-matches"


class TooManyRequests(BridgeError):
    status = 429
    issue_code = "throttled"


class AuthServerUnavailable(BridgeError):
    """The authorization server (metadata, JWKS, introspection, token endpoint) or the clinical FHIR server gave no
    usable answer, so a token or its patient cannot be checked now. Not an ``UpstreamError``: the PACS is fine, and
    nothing that treats a failing PACS (the cache's stale-if-error, /readyz) applies. Messages name the server's
    role, not its address; the address and the cause are logged."""

    status = 503
    issue_code = "transient"

    def __init__(self, diagnostics: str, *, retry_after: int | None = 5) -> None:
        super().__init__(diagnostics, retry_after=retry_after)


class AuditUnavailable(BridgeError):
    """The audit log's sink is too slow or broken to record another access (``bridge.web.audit``)."""

    status = 503
    issue_code = "transient"


class UpstreamError(BridgeError):
    """The PACS did not give a usable answer."""


class UpstreamBadResponse(UpstreamError):
    status = 502
    issue_code = "exception"
    #: The PACS answered with a 5xx of its own (it is failing), rather than with something unusable.
    server_error = False


class UpstreamUnavailable(UpstreamError):
    status = 503
    issue_code = "transient"


class UpstreamTimeout(UpstreamError):
    status = 504
    issue_code = "timeout"


class DeadlineExceeded(UpstreamTimeout):
    """The client request's deadline (BRIDGE_REQUEST_DEADLINE) passed; the PACS may be fine."""


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""
