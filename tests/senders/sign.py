#!/usr/bin/env python3
"""Signs test webhooks the way each sender does, with the senders' own
libraries where they publish one (stripe, standardwebhooks, slack-sdk) and
the standard library's hmac where the sender documents the recipe (GitHub,
Shopify, Paddle, generic HMAC).

stdin: a JSON list of {"scheme", "secret", "body", "timestamp", "id"};
stdout: a JSON list with, for each, the value of the signature header the
sender would send (the test builds the request and its variants from it).

A request with "verify": the signature header, checks instead that the
sender's library accepts "body" (base64 in "body_b64") with that header,
as a receiver re-verifying a stored body would: "verified" or the
library's error.
"""
import base64
import datetime
import hashlib
import hmac
import json
import sys

import standardwebhooks
import stripe
from slack_sdk.signature import SignatureVerifier


def sign(req):
    scheme, secret, body, ts = req["scheme"], req["secret"], req["body"], req.get("timestamp", 0)
    if scheme == "stripe":
        return stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=ts)
    if scheme == "standard-webhooks":
        at = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
        return standardwebhooks.Webhook(secret).sign(req["id"], at, body)
    if scheme == "slack":
        return SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
    if scheme == "github":
        return "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    if scheme == "shopify":
        return base64.b64encode(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()).decode()
    if scheme == "paddle":
        mac = hmac.new(secret.encode(), f"{ts}:{body}".encode(), hashlib.sha256).hexdigest()
        return f"ts={ts};h1={mac}"
    if scheme == "hmac-sha512-base64":
        return base64.b64encode(hmac.new(secret.encode(), body.encode(), hashlib.sha512).digest()).decode()
    raise SystemExit(f"unknown scheme {scheme}")


def verify(req):
    body = base64.b64decode(req["body_b64"]).decode("utf-8")
    if req["scheme"] == "stripe":
        try:
            stripe.Webhook.construct_event(body, req["verify"], req["secret"])
            return "verified"
        except Exception as e:  # the library's own verdict, as text
            return f"{type(e).__name__}: {e}"
    raise SystemExit(f"cannot verify {req['scheme']}")


json.dump([verify(r) if "verify" in r else sign(r) for r in json.load(sys.stdin)], sys.stdout)
