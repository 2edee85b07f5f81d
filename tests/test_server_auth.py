"""Authentication over the wire (docs/protocol.md section 4): public, API keys, JWT HS256/RS256.

What a subscriber is told (the confirmation's ``user_name`` and ``acl``) and what it then receives: only
the documents its ACL may read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import ServerFactory, order, recv_json, recv_until, refused, subscribe
from xia_broadcast.server.config import ApiKey
from xia_broadcast.server.native import NativeServer

SECRET = "hs-test-secret-long-enough-for-hs512-too-0123456789-0123456789-abcdef"
ACME = {"content": [{"obj": "Order/customer/acme", "act": "read"}]}
GLOBEX = {"content": [{"obj": "Order/customer/globex", "act": "read"}]}
CUSTOMERS = ["acme", "globex", "acme", "initech", "globex", "acme"]


def _pem_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    """(private PEM, public PEM) of a fresh 2048-bit RSA key."""
    return _pem_pair()


@pytest.fixture(scope="module")
def other_rsa_keys() -> tuple[str, str]:
    """An unrelated RSA key pair, for forged RS256 signatures."""
    return _pem_pair()


def make_token(key: str, alg: str = "HS256", *, sub: str = "alice", acl: Any = ACME, exp_in: float = 300,
               **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": sub, "exp": int(time.time() + exp_in), **claims}
    if acl is not None:
        payload["acl"] = acl
    return jwt.encode(payload, key, algorithm=alg)


def hs256_signed_with(key: bytes, payload: dict[str, Any]) -> str:
    """An HS256 token signed with arbitrary bytes as the HMAC key (PyJWT refuses to do this with a PEM)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def publish_mix(server: Any) -> list[tuple[str, str]]:
    """Publish Orders of several customers, then an acme sentinel; returns [(seq, customer)]."""
    out = []
    for i, customer in enumerate(CUSTOMERS, start=1):
        out.append((server.service.publish_nowait("Order", "I", order(i, customer=customer)), customer))
    return out


async def received_customers(ws: Any, last_id: str) -> list[tuple[str, str]]:
    return [(m["seq"], m["message"]["customer"]) for m in await recv_until(ws, last_id)]


# -- public -----------------------------------------------------------------------------------------------


async def test_public_server_subscriber_is_anonymous_and_reads_everything(server: NativeServer) -> None:
    ws, confirmation = await subscribe(server.url, {"Order": {}, "_header": {"X-Api-Key": "ignored"}})
    async with ws:
        published = publish_mix(server)
        got = await received_customers(ws, "O-000006")
    assert list(confirmation) == ["Order"]
    expected = {"data_scope": None, "catalog": None, "show_hidden": False, "start_seq": "", "acl": None,
                "user_name": "Anonymous"}
    assert {k: confirmation["Order"].get(k, "missing") for k in expected} == expected
    assert re.fullmatch(r"\d{13}-\d{10}", confirmation["Order"]["head_seq"])
    assert got == published


# -- API keys ---------------------------------------------------------------------------------------------


async def test_api_key_acl_is_applied_to_deliveries(make_server: ServerFactory) -> None:
    server = await make_server(api_keys={
        "k-alice": ApiKey("alice", ACME, app_name="shop"),
        "k-gina": ApiKey("gina", GLOBEX),
        "k-admin": ApiKey("admin", None),
    })
    alice, alice_conf = await subscribe(server.url, {"Order": {}, "_header": {"X-Api-Key": "k-alice",
                                                                              "X-App-Name": "shop"}})
    gina, gina_conf = await subscribe(server.url, {"Order": {}, "_header": {"X-Api-Key": "k-gina"}})
    admin, admin_conf = await subscribe(server.url, {"Order": {}, "_header": {"X-Api-Key": "k-admin"}})
    async with alice, gina, admin:
        published = publish_mix(server)
        sentinel = server.service.publish_nowait("Order", "I", order(99, customer="globex"))
        alice_got = await received_customers(alice, "O-000006")
        gina_got = await received_customers(gina, "O-000099")
        admin_got = await received_customers(admin, "O-000099")

    assert (alice_conf["Order"]["user_name"], alice_conf["Order"]["acl"]) == ("alice", ACME)
    assert (gina_conf["Order"]["user_name"], gina_conf["Order"]["acl"]) == ("gina", GLOBEX)
    assert (admin_conf["Order"]["user_name"], admin_conf["Order"]["acl"]) == ("admin", None)
    assert alice_got == [p for p in published if p[1] == "acme"]
    assert gina_got == [p for p in published if p[1] == "globex"] + [(sentinel, "globex")]
    assert admin_got == [*published, (sentinel, "globex")]


