"""A stand-in token verifier for tests of what a grant permits (not of token verification, which
tests/test_tokens.py covers with real keys): a token is a name for the claims it carries."""

from __future__ import annotations

from bridge.auth.grant import Claims
from bridge.auth.tokens import InvalidToken


class Verifier:
    """Tokens are names: ``patient:P1`` (a patient/ImagingStudy.rs token for Patient P1), or any key of
    ``extra``; any other token is invalid."""

    def __init__(self) -> None:
        self.extra: dict[str, Claims] = {}
        self.verified: list[str] = []

    async def verify(self, token: str) -> Claims:
        self.verified.append(token)
        if token in self.extra:
            return self.extra[token]
        kind, _, who = token.partition(":")
        if kind == "patient" and who:
            return Claims("app", "user-1", "launch/patient patient/ImagingStudy.rs openid", who, None)
        raise InvalidToken("the token's signature does not verify")

    async def close(self) -> None:
        pass


def claims(scope: str, patient: str | None = None, client: str = "app") -> Claims:
    return Claims(client, "sub-1", scope, patient, None)
