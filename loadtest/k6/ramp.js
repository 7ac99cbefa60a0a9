// Ramp test: 0 -> VUS virtual users over RAMP, hold for HOLD, back to 0 over RAMP. Each VU
// streams one chat completion after another with no pause, so VUS is the number of concurrent
// streams.
//
//   cargo run --release                  # the demo, in another terminal
//   VUS=200 k6 run loadtest/k6/ramp.js
//   VUS=20 RAMP=5s HOLD=10s k6 run loadtest/k6/ramp.js          # a quick one
//
// VUS (default 50), RAMP (default 30s), HOLD (default 1m). Fails when more than 1 % of streams
// fail, or when the p95 of a good stream's duration exceeds P95_MS (default: the mock's pacing,
// MOCK_CHUNKS x MOCK_DELAY_MS or 24 x 40 ms, plus 1000) or its time to first byte exceeds
// TTFB_P95_MS (default 500). Against a real upstream set both, e.g. P95_MS=30000 TTFB_P95_MS=3000.
// BASE_URL, API_KEY, MODEL, MOCK_CHUNKS, MOCK_DELAY_MS, TIMEOUT as in lib.js.

import { checkStream, defaultStreamP95Ms, envInt, postStream, TIMEOUT } from './lib.js';

const VUS = envInt('VUS', 50);
const RAMP = __ENV.RAMP || '30s';
const HOLD = __ENV.HOLD || '1m';
const P95_MS = envInt('P95_MS', defaultStreamP95Ms());
const TTFB_P95_MS = envInt('TTFB_P95_MS', 500);

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: RAMP, target: VUS },
        { duration: HOLD, target: VUS },
        { duration: RAMP, target: 0 },
      ],
      gracefulRampDown: TIMEOUT,
      gracefulStop: TIMEOUT,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    stream_errors: ['rate<0.01'],
    stream_duration: [`p(95)<${P95_MS}`],
    ttfb: [`p(95)<${TTFB_P95_MS}`],
  },
};

export default function () {
  checkStream(postStream());
}