async def test_api_key_without_app_binding_ignores_x_app_name(make_server: ServerFactory) -> None:
    server = await make_server(api_keys={"k-any": ApiKey("any", None)})
    ws, confirmation = await subscribe(server.url, {"Order": {}, "_header": {"X-Api-Key": "k-any",
                                                                             "X-App-Name": "whatever"}})
    await ws.close()
    assert confirmation["Order"]["user_name"] == "any"


async def test_bearer_token_on_an_api_key_only_server_is_refused(make_server: ServerFactory) -> None:
    server = await make_server(api_keys={"k-any": ApiKey("any", None)})
    code, reason, _ = await refused(server.url, json.dumps(
        {"Order": {}, "_header": {"Authorization": f"Bearer {make_token(SECRET)}"}}))
    assert (code, reason) == (4401, "bearer tokens are not accepted by this server")


# -- JWT --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "upgrade"])
@pytest.mark.parametrize("alg", ["HS256", "RS256"])
async def test_jwt_subscriber_gets_its_acl(
        make_server: ServerFactory, rsa_keys: tuple[str, str], alg: str, where: str) -> None:
    private, public = rsa_keys
    server = await make_server(jwt_secret=SECRET, jwt_public_key=public)
    token = make_token(SECRET if alg == "HS256" else private, alg, sub="alice")
    request: dict[str, Any] = {"Order": {}}
    kwargs: dict[str, Any] = {}
    if where == "header":
        request["_header"] = {"Authorization": f"Bearer {token}"}
    else:
        kwargs["additional_headers"] = {"Authorization": f"Bearer {token}"}
    ws, confirmation = await subscribe(server.url, request, **kwargs)
    async with ws:
        published = publish_mix(server)
        got = await received_customers(ws, "O-000006")
    assert (confirmation["Order"]["user_name"], confirmation["Order"]["acl"]) == ("alice", ACME)
    assert got == [p for p in published if p[1] == "acme"]


async def test_jwt_acl_claim_name_is_configurable(make_server: ServerFactory) -> None:
    server = await make_server(jwt_secret=SECRET, jwt_acl_claim="perms")
    token = jwt.encode({"sub": "gina", "exp": int(time.time()) + 60, "perms": GLOBEX}, SECRET, algorithm="HS256")
    ws, confirmation = await subscribe(server.url, {"Order": {}, "_header": {"Authorization": f"Bearer {token}"}})
    async with ws:
        published = publish_mix(server)
        server.service.publish_nowait("Order", "I", order(99, customer="globex"))
        got = await received_customers(ws, "O-000099")
    assert confirmation["Order"]["acl"] == GLOBEX
    assert got[:-1] == [p for p in published if p[1] == "globex"]


async def test_an_acl_that_reads_nothing_of_a_class_is_subscribed_and_receives_nothing_of_it(
        make_server: ServerFactory) -> None:
    """The original never refused a subscription for its ACL: the ACL is checked on every delivery."""
    server = await make_server(jwt_secret=SECRET)
    token = make_token(SECRET, sub="bob", acl={"content": [{"obj": "Customer/*", "act": "read"},
                                                           {"obj": "Order/*", "act": "write"}]})
    headers = {"Authorization": f"Bearer {token}"}
    plain, confirmation = await subscribe(server.url, {"Order": {}, "Customer": {}}, additional_headers=headers)
    control, _ = await subscribe(server.url, {"Order": {}, "Customer": {}, "_options": {"control": True}},
                                 additional_headers=headers)
    assert set(confirmation) == {"Order", "Customer"} and confirmation["Order"]["user_name"] == "bob"
    # a control client is told that its ACL reads nothing of Order
    assert await recv_json(control) == {"_control": "acl_reads_nothing", "class": "Order"}
    server.service.publish_nowait("Order", "I", order(1))
    seq = server.service.publish_nowait("Customer", "I", {"_id": "c1", "customer_id": "c1", "name": "Ann"})
    for ws in (plain, control):
        got = await recv_json(ws)
        assert (got["doc_class"], got["seq"]) == ("Customer", seq)  # the Order change never arrived
        await ws.close()


