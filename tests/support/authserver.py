"""A small authorization server (and clinical FHIR server) for tests, over real HTTP on 127.0.0.1, with real keys.

    async with AuthServer() as auth:                  # or the ``auth_server`` fixture of tests/conftest.py
        settings = load_settings(auth.environ())      # BRIDGE_AUTH=smart, its issuer, its audience
        token = auth.mint(scope="patient/ImagingStudy.rs", patient="123")

What it serves (``issuer`` is ``http://127.0.0.1:<port>/auth``):

- ``{issuer}/.well-known/openid-configuration`` and ``…/smart-configuration`` (``serve_openid``,
  ``serve_smart`` turn each off; ``metadata_extra`` adds or overrides fields);
- ``{issuer}/jwks``: the public half of ``keys`` (an RSA and an EC P-256 key at start, made once per test run),
  changed at runtime by ``publish``, ``withdraw`` and ``rotate``, then ``extra_jwks`` as they are;
- ``{issuer}/moved/{path}``: a redirect to ``{issuer}/{path}``;
- ``{issuer}/introspect`` (RFC 7662, HTTP Basic with ``client_id``/``client_secret``): ``issue_opaque`` makes a
  token it answers for, ``revoke`` ends it, any other token is ``{"active": false}``;
- ``{issuer}/token``: the client_credentials grant for the same client; it issues the tokens the clinical server
  takes (``service_tokens``);
- ``{base}/clinical/Patient/{id}``: the Patients of ``add_patient``, for a bearer of a ``/token`` token only
  (anyone with ``clinical_open``); ``{base}/clinical/.well-known/smart-configuration`` names this server.

Every request is counted in ``requests`` by route name (``openid-configuration``, ``smart-configuration``,
``jwks``, ``moved``, ``introspect``, ``token``, ``patient``, ``clinical-smart-configuration``).
``failures[name] = status`` makes a route answer that status; ``stall.add(name)`` makes it never answer (until
the server closes).

``mint`` makes a JWT access token, good by default and wrong in any way asked: ``alg="none"``, ``alg="HS256"``
(signed with the public key's PEM as an HMAC secret), ``exp``/``nbf``/``iat`` anywhere, wrong ``iss``/``aud``,
``kid`` of no published key, ``key`` of another key (made with ``new_key(publish=False)``), extra claims; ``None``
for a claim leaves it out. ``tamper`` changes a signed token's claims and keeps its signature.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.warnings import InsecureKeyLengthWarning

AUDIENCE = "http://bridge.test/fhir"
CLIENT_ID = "imaging-bridge"
CLIENT_SECRET = "bridge-secret: with & odd = characters"


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: "The usual value" for a ``mint`` argument (``None`` leaves the claim out).
DEFAULT: Any = _Default()

_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


@dataclass
class SigningKey:
    kid: str
    #: The algorithm it signs with: RS256, PS256, RS384 … for RSA, ES256/ES384/ES512 for EC.
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK (with ``kid``, ``use`` and ``alg``)."""
        algorithm = jwt.algorithms.RSAAlgorithm if self.alg[:2] in ("RS", "PS") else jwt.algorithms.ECAlgorithm
        jwk: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def new_key(alg: str = "RS256", kid: str | None = None, *, bits: int = 2048) -> SigningKey:
    """A key made now: RSA (``bits``) for RS*/PS*, EC on the algorithm's curve for ES*."""
    if alg[:2] in ("RS", "PS"):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        private = ec.generate_private_key(_CURVES[alg]())
    return SigningKey(kid or f"{alg.lower()}-{secrets.token_hex(4)}", alg, private)


