#!/usr/bin/env python3
"""Writes N Stripe events of ~300 bytes (the size of the envelope bench's
body), each signed now by the stripe library, as a Lua table for
benches/wrk/signed.lua: sign_stripe.py SECRET N OUT.lua [--control]

--control writes the seed's envelope instead, with a made-up signature
header of the same length: the same client-side work for wrk, nothing to
verify for the gateway, so the two runs differ by the verification alone."""
import json
import sys
import time

import stripe

secret, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
control = "--control" in sys.argv[4:]
now = int(time.time())
with open(out, "w") as f:
    f.write("return {\n")
    for i in range(n):
        body = json.dumps({
            "id": f"evt_bench_{i}", "object": "event", "type": "payment_intent.succeeded", "created": now,
            "data": {"object": {"amount": 4200, "currency": "brl", "customer": "cus_x1Y2z3W4", "status": "succeeded",
                                "description": "Order 100234, three items"}},
        }, separators=(",", ":"))
        sig = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=now)
        if control:
            body = json.dumps({
                "provider": "open", "eventId": f"evt_bench_{i}", "timestamp": "2026-11-22T21:35:25Z",
                "data": {"object": {"amount": 4200, "currency": "brl", "customer": "cus_x1Y2z3W4",
                                    "status": "succeeded", "description": "Order 100234, three items"}},
            }, separators=(",", ":"))
            sig = "x" * len(sig)
        f.write(f"{{{json.dumps(body)},{json.dumps(sig)}}},\n")
    f.write("}\n")
