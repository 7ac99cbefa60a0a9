// Rate-limit test: requests arrive at OVERDRIVE x RATE per second (a constant arrival rate,
// whatever the latency), where RATE is the per-client-IP limit configured in the gateway, so
// some must be refused. A 429 is expected and counted apart from failures: it must carry
// `retry-after` and an OpenAI-shaped body (`{"error":{"message","type","code",...}}`);
// every other answer must be a good stream.
//
// The gateway's limit is `[limits.per_ip] requests_per_second` (off by default: then this
// script reports 0 % 429s, which passes unless EXPECT_429=1). CI runs it against a gateway
// limited to 10 a second (tests/it/k6.rs). MODEL=fail-429 EXPECT_429=1 watches the mock's own
// 429 relayed instead.
//
//   tidegate --config gw.toml            # with [limits.per_ip] requests_per_second = 10
//   RATE=10 EXPECT_429=1 BASE_URL=http://127.0.0.1:8080 k6 run loadtest/k6/ratelimit.js
//
// RATE (requests/s, default 10), OVERDRIVE (default 2), DURATION (default 30s), EXPECT_429
// (1: fail unless some requests got a 429). All requests come from one IP, this machine's.
// BASE_URL, API_KEY, MODEL, MOCK_CHUNKS, MOCK_DELAY_MS, TIMEOUT as in lib.js.

import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import { checkStream, envInt, postStream, TIMEOUT } from './lib.js';

const RATE = envInt('RATE', 10);
const OVERDRIVE = Number(__ENV.OVERDRIVE || 2);
const ARRIVALS = Math.max(1, Math.ceil(RATE * OVERDRIVE));
const EXPECT_429 = __ENV.EXPECT_429 === '1';

/** Requests answered 429. */
const rateLimited = new Counter('rate_limited');
/** Share of requests answered 429. */
const rateLimitedShare = new Rate('rate_limited_share');

// A 429 is an expected answer here, so it does not count in http_req_failed.
http.setResponseCallback(http.expectedStatuses(200, 429));

export const options = {
  scenarios: {
    over_the_limit: {
      executor: 'constant-arrival-rate',
      rate: ARRIVALS,
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      // A stream of the mock takes about 1 s: two seconds' worth of VUs, more if needed.
      preAllocatedVUs: 2 * ARRIVALS,
      maxVUs: 20 * ARRIVALS,
      gracefulStop: TIMEOUT,
    },
  },
  thresholds: Object.assign(
    { http_req_failed: ['rate<0.01'], checks: ['rate>0.99'] },
    EXPECT_429 ? { rate_limited_share: ['rate>0'] } : {},
  ),
};

export default function () {
  const res = postStream();
  const limited = res.status === 429;
  rateLimitedShare.add(limited);
  if (!limited) {
    checkStream(res);
    return;
  }
  rateLimited.add(1);
  check(res, {
    '429 has retry-after': (r) => (r.headers['Retry-After'] || '') !== '',
    '429 body is an OpenAI error with a code': (r) => {
      try {
        const error = JSON.parse(r.body).error;
        return typeof error.message === 'string' && typeof error.code === 'string';
      } catch (_) {
        return false;
      }
    },
  });
}
