// The soak load of scripts/bench-soak: a fixed arrival rate (k6's
// constant-arrival-rate executor: new requests start on schedule whether or
// not earlier ones have been answered, so a slow server cannot slow the
// load down and hide its own latency), each a ~300-byte webhook with a
// unique eventId. Kept lean (no checks, bodies discarded, one string
// template per request) so that k6 costs as little CPU as it can on the
// machine it shares with what it measures.
//
//   TARGET_URL  http://127.0.0.1:3000/webhooks/stripe
//   RATE        requests per second (10000)
//   DURATION    k6 duration (30m)
//   VUS         pre-allocated VUs (RATE / 20, at least 50); MAX_VUS (4 × VUS)
//   RUN         a prefix that keeps this run's eventIds apart from others'
import http from 'k6/http';
import exec from 'k6/execution';

const TARGET_URL = __ENV.TARGET_URL || 'http://127.0.0.1:3000/webhooks/stripe';
const RATE = parseInt(__ENV.RATE || '10000', 10);
const VUS = parseInt(__ENV.VUS || String(Math.max(50, Math.ceil(RATE / 20))), 10);
const RUN = __ENV.RUN || 'soak';

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['med', 'p(99)', 'max'],
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '30m',
      preAllocatedVUs: VUS,
      maxVUs: parseInt(__ENV.MAX_VUS || String(VUS * 4), 10),
    },
  },
};

const params = { headers: { 'Content-Type': 'application/json' } };

export default function () {
  const n = exec.scenario.iterationInTest;
  http.post(
    TARGET_URL,
    `{"provider":"stripe","eventId":"evt_${RUN}_${n}","timestamp":"2026-11-22T21:35:25.123Z",` +
      `"data":{"amount":${n % 10000},"currency":"brl","customer_id":"cus_x1Y2z3W4","status":"succeeded",` +
      `"description":"Order 100234, three items, shipped by Correios to Sao Paulo"}}`,
    params,
  );
}
