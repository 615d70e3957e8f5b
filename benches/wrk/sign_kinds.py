#!/usr/bin/env python3
"""Writes N requests of one sender kind, ~300-byte bodies, each signed now
the way the sender signs (the same libraries as tests/senders/catalog.py:
PyNaCl for Discord, cryptography's ECDSA checked by the sendgrid library
for SendGrid, twilio's RequestValidator), as a Lua table for
benches/wrk/kinds.lua: sign_kinds.py KIND N OUT.lua PUBLIC_URL

Each entry is {path, content type, {header = value, …}, body}. The keys are
the bench's own: Discord's seed is RFC 8032's first test key, SendGrid's
private scalar is BENCH_SENDGRID_KEY below; `keys` prints the public keys
the bench's sources file needs."""
import base64
import json
import sys
import time

import nacl.signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from twilio.request_validator import RequestValidator

DISCORD_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
BENCH_SENDGRID_KEY = 0x5EED_BE4C
TWILIO_TOKEN = "bench-twilio-token"


def sendgrid_public():
    key = ec.derive_private_key(BENCH_SENDGRID_KEY, ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, base64.b64encode(der).decode()


def lua(s):
    return json.dumps(s)


if sys.argv[1] == "keys":
    print(nacl.signing.SigningKey(DISCORD_SEED).verify_key.encode().hex(), sendgrid_public()[1])
    sys.exit(0)

kind, n, out, public_url = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
now = str(int(time.time()))
discord = nacl.signing.SigningKey(DISCORD_SEED)
sg_key, sg_public = sendgrid_public()
sg_check = EventWebhook(sg_public)
twilio = RequestValidator(TWILIO_TOKEN)
with open(out, "w") as f:
    f.write("return {\n")
    for i in range(n):
        if kind == "discord":
            body = json.dumps({"type": 2, "id": f"11000000000{i:08d}", "application_id": "110000000000000000",
                               "channel_id": "110000000000000001", "token": "aW50ZXJhY3Rpb24tdG9rZW4" * 4,
                               "data": {"id": "1", "name": "order", "options": [{"name": "n", "value": i}]}},
                              separators=(",", ":"))
            sig = discord.sign((now + body).encode()).signature.hex()
            entry = ("/webhooks/discord", "application/json",
                     {"X-Signature-Ed25519": sig, "X-Signature-Timestamp": now}, body)
        elif kind == "sendgrid":
            body = json.dumps([{"email": "customer@example.com", "timestamp": int(now), "event": "delivered",
                                "sg_event_id": f"sg_bench_{i}", "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001",
                                "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>", "category": ["order"],
                                "response": "250 OK"}], separators=(",", ":"))
            sig = base64.b64encode(sg_key.sign((now + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
            if i < 3 and not sg_check.verify_signature(body, sig, now):
                sys.exit("sendgrid's EventWebhook refused the bench's signature")
            entry = ("/webhooks/sendgrid", "application/json",
                     {"X-Twilio-Email-Event-Webhook-Signature": sig,
                      "X-Twilio-Email-Event-Webhook-Timestamp": now}, body)
        elif kind == "twilio":
            params = {"MessageSid": f"SM{i:032d}", "MessageStatus": "delivered", "AccountSid": "AC" + "0" * 32,
                      "From": "+14158675310", "To": "+18005551212", "ApiVersion": "2010-04-01",
                      "SmsSid": f"SM{i:032d}", "SmsStatus": "delivered"}
            path = "/webhooks/twilio"
            sig = twilio.compute_signature(public_url + path, params)
            from urllib.parse import urlencode
            entry = (path, "application/x-www-form-urlencoded", {"X-Twilio-Signature": sig}, urlencode(params))
        else:
            sys.exit(f"unknown kind {kind}")
        path, ctype, headers, body = entry
        hs = ", ".join(f"[{lua(k)}] = {lua(v)}" for k, v in headers.items())
        f.write(f"{{{lua(path)}, {lua(ctype)}, {{{hs}}}, {lua(body)}}},\n")
    f.write("}\n")
