#!/usr/bin/env python3
"""Signs test webhooks for the sender catalog the way each sender does, with
the sender's own library where one is on PyPI:

  discord   PyNaCl (what Discord's docs verify with), Ed25519
  sendgrid  cryptography signs (ECDSA P-256 / SHA-256, as SendGrid does);
            the `sendgrid` library's EventWebhook must verify each signature
            before it is returned
  twilio    twilio's RequestValidator computes the signature, and validates it
  hubspot   hubspot-api-client's Signature.get_signature (v3), and is_valid
  square    squareup's verify_signature must accept the signature
  clerk     standardwebhooks (Clerk signs through Svix, the svix-* headers)
  zoom, twitch, mailgun
            the recipe of the sender's documentation with the stdlib's hmac
            (none publishes a verifying library)

stdin: a JSON list of operations {"op": ..., ...}; stdout: a JSON list of
results, one per operation. A library refusing what was signed exits 1.
"""
import base64
import hashlib
import hmac
import datetime
import json
import sys

import nacl.signing
import standardwebhooks
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hubspot.utils.signature import Signature as HubSpotSignature
from sendgrid.helpers.eventwebhook import EventWebhook
from square.utils.webhooks_helper import verify_signature as square_verify
from twilio.request_validator import RequestValidator


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def sendgrid_key(private):
    return ec.derive_private_key(private, ec.SECP256R1())


def run(op):
    kind = op["op"]
    if kind == "discord-key":
        key = nacl.signing.SigningKey(bytes.fromhex(op["seed"]))
        return key.verify_key.encode().hex()
    if kind == "discord":
        key = nacl.signing.SigningKey(bytes.fromhex(op["seed"]))
        message = (op["timestamp"] + op["body"]).encode()
        signed = key.sign(message)
        key.verify_key.verify(signed)  # PyNaCl's own check
        return signed.signature.hex()
    if kind == "sendgrid-key":
        public = sendgrid_key(op["private"]).public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()
    if kind == "sendgrid":
        key = sendgrid_key(op["private"])
        payload = op["timestamp"] + op["body"]
        sig = base64.b64encode(key.sign(payload.encode(), ec.ECDSA(hashes.SHA256()))).decode()
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if not EventWebhook(base64.b64encode(der).decode()).verify_signature(op["body"], sig, op["timestamp"]):
            fail("sendgrid's EventWebhook refused the signature")
        return sig
    if kind == "twilio":
        validator = RequestValidator(op["token"])
        url, algorithm = op["url"], op.get("algorithm")
        if "params" in op:
            sig = validator.compute_signature(url, op["params"], algorithm)
            if not validator.validate(url, op["params"], sig, algorithm):
                fail("twilio's RequestValidator refused its own form signature")
            return {"url": url, "signature": sig}
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}bodySHA256={validator.compute_hash(op['body'])}"
        sig = validator.compute_signature(url, {}, algorithm)
        if not validator.validate(url, op["body"], sig, algorithm):
            fail("twilio's RequestValidator refused its own JSON signature")
        return {"url": url, "signature": sig}
    if kind == "hubspot":
        sig = HubSpotSignature.get_signature(
            op["secret"], op["body"], "v3", http_uri=op["uri"], http_method="POST", timestamp=op["timestamp"]
        )
        return sig
    if kind == "square":
        mac = hmac.new(op["key"].encode(), (op["url"] + op["body"]).encode(), hashlib.sha256).digest()
        sig = base64.b64encode(mac).decode()
        if not square_verify(
            request_body=op["body"], signature_header=sig, signature_key=op["key"], notification_url=op["url"]
        ):
            fail("squareup's verify_signature refused the signature")
        return sig
    if kind == "zoom":
        message = f"v0:{op['timestamp']}:{op['body']}"
        return "v0=" + hmac.new(op["secret"].encode(), message.encode(), hashlib.sha256).hexdigest()
    if kind == "zoom-token":
        return hmac.new(op["secret"].encode(), op["plain"].encode(), hashlib.sha256).hexdigest()
    if kind == "twitch":
        message = op["id"] + op["timestamp"] + op["body"]
        return "sha256=" + hmac.new(op["secret"].encode(), message.encode(), hashlib.sha256).hexdigest()
    if kind == "mailgun":
        message = op["timestamp"] + op["token"]
        return hmac.new(op["key"].encode(), message.encode(), hashlib.sha256).hexdigest()
    if kind == "standard-webhooks":
        at = datetime.datetime.fromtimestamp(op["timestamp"], tz=datetime.timezone.utc)
        return standardwebhooks.Webhook(op["secret"]).sign(op["id"], at, op["body"])
    fail(f"unknown op {kind}")


json.dump([run(op) for op in json.load(sys.stdin)], sys.stdout)
