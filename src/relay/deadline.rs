//! One timer per response that enforces both the idle timeout (silence between upstream bytes)
//! and the hard cap on a response's total duration.
//!
//! Re-arming a timer on every upstream chunk would touch the timer wheel thousands of times a
//! second at 10k streams. Instead activity only records a timestamp; when the timer fires we
//! check whether it really expired and, if not, re-arm it once for the new deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::error::GatewayError;

/// Which limit ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Nothing arrived for the idle timeout.
    Idle(Duration),
    /// The response ran longer than its maximum duration.
    Duration(Duration),
}

impl From<Expired> for GatewayError {
    fn from(expired: Expired) -> GatewayError {
        match expired {
            Expired::Idle(d) => GatewayError::UpstreamIdleTimeout(d),
            Expired::Duration(d) => GatewayError::StreamDurationExceeded(d),
        }
    }
}

#[derive(Debug)]
pub struct Deadlines {
    sleep: Pin<Box<Sleep>>,
    idle: Duration,
    last_activity: Instant,
    max_duration: Duration,
    hard_deadline: Instant,
}

impl Deadlines {
    /// Starts both clocks now.
    pub fn new(idle: Duration, max_duration: Duration) -> Deadlines {
        let now = Instant::now();
        let hard_deadline = now + max_duration;
        Deadlines {
            sleep: Box::pin(tokio::time::sleep_until((now + idle).min(hard_deadline))),
            idle,
            last_activity: now,
            max_duration,
            hard_deadline,
        }
    }

    /// Records activity: pushes the idle deadline back without touching the timer.
    pub fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Ready once a limit has run out; registers the waker otherwise.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        // Bounded: each pass either returns or moves the deadline strictly into the future.
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
            if now >= self.hard_deadline {
                return Poll::Ready(Expired::Duration(self.max_duration));
            }
            let idle_deadline = self.last_activity + self.idle;
            if now >= idle_deadline {
                return Poll::Ready(Expired::Idle(self.idle));
            }
            self.sleep
                .as_mut()
                .reset(idle_deadline.min(self.hard_deadline));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn idle_expires_after_silence() {
        let mut d = Deadlines::new(Duration::from_secs(5), Duration::from_secs(100));
        let started = Instant::now();
        let expired = poll_fn(|cx| d.poll_expired(cx)).await;
        assert_eq!(expired, Expired::Idle(Duration::from_secs(5)));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_idle_deadline_back() {
        let mut d = Deadlines::new(Duration::from_secs(5), Duration::from_secs(100));
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        d.touch();
        let expired = poll_fn(|cx| d.poll_expired(cx)).await;
        assert_eq!(expired, Expired::Idle(Duration::from_secs(5)));
        assert_eq!(started.elapsed(), Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn the_duration_cap_wins_over_activity() {
        let mut d = Deadlines::new(Duration::from_secs(5), Duration::from_secs(12));
        let started = Instant::now();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            d.touch();
        }
        // 15 s have passed with activity every 3 s: the idle limit never ran out.
        let expired = poll_fn(|cx| d.poll_expired(cx)).await;
        assert_eq!(expired, Expired::Duration(Duration::from_secs(12)));
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }
}