@functools.cache
def _stock_keys() -> tuple[SigningKey, SigningKey]:
    # Made once per test run (an RSA key takes a while): each server starts publishing these two.
    return new_key("RS256", "rsa-1"), new_key("ES256", "ec-1")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def tamper(token: str, **claims: Any) -> str:
    """The token with its payload's claims changed (None removes one), its header and signature kept."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for name, value in claims.items():
        if value is None:
            decoded.pop(name, None)
        else:
            decoded[name] = value
    return f"{header}.{_json_segment(decoded)}.{signature}"


@dataclass
class AuthServer:
    audience: str = AUDIENCE
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    #: Seconds the client_credentials tokens of ``/token`` last.
    service_token_lifetime: int = 300
    serve_openid: bool = True
    serve_smart: bool = True
    #: Fields added to (or replacing those of) both metadata documents.
    metadata_extra: dict[str, Any] = field(default_factory=dict)
    #: Published keys by kid, in order.
    keys: dict[str, SigningKey] = field(default_factory=dict)
    #: JWKs served after those of ``keys``, as they are (a symmetric key, a private one, a broken one …).
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    #: Route name -> the HTTP status it answers with instead.
    failures: dict[str, int] = field(default_factory=dict)
    #: Route names that never answer.
    stall: set[str] = field(default_factory=set)
    #: Opaque token -> the fields of its introspection answer (``active`` among them).
    opaque: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Patient id -> the Patient resource served.
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: client_credentials access tokens issued -> when each expires.
    service_tokens: dict[str, float] = field(default_factory=dict)
    #: The form of each token request (``grant_type``, ``scope``).
    token_requests: list[dict[str, str]] = field(default_factory=list)
    #: The clinical server serves Patients to anyone, without a token.
    clinical_open: bool = False
    #: The time tokens are minted, issued and expire by (a test moving the bridge's clock moves this one too).
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.rsa, self.ec = _stock_keys()
        for key in (self.rsa, self.ec):
            self.publish(key)
        self._server: TestServer | None = None
        self._release = asyncio.Event()
        self.base = ""

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> AuthServer:
        self._server = TestServer(self._app(), host="127.0.0.1")
        await self._server.start_server()
        self.base = str(self._server.make_url("")).rstrip("/")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        if self._server is not None:
            await self._server.close()

    @property
    def issuer(self) -> str:
        return f"{self.base}/auth"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def introspection_url(self) -> str:
        return f"{self.issuer}/introspect"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def clinical_url(self) -> str:
        return f"{self.base}/clinical"

    def environ(self, **overrides: str) -> dict[str, str]:
        """Settings for a bridge that trusts this server (``BRIDGE_`` + the upper-cased name for each override)."""
        environ = {
            "BRIDGE_AUTH": "smart",
            "BRIDGE_AUTH_ISSUER": self.issuer,
            "BRIDGE_AUTH_AUDIENCE": self.audience,
            "BRIDGE_AUTH_CLIENT_ID": self.client_id,
            "BRIDGE_AUTH_CLIENT_SECRET": self.client_secret,
        }
        environ.update({f"BRIDGE_{name.upper()}": value for name, value in overrides.items()})
        return environ

    # -- keys --------------------------------------------------------------------------------------------------

    def publish(self, key: SigningKey) -> SigningKey:
        self.keys[key.kid] = key
        return key

    def withdraw(self, kid: str) -> None:
        del self.keys[kid]

    def rotate(self, alg: str = "RS256") -> SigningKey:
        """A new key, published beside the others (withdraw the old one to finish a rotation)."""
        return self.publish(new_key(alg))

    # -- tokens ------------------------------------------------------------------------------------------------

    def mint(
        self,
        *,
        scope: str | None = "patient/ImagingStudy.rs",
        patient: str | None = "123",
        sub: str | None = "user-1",
        client_id: str | None = "viewer-app",
        lifetime: float = 300,
        exp: Any = DEFAULT,
        nbf: Any = None,
        iat: Any = DEFAULT,
        aud: Any = DEFAULT,
        iss: Any = DEFAULT,
        key: SigningKey | None = None,
        kid: Any = DEFAULT,
        alg: str | None = None,
        header: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A JWT access token: signed by ``key`` (the RSA key by default) with ``alg`` (the key's), naming ``kid``
        (the key's); claims as given, ``exp`` ``lifetime`` seconds from now, ``iat`` now, ``aud`` the audience,
        ``iss`` the issuer. ``None`` leaves a claim (or the ``kid``) out."""
        key = key or self.rsa
        now = int(self.clock())
        payload = {
            "iss": self.issuer if iss is DEFAULT else iss,
            "aud": self.audience if aud is DEFAULT else aud,
            "sub": sub,
            "client_id": client_id,
            "scope": scope,
            "patient": patient,
            "iat": now if iat is DEFAULT else iat,
            "nbf": nbf,
            "exp": now + int(lifetime) if exp is DEFAULT else exp,
            "jti": secrets.token_hex(8),
            **claims,
        }
        payload = {name: value for name, value in payload.items() if value is not None}
        headers = {"kid": key.kid if kid is DEFAULT else kid, **(header or {})}
        headers = {name: value for name, value in headers.items() if value is not None}
        alg = alg or key.alg
        if alg.upper().startswith("HS"):
            return _hmac_signed(headers, payload, alg, key.public_pem())
        if alg == "none":
            return jwt.encode(payload, None, algorithm="none", headers=headers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # a weak key, made on purpose
            return jwt.encode(payload, key.private, algorithm=alg, headers=headers)

    def issue_opaque(
        self,
        *,
        active: bool = True,
        scope: str | None = "patient/ImagingStudy.rs",
        patient: str | None = "123",
        client_id: str | None = "viewer-app",
        sub: str | None = "user-1",
        lifetime: float = 300,
        exp: Any = DEFAULT,
        aud: Any = DEFAULT,
        iss: Any = DEFAULT,
        **fields: Any,
    ) -> str:
        """An opaque token, and the introspection answer it gets (``None`` leaves a field out)."""
        token = secrets.token_urlsafe(32)
        answer = {
            "active": active,
            "scope": scope,
            "patient": patient,
            "client_id": client_id,
            "sub": sub,
            "exp": int(self.clock() + lifetime) if exp is DEFAULT else exp,
            "aud": self.audience if aud is DEFAULT else aud,
            "iss": self.issuer if iss is DEFAULT else iss,
            "token_type": "Bearer",
            **fields,
        }
        self.opaque[token] = {name: value for name, value in answer.items() if value is not None}
        return token

    def revoke(self, token: str) -> None:
        self.opaque[token] = {"active": False}

    def add_patient(self, patient_id: str, identifiers: list[tuple[str | None, str]], **fields: Any) -> dict[str, Any]:
        """A Patient of the clinical FHIR server, with these (system, value) identifiers."""
        resource = {
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [
                {"value": value} if system is None else {"system": system, "value": value}
                for system, value in identifiers
            ],
            **fields,
        }
        self.patients[patient_id] = resource
        return resource

    # -- HTTP --------------------------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        routes = [
            ("GET", "/auth/.well-known/openid-configuration", "openid-configuration", self._openid),
            ("GET", "/auth/.well-known/smart-configuration", "smart-configuration", self._smart),
            ("GET", "/auth/jwks", "jwks", self._jwks),
            ("GET", "/auth/moved/{path:.*}", "moved", self._moved),
            ("POST", "/auth/introspect", "introspect", self._introspect),
            ("POST", "/auth/token", "token", self._token),
            ("GET", "/clinical/.well-known/smart-configuration", "clinical-smart-configuration", self._smart),
            ("GET", "/clinical/Patient/{id}", "patient", self._patient),
        ]
        for method, path, name, handler in routes:
            app.router.add_route(method, path, self._counted(name, handler))
        return app

    def _counted(self, name: str, handler: Any) -> Any:
        async def counted(request: web.Request) -> web.StreamResponse:
            self.requests[name] += 1
            if name in self.stall:
                await self._release.wait()
            if name in self.failures:
                return web.json_response({"error": "server_error"}, status=self.failures[name])
            response: web.StreamResponse = await handler(request)
            return response

        return counted

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": self.token_url,
            "introspection_endpoint": self.introspection_url,
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "scopes_supported": ["openid", "fhirUser", "launch/patient", "patient/*.rs", "system/*.rs"],
            **self.metadata_extra,
        }

    async def _openid(self, request: web.Request) -> web.Response:
        if not self.serve_openid:
            return web.json_response({"error": "not_found"}, status=404)
        return web.json_response(self.metadata())

    async def _smart(self, request: web.Request) -> web.Response:
        if not self.serve_smart:
            return web.json_response({"error": "not_found"}, status=404)
        capabilities = ["launch-standalone", "client-public", "client-confidential-symmetric", "permission-v2"]
        return web.json_response({"capabilities": capabilities, **self.metadata()})

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [key.public_jwk() for key in self.keys.values()] + self.extra_jwks})

    async def _moved(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/auth/{request.match_info['path']}")

    async def _introspect(self, request: web.Request) -> web.Response:
        if not self._client_authenticated(request):
            return web.json_response({"error": "invalid_client"}, status=401)
        form = await request.post()
        token = form.get("token")
        answer = self.opaque.get(token) if isinstance(token, str) else None
        return web.json_response(answer if answer is not None else {"active": False})

    async def _token(self, request: web.Request) -> web.Response:
        if not self._client_authenticated(request):
            return web.json_response({"error": "invalid_client"}, status=401)
        form = {name: str(value) for name, value in (await request.post()).items()}
        self.token_requests.append(form)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = secrets.token_urlsafe(32)
        self.service_tokens[token] = self.clock() + self.service_token_lifetime
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": self.service_token_lifetime}
        if "scope" in form:
            answer["scope"] = form["scope"]
        return web.json_response(answer)

    async def _patient(self, request: web.Request) -> web.Response:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not self.clinical_open and self.service_tokens.get(bearer, 0.0) <= self.clock():
            return web.json_response(_outcome("login", "no valid token"), status=401)
        resource = self.patients.get(request.match_info["id"])
        if resource is None:
            return web.json_response(_outcome("not-found", "no such Patient"), status=404)
        return web.json_response(resource, content_type="application/fhir+json")

    def _client_authenticated(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(credentials).decode().partition(":")
        except ValueError:
            return False
        # RFC 6749 2.3.1: the id and the secret are form-encoded before they are joined.
        return (unquote_plus(user), unquote_plus(password)) == (self.client_id, self.client_secret)


def _hmac_signed(header: Mapping[str, Any], payload: Mapping[str, Any], alg: str, secret: bytes) -> str:
    """A JWS signed with HMAC: built by hand, as PyJWT rightly refuses a public key as an HMAC secret."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg.upper()]
    signing_input = f"{_json_segment({**header, 'alg': alg, 'typ': 'JWT'})}.{_json_segment(payload)}"
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
