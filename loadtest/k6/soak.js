// Soak test: VUS virtual users stream chat completions back to back for DURATION, to find what
// only time reveals (leaks, creeping errors or latency). Besides the ramp test's thresholds
// over the whole run, each quarter of the run has its own, so a run that starts clean and
// degrades fails on its last quarter even when the whole-run average is still fine, and the
// summary lists the error rate and p95 per quarter side by side. These thresholds use
// abortOnFail: false, so the run always completes and reports every quarter; only a stream
// error rate above 50 % (after the first minute) stops it early.
//
//   cargo run --release                  # the demo, in another terminal
//   k6 run loadtest/k6/soak.js
//   VUS=100 DURATION=2h k6 run loadtest/k6/soak.js
//
// VUS (default 20), DURATION (default 30m); P95_MS and TTFB_P95_MS as in ramp.js.
// BASE_URL, API_KEY, MODEL, MOCK_CHUNKS, MOCK_DELAY_MS, TIMEOUT as in lib.js.

import exec from 'k6/execution';
import { checkStream, defaultStreamP95Ms, envInt, postStream, TIMEOUT } from './lib.js';

const P95_MS = envInt('P95_MS', defaultStreamP95Ms());
const TTFB_P95_MS = envInt('TTFB_P95_MS', 500);
const QUARTERS = ['q1', 'q2', 'q3', 'q4'];

const keepGoing = (threshold) => ({ threshold, abortOnFail: false });

const thresholds = {
  http_req_failed: [keepGoing('rate<0.01')],
  stream_errors: [
    keepGoing('rate<0.01'),
    { threshold: 'rate<0.5', abortOnFail: true, delayAbortEval: '1m' },
  ],
  stream_duration: [keepGoing(`p(95)<${P95_MS}`)],
  ttfb: [keepGoing(`p(95)<${TTFB_P95_MS}`)],
};
for (const q of QUARTERS) {
  thresholds[`stream_errors{quarter:${q}}`] = [keepGoing('rate<0.01')];
  thresholds[`stream_duration{quarter:${q}}`] = [keepGoing(`p(95)<${P95_MS}`)];
}

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-vus',
      vus: envInt('VUS', 20),
      duration: __ENV.DURATION || '30m',
      gracefulStop: TIMEOUT,
    },
  },
  thresholds,
};

export default function () {
  // The quarter of the run in which this stream starts.
  const quarter = QUARTERS[Math.min(3, Math.floor(exec.scenario.progress * 4))];
  checkStream(postStream({ quarter }), { quarter });
}
