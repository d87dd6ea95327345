"""Webhook signatures (agent/delivery/signing.py) on data, checked by `standardwebhooks` (the reference library an
organization verifies with) and by the Standard Webhooks specification's own example."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from agent.delivery import signing

BODY = b'{"type":"aggregate","sequence":1}'


def test_the_specifications_example_signature():
    # the example of the Standard Webhooks specification: secret, id, timestamp, body and its signature
    assert signing.signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                             b'{"test": 2432232314}') == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_new_secret_is_32_random_bytes_the_library_accepts():
    first, second = signing.new_secret(), signing.new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
    at = datetime.fromtimestamp(1_700_000_000, tz=timezone.utc)
    assert Webhook(first).sign("msg_1", at, BODY.decode()) == signing.signature(first, "msg_1", 1_700_000_000, BODY)


def test_headers_verify_with_standardwebhooks():
    secret = signing.new_secret()
    headers = signing.headers([secret], "msg_1", int(time.time()), BODY)
    assert headers["webhook-id"] == "msg_1" and headers["content-type"] == "application/json"
    assert Webhook(secret).verify(BODY, headers) == {"type": "aggregate", "sequence": 1}


@pytest.mark.parametrize("change", ["body", "id", "timestamp", "secret"])
def test_a_changed_body_id_timestamp_or_secret_does_not_verify(change):
    secret, now = signing.new_secret(), int(time.time())
    headers = signing.headers([secret], "msg_1", now, BODY)
    body = BODY.replace(b"1", b"2") if change == "body" else BODY
    if change == "id":
        headers["webhook-id"] = "msg_2"
    if change == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    verifier = Webhook(signing.new_secret() if change == "secret" else secret)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verifier.verify(body, headers)


def test_while_a_secret_is_rotated_each_one_verifies_alone():
    old, new, other = signing.new_secret(), signing.new_secret(), signing.new_secret()
    headers = signing.headers([old, new], "msg_7", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(BODY, headers) and Webhook(new).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)


def test_a_secret_without_its_prefix_signs_the_same():
    secret = signing.new_secret()
    assert signing.signature(secret.removeprefix("whsec_"), "m", 1, b"") == signing.signature(secret, "m", 1, b"")
