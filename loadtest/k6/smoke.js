// Smoke test: one virtual user streams a few chat completions through the gateway, and every
// stream must be a 200 `text/event-stream` ending with `data: [DONE]` and no error event.
//
//   cargo run --release                  # the demo, in another terminal
//   k6 run loadtest/k6/smoke.js
//
// ITERATIONS (default 5) streams; BASE_URL, API_KEY, MODEL, MOCK_CHUNKS, MOCK_DELAY_MS and
// TIMEOUT as in lib.js. Exits non-zero if any check fails or any request fails.

import { checkStream, envInt, postStream, TIMEOUT } from './lib.js';

export const options = {
  scenarios: {
    smoke: {
      executor: 'per-vu-iterations',
      vus: 1,
      iterations: envInt('ITERATIONS', 5),
      maxDuration: '10m',
      gracefulStop: TIMEOUT,
    },
  },
  thresholds: {
    checks: ['rate==1'],
    http_req_failed: ['rate==0'],
    sse_events: ['count>0'],
  },
};

export default function () {
  checkStream(postStream());
}