def _bad_tokens(private: str, other_private: str, public: str) -> list[Any]:
    now = int(time.time())
    return [
        pytest.param(make_token(SECRET, exp_in=-60), "token expired", id="expired"),
        pytest.param(make_token("another-secret-that-is-long-enough-0123456789"),
                     "invalid token: Signature verification failed", id="forged-hs256"),
        pytest.param(make_token(other_private, "RS256"), "invalid token: Signature verification failed",
                     id="forged-rs256"),
        pytest.param(make_token(SECRET, "HS512"), "token algorithm 'HS512' is not accepted", id="wrong-alg-hs512"),
        pytest.param(jwt.encode({"sub": "eve", "exp": now + 60, "acl": ACME}, None, algorithm="none"),
                     "token algorithm 'none' is not accepted", id="alg-none"),
        pytest.param(make_token(SECRET, acl=None), "token carries no 'acl' claim", id="missing-acl"),
        pytest.param(make_token(SECRET, acl="admin"), "token claim 'acl': ", id="acl-not-an-acl"),
        pytest.param(jwt.encode({"sub": "alice", "acl": ACME}, SECRET, algorithm="HS256"), "invalid token: ",
                     id="missing-exp"),
        pytest.param(make_token(SECRET, nbf=now + 600), "invalid token: ", id="not-yet-valid"),
        pytest.param("not.a.token", "malformed token", id="malformed"),
    ]


async def test_jwt_refusals(
        make_server: ServerFactory, rsa_keys: tuple[str, str], other_rsa_keys: tuple[str, str]) -> None:
    """Each bad token is refused with 4401 and a reason naming the problem, in _header and in the upgrade."""
    private, public = rsa_keys
    server = await make_server(jwt_secret=SECRET, jwt_public_key=public)
    for param in _bad_tokens(private, other_rsa_keys[0], public):
        token, reason_start = param.values
        for where in ("header", "upgrade"):
            if where == "header":
                code, reason, _ = await refused(server.url, json.dumps(
                    {"Order": {}, "_header": {"Authorization": f"Bearer {token}"}}))
            else:
                code, reason, _ = await refused(server.url, json.dumps({"Order": {}}),
                                                additional_headers={"Authorization": f"Bearer {token}"})
            assert code == 4401, (param.id, where, code, reason)
            assert reason.startswith(reason_start), (param.id, where, reason)


async def test_jwt_algorithm_not_configured_is_refused(make_server: ServerFactory, rsa_keys: tuple[str, str]) -> None:
    """A server configured for HS256 only refuses a validly signed RS256 token."""
    private, public = rsa_keys
    server = await make_server(jwt_secret=SECRET, jwt_public_key=public, jwt_algorithms=["HS256"])
    code, reason, _ = await refused(server.url, json.dumps(
        {"Order": {}, "_header": {"Authorization": f"Bearer {make_token(private, 'RS256')}"}}))
    assert (code, reason) == (4401, "token algorithm 'RS256' is not accepted")


async def test_jwt_rs256_key_confusion_is_refused(make_server: ServerFactory, rsa_keys: tuple[str, str]) -> None:
    """The classic attack: an HS256 token 'signed' with the server's RSA public key as HMAC secret."""
    _, public = rsa_keys
    server = await make_server(jwt_public_key=public)
    forged = hs256_signed_with(public.encode(), {"sub": "eve", "exp": int(time.time()) + 60,
                                                 "acl": {"content": [{"obj": "*", "act": "*"}]}})
    code, reason, _ = await refused(server.url, json.dumps({"Order": {}}),
                                    additional_headers={"Authorization": f"Bearer {forged}"})
    assert (code, reason) == (4401, "no key configured for HS256 tokens")


async def test_jwt_audience_and_issuer_are_checked_when_configured(make_server: ServerFactory) -> None:
    server = await make_server(jwt_secret=SECRET, jwt_audience="shop", jwt_issuer="auth.example")
    good = make_token(SECRET, aud="shop", iss="auth.example")
    ws, confirmation = await subscribe(server.url, {"Order": {}, "_header": {"Authorization": f"Bearer {good}"}})
    await ws.close()
    assert confirmation["Order"]["user_name"] == "alice"
    for bad in (make_token(SECRET, aud="other", iss="auth.example"), make_token(SECRET, aud="shop", iss="evil"),
                make_token(SECRET)):
        code, reason, _ = await refused(server.url, json.dumps(
            {"Order": {}, "_header": {"Authorization": f"Bearer {bad}"}}))
        assert code == 4401 and reason.startswith("invalid token"), reason


async def test_jwt_server_without_credentials_in_handshake_is_refused(make_server: ServerFactory) -> None:
    server = await make_server(jwt_secret=SECRET)
    code, reason, _ = await refused(server.url, json.dumps({"Order": {}}))
    assert (code, reason) == (4401, "App Name or API Key missing for authentication")
