"""Bearer token verification (bridge.auth.tokens) against a real authorization server double with real keys:
good RS256/ES256/PS256/ES384 tokens accepted; every way of being wrong refused with InvalidToken saying which;
keys that rotate; the JWKS refetch for an unknown kid rate-limited and shared; introspection answers cached;
the digest cache; and the token never in a message or a log line."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest

from bridge.auth.claims import claims_from
from bridge.auth.grant import Claims
from bridge.auth.tokens import BearerVerifier, InvalidToken, TokenCache, digest, token_verifier
from bridge.errors import AuthServerUnavailable, ConfigError
from bridge.settings import load_settings
from tests.support.authserver import AuthServer, new_key, tamper
from tests.support.waiting import eventually


class Clock:
    """Wall-clock time that a test can move forward (PyJWT's own checks keep the real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_verifier(auth: AuthServer, clock: Clock, timeout: float = 5.0, **settings: str) -> BearerVerifier:
    auth.clock = clock  # tokens minted on the bridge's clock
    verifier = token_verifier(load_settings(auth.environ(**settings)), clock=clock, timeout=timeout)
    assert verifier is not None
    return verifier


@pytest.fixture
async def verifier(auth_server: AuthServer, clock: Clock) -> AsyncIterator[BearerVerifier]:
    """A verifier finding its keys through the issuer's metadata, with introspection too."""
    verifier = make_verifier(auth_server, clock, auth_introspection_url=auth_server.introspection_url)
    yield verifier
    await verifier.close()


async def refused(verifier: BearerVerifier, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    error = caught.value
    assert error.status == 401
    assert error.headers["WWW-Authenticate"] == 'Bearer realm="imaging", error="invalid_token"'
    assert not token or token not in error.diagnostics
    return error


# -- good tokens ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "ES384", "RS384"])
async def test_a_good_token_is_accepted_with_its_claims(auth_server: AuthServer, verifier: BearerVerifier, alg: str):
    key = {"RS256": auth_server.rsa, "ES256": auth_server.ec}.get(alg) or auth_server.publish(new_key(alg))
    token = auth_server.mint(key=key, scope="patient/ImagingStudy.rs launch/patient", patient="p-1", sub="u-7")
    claims = await verifier.verify(token)
    assert claims.client_id == "viewer-app"
    assert claims.subject == "u-7"
    assert claims.scope == "patient/ImagingStudy.rs launch/patient"
    assert claims.patient == "p-1"
    assert claims.issuer == auth_server.issuer
    assert claims.expires_at == jwt.decode(token, options={"verify_signature": False})["exp"]


async def test_clock_skew_within_the_leeway_is_accepted(auth_server: AuthServer, verifier: BearerVerifier):
    now = int(time.time())
    for token in (
        auth_server.mint(exp=now - 10),
        auth_server.mint(nbf=now + 10),
        auth_server.mint(iat=now + 10),
    ):
        await verifier.verify(token)


async def test_audience_and_issuer_match_with_or_without_a_trailing_slash(
    auth_server: AuthServer, verifier: BearerVerifier
):
    await verifier.verify(auth_server.mint(aud=[auth_server.audience + "/", "https://other.example/fhir"]))
    await verifier.verify(auth_server.mint(iss=auth_server.issuer + "/"))


async def test_a_token_without_kid_is_checked_with_the_one_key_of_its_type(
    auth_server: AuthServer, verifier: BearerVerifier, clock: Clock
):
    await verifier.verify(auth_server.mint(kid=None))  # one RSA key published
    auth_server.rotate("RS256")
    clock.advance(601)  # the set is read again
    error = await refused(verifier, auth_server.mint(kid=None, lifetime=299))
    assert "names no key (kid)" in error.diagnostics


# -- every way of being wrong --------------------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


def _signed_list_payload(auth: AuthServer) -> str:
    return jwt.api_jws.PyJWS().encode(b"[1]", auth.rsa.private, algorithm="RS256", headers={"kid": auth.rsa.kid})


WRONG: list[tuple[str, Callable[[AuthServer], str], str]] = [
    ("alg none", lambda a: a.mint(alg="none"), "not signed (alg none)"),
    ("alg None, as a header may spell it", lambda a: tamper_header(a.mint(alg="none"), alg="None"), "alg none"),
    ("HS256 with the RSA public key as secret", lambda a: a.mint(alg="HS256"), "shared secret (HS256)"),
    ("HS512 with the EC public key as secret", lambda a: a.mint(alg="HS512", key=a.ec), "shared secret"),
    ("an algorithm not accepted", lambda a: tamper_header(a.mint(), alg="EdDSA"), "algorithm (EdDSA) is not accepted"),
    ("no alg", lambda a: tamper_header(a.mint(), alg=None), "no algorithm"),
    ("ES256 naming the RSA key", lambda a: a.mint(key=a.ec, kid=a.rsa.kid), "(ES256) does not fit the key"),
    ("RS256 naming the EC key", lambda a: a.mint(key=a.rsa, kid=a.ec.kid), "(RS256) does not fit the key"),
    ("PS256 with a key declared RS256", lambda a: a.mint(alg="PS256"), "(PS256) does not fit the key"),
    ("expired", lambda a: a.mint(exp=_now() - 120), "has expired"),
    ("no exp", lambda a: a.mint(exp=None), "has no exp claim"),
    ("exp not a number", lambda a: a.mint(exp="tomorrow"), "exp claim is not a number"),
    ("nbf in the future", lambda a: a.mint(nbf=_now() + 120), "not valid yet (nbf)"),
    ("iat in the future", lambda a: a.mint(iat=_now() + 120), "issued in the future (iat)"),
    ("another issuer", lambda a: a.mint(iss="https://evil.example/auth"), "not issued by http://127.0.0.1"),
    ("no issuer", lambda a: a.mint(iss=None), "has no iss claim"),
    ("another audience", lambda a: a.mint(aud="https://other.example/fhir"), "not for this server"),
    ("the audience's prefix", lambda a: a.mint(aud="http://bridge.test"), "not for this server"),
    ("no audience", lambda a: a.mint(aud=None), "has no aud claim"),
    ("an unknown kid", lambda a: a.mint(kid="no-such-key"), "unknown kid"),
    ("an unpublished key", lambda a: a.mint(key=new_key("ES256")), "unknown kid"),
    ("another key under a published kid", lambda a: a.mint(key=new_key("ES256"), kid="ec-1"), "signature does not"),
    ("a tampered patient", lambda a: tamper(a.mint(patient="123"), patient="456"), "signature does not verify"),
    ("a tampered scope", lambda a: tamper(a.mint(scope="patient/Observation.rs"), scope="user/*.rs"), "signature"),
    ("a signature cut off", lambda a: a.mint().rsplit(".", 1)[0] + ".", "signature does not verify"),
    ("a payload that is no object", _signed_list_payload, "malformed"),
    ("critical header parameters", lambda a: a.mint(header={"crit": ["exp"]}), "critical header parameters"),
    ("a key-bound token", lambda a: a.mint(cnf={"jkt": "abc"}), "bound to a key (cnf)"),
    ("a patient that is not a string", lambda a: a.mint(patient=123), "patient claim is not a string"),
    ("a patient that is not an id", lambda a: a.mint(patient="../Patient/9"), "not a FHIR Patient id"),
    ("a scope that is not a string", lambda a: a.mint(scope=["patient/*.rs"]), "scope claim is not a string"),
    ("oversized (8 KiB)", lambda a: a.mint(filler="x" * 8192), "longer than 8192 characters"),
    ("empty", lambda a: "", "malformed"),
    ("not bearer characters", lambda a: "abc def", "malformed"),
    ("one part", lambda a: "abcdef", "not a JWT"),
    ("a header that is no JSON", lambda a: "Zm9v.Zm9v.Zm9v", "malformed: its header"),
    ("four parts", lambda a: a.mint() + ".Zm9v", "not a JWT"),
]


def tamper_header(token: str, **fields: Any) -> str:
    """The token with its header's fields changed (None removes one), its payload and signature kept."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    for name, value in fields.items():
        if value is None:
            decoded.pop(name, None)
        else:
            decoded[name] = value
    encoded = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    return f"{encoded}.{payload}.{signature}"


@pytest.fixture
async def jwt_only(auth_server: AuthServer, clock: Clock) -> AsyncIterator[BearerVerifier]:
    """A verifier without introspection: a token that is no JWT is refused, not introspected."""
    verifier = make_verifier(auth_server, clock)
    yield verifier
    await verifier.close()


@pytest.mark.parametrize(("why", "make", "message"), WRONG, ids=[row[0] for row in WRONG])
async def test_a_wrong_token_is_refused_saying_why(
    auth_server: AuthServer, jwt_only: BearerVerifier, why: str, make: Callable[[AuthServer], str], message: str
):
    token = make(auth_server)
    error = await refused(jwt_only, token)
    assert message in error.diagnostics
    assert len(jwt_only._cache) == 0  # nothing refused is remembered as verified


async def test_a_weak_rsa_key_is_not_used(auth_server: AuthServer, verifier: BearerVerifier):
    weak = auth_server.publish(new_key("RS256", "weak", bits=1024))
    error = await refused(verifier, auth_server.mint(key=weak))
    assert "unknown kid" in error.diagnostics


async def test_symmetric_private_and_broken_keys_in_the_set_are_left_out(
    auth_server: AuthServer, verifier: BearerVerifier
):
    leaked = new_key("RS256", "leaked")
    private_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(leaked.private, as_dict=True)
    del private_jwk["key_ops"]  # ["sign"] would leave it out anyway: the private part alone must
    auth_server.extra_jwks += [
        {**private_jwk, "kid": "leaked"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "oct"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {**auth_server.ec.public_jwk(), "kid": "encryption", "use": "enc"},
        "not a key",
    ]
    await verifier.verify(auth_server.mint())  # the good keys of the set are used
    assert "unknown kid" in (await refused(verifier, auth_server.mint(key=leaked))).diagnostics
    assert "shared secret" in (await refused(verifier, auth_server.mint(alg="HS256", kid="oct"))).diagnostics
    assert "unknown kid" in (await refused(verifier, auth_server.mint(kid="broken"))).diagnostics
    encryption_key_token = auth_server.mint(key=auth_server.ec, kid="encryption")
    assert "unknown kid" in (await refused(verifier, encryption_key_token)).diagnostics


# -- key sets: discovery, rotation, refetch ------------------------------------------------------------------------


async def test_the_key_set_is_found_through_openid_configuration(auth_server: AuthServer, verifier: BearerVerifier):
    auth_server.serve_smart = False
    await verifier.verify(auth_server.mint())
    assert auth_server.requests["openid-configuration"] == 1
    assert auth_server.requests["jwks"] == 1


async def test_without_openid_configuration_smart_configuration_is_read(
    auth_server: AuthServer, verifier: BearerVerifier
):
    auth_server.serve_openid = False
    await verifier.verify(auth_server.mint())
    assert auth_server.requests["smart-configuration"] == 1
    assert auth_server.requests["jwks"] == 1


async def test_a_jwks_url_is_used_without_metadata(auth_server: AuthServer, clock: Clock):
    environ = auth_server.environ(auth_jwks_url=auth_server.jwks_url)
    del environ["BRIDGE_AUTH_ISSUER"]  # tokens' iss is then not checked
    verifier = token_verifier(load_settings(environ), clock=clock)
    assert verifier is not None
    try:
        await verifier.verify(auth_server.mint(iss="https://anyone.example"))
    finally:
        await verifier.close()
    assert auth_server.requests["openid-configuration"] == auth_server.requests["smart-configuration"] == 0


async def test_a_key_set_that_moved_is_followed(auth_server: AuthServer, clock: Clock):
    verifier = make_verifier(auth_server, clock, auth_jwks_url=f"{auth_server.issuer}/moved/jwks")
    try:
        await verifier.verify(auth_server.mint())
    finally:
        await verifier.close()
    assert auth_server.requests["moved"] == auth_server.requests["jwks"] == 1


async def test_metadata_naming_another_issuer_is_refused(auth_server: AuthServer, verifier: BearerVerifier):
    auth_server.metadata_extra["issuer"] = "https://evil.example"
    with pytest.raises(AuthServerUnavailable):
        await verifier.verify(auth_server.mint())
    assert auth_server.requests["jwks"] == 0


async def test_a_rotated_key_is_picked_up_and_a_withdrawn_one_dropped(
    auth_server: AuthServer, verifier: BearerVerifier, clock: Clock
):
    await verifier.verify(auth_server.mint())
    clock.advance(31)  # the set was read just now: an unknown kid refetches it only after the interval
    new = auth_server.rotate("ES256")
    await verifier.verify(auth_server.mint(key=new))  # unknown kid: the set is read again, and has it
    assert auth_server.requests["jwks"] == 2
    auth_server.withdraw(auth_server.rsa.kid)
    await verifier.verify(auth_server.mint(lifetime=299))  # the set held is still a valid set
    clock.advance(601)  # the set's time is up: read again, without the old key
    error = await refused(verifier, auth_server.mint(lifetime=298))
    assert "unknown kid" in error.diagnostics
    assert auth_server.requests["jwks"] == 3


async def test_unknown_kids_refetch_the_set_once_per_interval_however_many(
    auth_server: AuthServer, verifier: BearerVerifier, clock: Clock
):
    await verifier.verify(auth_server.mint())
    assert auth_server.requests["jwks"] == 1
    await refused(verifier, auth_server.mint(kid="forged-at-once"))
    assert auth_server.requests["jwks"] == 1  # the set was read less than the interval ago
    clock.advance(31)
    unknown = [auth_server.mint(kid=f"forged-{n}") for n in range(20)]
    results = await asyncio.gather(*(verifier.verify(token) for token in unknown), return_exceptions=True)
    assert all(isinstance(result, InvalidToken) for result in results)
    assert auth_server.requests["jwks"] == 2  # one refetch, shared by all twenty
    await refused(verifier, auth_server.mint(kid="forged-again"))
    assert auth_server.requests["jwks"] == 2  # within the interval: no refetch
    clock.advance(29)
    await refused(verifier, auth_server.mint(kid="forged-still"))
    assert auth_server.requests["jwks"] == 2
    clock.advance(2)
    await refused(verifier, auth_server.mint(kid="forged-later"))
    assert auth_server.requests["jwks"] == 3
    assert verifier.jwks_fetches == 3


async def test_the_smart_configuration_adds_its_capabilities_and_may_fail(
    auth_server: AuthServer, verifier: BearerVerifier, clock: Clock
):
    assert verifier.issuer is not None
    metadata = await verifier.issuer.get()
    assert metadata["jwks_uri"] == auth_server.jwks_url
    assert "launch-standalone" in metadata["capabilities"]  # only the SMART document says
    auth_server.stall.add("smart-configuration")
    fresh = make_verifier(auth_server, clock, timeout=0.2)
    try:
        await fresh.verify(auth_server.mint())  # the OpenID document suffices
    finally:
        await fresh.close()


async def test_concurrent_first_requests_read_the_metadata_and_keys_once(
    auth_server: AuthServer, verifier: BearerVerifier
):
    tokens = [auth_server.mint(sub=f"user-{n}") for n in range(10)]
    await asyncio.gather(*(verifier.verify(token) for token in tokens))
    assert auth_server.requests["openid-configuration"] == 1
    assert auth_server.requests["jwks"] == 1


# -- the authorization server failing ------------------------------------------------------------------------------


async def test_a_failing_key_set_is_503_and_not_asked_again_at_once(
    auth_server: AuthServer, verifier: BearerVerifier, clock: Clock
):
    auth_server.failures["jwks"] = 500
    for _ in range(3):
        with pytest.raises(AuthServerUnavailable) as caught:
            await verifier.verify(auth_server.mint())
        assert caught.value.status == 503
        assert caught.value.retry_after is not None
        assert "key set is unavailable" in caught.value.diagnostics
    assert auth_server.requests["jwks"] == 1  # backed off
    del auth_server.failures["jwks"]
    clock.advance(6)
    await verifier.verify(auth_server.mint())


async def test_a_key_set_held_is_used_while_its_server_fails(
    auth_server: AuthServer, verifier: BearerVerifier, clock: Clock
):
    await verifier.verify(auth_server.mint())
    auth_server.failures["jwks"] = 503
    clock.advance(601)
    await verifier.verify(auth_server.mint(lifetime=299))
    assert auth_server.requests["jwks"] == 2


async def test_an_authorization_server_that_does_not_answer_is_503_within_the_timeout(
    auth_server: AuthServer, clock: Clock
):
    auth_server.stall.add("openid-configuration")
    verifier = make_verifier(auth_server, clock, timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(AuthServerUnavailable):
            await verifier.verify(auth_server.mint())
        assert time.monotonic() - started < 2
    finally:
        await verifier.close()


async def test_an_authorization_server_that_is_down_is_503(auth_server: AuthServer, clock: Clock):
    verifier = make_verifier(auth_server, clock)
    await auth_server.__aexit__()
    try:
        with pytest.raises(AuthServerUnavailable) as caught:
            await verifier.verify(auth_server.mint())
        assert "127.0.0.1" not in caught.value.diagnostics  # the address is for the log
    finally:
        await verifier.close()


# -- introspection -------------------------------------------------------------------------------------------------


async def test_an_active_opaque_token_gives_its_introspected_claims(auth_server: AuthServer, verifier: BearerVerifier):
    token = auth_server.issue_opaque(scope="patient/ImagingStudy.read", patient="p-9", client_id="app-2")
    claims = await verifier.verify(token)
    assert (claims.client_id, claims.subject, claims.scope, claims.patient) == (
        "app-2",
        "user-1",
        "patient/ImagingStudy.read",
        "p-9",
    )
    assert auth_server.requests["introspect"] == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"active": False}, "not active"),
        ({"active": "true"}, "not active"),
        ({"exp": 1_000_000}, "has expired"),
        ({"nbf": 4_000_000_000}, "not valid yet"),
        ({"aud": "https://other.example/fhir"}, "not for this server"),
        ({"iss": "https://evil.example"}, "not issued by"),
        ({"token_type": "refresh_token"}, "not a bearer access token"),
        ({"cnf": {"x5t#S256": "abc"}}, "bound to a key"),
        ({"patient": 42}, "patient claim is not a string"),
    ],
)
async def test_an_introspected_token_that_is_wrong_is_refused(
    auth_server: AuthServer, verifier: BearerVerifier, answer: dict[str, Any], message: str
):
    token = auth_server.issue_opaque(**{name: value for name, value in answer.items() if name != "active"})
    if "active" in answer:
        auth_server.opaque[token]["active"] = answer["active"]
    error = await refused(verifier, token)
    assert message in error.diagnostics


async def test_an_unknown_opaque_token_is_inactive(auth_server: AuthServer, verifier: BearerVerifier):
    error = await refused(verifier, "an-opaque-token-nobody-issued")
    assert "not active" in error.diagnostics


async def test_an_opaque_token_is_refused_without_introspection(auth_server: AuthServer, jwt_only: BearerVerifier):
    error = await refused(jwt_only, auth_server.issue_opaque())
    assert "not a JWT" in error.diagnostics
    assert auth_server.requests["introspect"] == 0


async def test_with_introspection_alone_a_jwt_is_introspected(auth_server: AuthServer, clock: Clock):
    environ = auth_server.environ(auth_introspection_url=auth_server.introspection_url)
    del environ["BRIDGE_AUTH_ISSUER"]
    verifier = token_verifier(load_settings(environ), clock=clock)
    assert verifier is not None
    try:
        await refused(verifier, auth_server.mint())  # this server knows only its opaque tokens
    finally:
        await verifier.close()
    assert auth_server.requests["introspect"] == 1
    assert auth_server.requests["jwks"] == 0


async def test_an_active_answer_is_cached_until_exp(auth_server: AuthServer, verifier: BearerVerifier, clock: Clock):
    token = auth_server.issue_opaque(lifetime=60)
    await verifier.verify(token)
    await verifier.verify(token)
    assert auth_server.requests["introspect"] == 1
    auth_server.revoke(token)
    await verifier.verify(token)  # cached: revocation shows once the answer's time is up
    clock.advance(61)
    await refused(verifier, token)
    assert auth_server.requests["introspect"] == 2


async def test_an_active_answer_is_relied_on_for_five_minutes_at_most(
    auth_server: AuthServer, verifier: BearerVerifier, clock: Clock
):
    token = auth_server.issue_opaque(lifetime=3600)
    await verifier.verify(token)
    auth_server.revoke(token)
    clock.advance(299)
    await verifier.verify(token)
    clock.advance(2)
    await refused(verifier, token)


async def test_a_refusal_is_remembered_briefly(auth_server: AuthServer, verifier: BearerVerifier, clock: Clock):
    for _ in range(5):
        await refused(verifier, "never-issued")
    assert auth_server.requests["introspect"] == 1
    clock.advance(11)
    await refused(verifier, "never-issued")
    assert auth_server.requests["introspect"] == 2


async def test_concurrent_requests_with_one_new_token_introspect_it_once(
    auth_server: AuthServer, verifier: BearerVerifier
):
    token = auth_server.issue_opaque()
    await asyncio.gather(*(verifier.verify(token) for _ in range(10)))
    assert auth_server.requests["introspect"] == 1


async def test_introspection_refusing_the_bridge_is_503_and_logged(
    auth_server: AuthServer, clock: Clock, caplog: pytest.LogCaptureFixture
):
    verifier = make_verifier(
        auth_server, clock, auth_introspection_url=auth_server.introspection_url, auth_client_secret="wrong"
    )
    try:
        with pytest.raises(AuthServerUnavailable):
            await verifier.verify(auth_server.issue_opaque())
    finally:
        await verifier.close()
    assert any("BRIDGE_AUTH_CLIENT_ID" in record.getMessage() for record in caplog.records)


async def test_a_failing_introspection_endpoint_is_503_and_not_cached(
    auth_server: AuthServer, verifier: BearerVerifier
):
    token = auth_server.issue_opaque()
    auth_server.failures["introspect"] = 502
    with pytest.raises(AuthServerUnavailable):
        await verifier.verify(token)
    del auth_server.failures["introspect"]
    await verifier.verify(token)


# -- the digest cache ----------------------------------------------------------------------------------------------


async def test_a_verified_token_is_answered_from_the_cache_until_exp(
    auth_server: AuthServer, verifier: BearerVerifier, clock: Clock
):
    token = auth_server.mint(lifetime=60)
    first = await verifier.verify(token)
    requests = sum(auth_server.requests.values())
    assert verifier.signature_checks == 1
    assert await verifier.verify(token) == first
    assert verifier.signature_checks == 1  # no signature checked again
    assert sum(auth_server.requests.values()) == requests  # nor anything asked
    assert verifier.cache_hits == 1
    clock.advance(61)
    await verifier.verify(token)  # within the leeway: verified again, not cached (past its exp)
    assert verifier.signature_checks == 2
    clock.advance(30)
    assert "expired" in (await refused(verifier, token)).diagnostics


def test_the_cache_is_bounded_and_forgets_the_least_recently_used():
    now = [1000.0]
    cache = TokenCache(2, clock=lambda: now[0])
    claims = [Claims(f"c{n}", None, "", None, None) for n in range(3)]
    cache.put(b"a", claims[0], 2000)
    cache.put(b"b", claims[1], 2000)
    assert cache.get(b"a") == claims[0]  # a used: b is now the least recent
    cache.put(b"c", claims[2], 2000)
    assert (cache.get(b"a"), cache.get(b"b"), cache.get(b"c")) == (claims[0], None, claims[2])
    cache.put(b"d", claims[0], 999)  # already expired: not kept
    assert cache.get(b"d") is None
    now[0] = 2000
    assert cache.get(b"a") is None


def test_the_cache_keys_by_digest_alone():
    assert digest("token") == digest("token") != digest("token2")
    assert len(digest("x" * 8000)) == 32


# -- claims --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"client_id": "a", "azp": "b"}, {"client_id": "a"}),
        ({"azp": "b"}, {"client_id": "b"}),
        ({"scope": "patient/*.rs openid"}, {"scope": "patient/*.rs openid"}),
        ({"scp": ["patient/*.rs", "openid"]}, {"scope": "patient/*.rs openid"}),
        ({"scp": "patient/*.rs openid"}, {"scope": "patient/*.rs openid"}),
        ({}, {"scope": "", "client_id": None, "subject": None, "patient": None, "expires_at": None}),
        ({"patient": ""}, {"patient": None}),
        ({"sub": "s", "exp": 1700000000, "iss": "i"}, {"subject": "s", "expires_at": 1700000000.0, "issuer": "i"}),
    ],
)
def test_claims_are_mapped(payload: dict[str, Any], expected: dict[str, Any]):
    claims = claims_from(payload)
    assert {name: getattr(claims, name) for name in expected} == expected


def test_the_patient_claim_is_configurable():
    assert claims_from({"patient": "1", "pid": "2"}, patient_claim="pid").patient == "2"


@pytest.mark.parametrize(
    "payload",
    [{"client_id": 3}, {"sub": ["x"]}, {"scp": [1]}, {"exp": "soon"}, {"exp": True}, {"patient": {"id": "1"}}],
)
def test_claims_of_the_wrong_type_make_the_token_invalid(payload: dict[str, Any]):
    with pytest.raises(InvalidToken):
        claims_from(payload)


# -- secrecy -------------------------------------------------------------------------------------------------------


async def test_the_token_is_never_in_a_message_or_a_log_line(
    auth_server: AuthServer, verifier: BearerVerifier, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    secret_patient = "patient-SECRETVALUE"
    tokens = [make(auth_server) for _, make, _ in WRONG]
    tokens += [
        auth_server.mint(patient=secret_patient, aud="https://SECRETVALUE.example"),
        auth_server.mint(patient=secret_patient, iss="https://SECRETVALUE.example"),
        auth_server.mint(kid="SECRETVALUE"),
        auth_server.mint(patient=secret_patient),
        auth_server.issue_opaque(patient=secret_patient),
        "SECRETVALUE-opaque",
    ]
    messages = []
    for token in tokens:
        try:
            await verifier.verify(token)
        except InvalidToken as exc:
            messages.append(exc.diagnostics + str(exc) + repr(exc) + str(exc.headers))
    logged = [record.getMessage() for record in caplog.records]
    assert messages  # refusals were said
    assert logged  # and logged
    for token in tokens:
        for part in [part for part in (token, *token.split(".")) if len(part) > 8]:
            assert not any(part in text for text in messages + logged)
    assert not any("SECRETVALUE" in text for text in messages + logged)


# -- the factory ---------------------------------------------------------------------------------------------------


def test_no_verifier_without_auth():
    assert token_verifier(load_settings({"BRIDGE_AUTH": "none"})) is None
    assert token_verifier(load_settings({})) is None


def test_a_verifier_needs_an_audience(auth_server: AuthServer):
    settings = load_settings(auth_server.environ()).model_copy(update={"auth_audience": None})
    with pytest.raises(ConfigError):
        token_verifier(settings)


async def test_close_ends_the_session_and_running_fetches(auth_server: AuthServer, clock: Clock):
    auth_server.stall.add("jwks")
    verifier = make_verifier(auth_server, clock)
    attempt = asyncio.create_task(verifier.verify(auth_server.mint()))
    await eventually(lambda: auth_server.requests["jwks"], what="the key set asked for")
    await verifier.close()
    with pytest.raises((asyncio.CancelledError, AuthServerUnavailable)):
        await attempt
