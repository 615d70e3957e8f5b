// The seed's load test (acceptance test 6.3, "The 10k Challenge"), unchanged in
// what it does: ramp to 500 VUs, POST a Stripe-like webhook with a unique
// eventId, check for 202, sleep 0.1 s. Two differences: `randomString` is
// defined here (no remote import: it runs offline), and the target URL comes
// from TARGET_URL (default http://localhost:3000/webhooks/stripe).
//
// K6_PROFILE=short runs a 20 s, 100-VU version for CI, whose thresholds check
// only the error rate (CI machines are too noisy for a latency threshold).
//
//   k6 run load-test.js                       # the seed's test
//   scripts/loadtest                          # the whole check, sent == stored
import http from 'k6/http';
import { check, sleep } from 'k6';

const TARGET_URL = __ENV.TARGET_URL || 'http://localhost:3000/webhooks/stripe';
const SHORT = __ENV.K6_PROFILE === 'short';

// Same alphabet and behaviour as k6-utils' randomString.
function randomString(length, charset = 'abcdefghijklmnopqrstuvwxyz0123456789') {
  let res = '';
  while (length--) res += charset[(Math.random() * charset.length) | 0];
  return res;
}

export const options = SHORT
  ? {
      stages: [
        { duration: '5s', target: 50 },
        { duration: '10s', target: 100 },
        { duration: '5s', target: 0 },
      ],
      thresholds: {
        http_req_failed: ['rate<0.01'],
      },
    }
  : {
      stages: [
        { duration: '10s', target: 50 }, // Warm up
        { duration: '1m', target: 500 }, // STRESS SPIKE: 500 concurrent users
        { duration: '10s', target: 0 }, // Cool down
      ],
      thresholds: {
        http_req_failed: ['rate<0.01'], // Max 1% errors allowed
        http_req_duration: ['p(95)<100'], // 95% of requests must accept in under 100ms
      },
    };

export default function () {
  // Payload simulating a Stripe/Payment Provider Webhook
  const payload = JSON.stringify({
    provider: 'stripe',
    eventId: `evt_${randomString(12)}`, // Unique ID for Idempotency check
    timestamp: new Date().toISOString(),
    data: {
      amount: Math.floor(Math.random() * 10000),
      currency: 'brl',
      customer_id: `cus_${randomString(8)}`,
      status: 'succeeded',
    },
  });

  const params = {
    headers: {
      'Content-Type': 'application/json',
    },
  };

  const res = http.post(TARGET_URL, payload, params);

  check(res, {
    'status is 202': (r) => r.status === 202, // Must be Accepted, not 200 OK
  });

  // Pacing: Random sleep to simulate real traffic variance
  sleep(0.1);
}
