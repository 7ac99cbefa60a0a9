//! SIGTERM and SIGINT, for the gateway, the mock and the load tools alike; SIGHUP (reload) for
//! the gateway.
//!
//! The listeners are created once, up front: a signal that arrives while an earlier one is
//! being handled is then not lost (a listener created later would not see it).

#[cfg(unix)]
type Listener = Option<tokio::signal::unix::Signal>;

/// A listener for one signal; `None` when it cannot be installed (it is then never received).
#[cfg(unix)]
fn listen(kind: tokio::signal::unix::SignalKind) -> Listener {
    tokio::signal::unix::signal(kind).ok()
}

/// The next delivery of `signal` (never, without a listener or once the runtime stops
/// delivering, so a loop over it cannot spin).
#[cfg(unix)]
async fn next(signal: &mut Listener) {
    if let Some(signal) = signal {
        if signal.recv().await.is_some() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// SIGTERM and SIGINT (Ctrl-C), as one stream of signals.
pub struct Signals {
    #[cfg(unix)]
    term: Listener,
    #[cfg(unix)]
    int: Listener,
}

impl Default for Signals {
    fn default() -> Signals {
        Signals::new()
    }
}

impl Signals {
    pub fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::SignalKind;
            Signals {
                term: listen(SignalKind::terminate()),
                int: listen(SignalKind::interrupt()),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = next(&mut self.term) => {},
                _ = next(&mut self.int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Waits for one SIGTERM or SIGINT.
pub async fn interrupted() {
    Signals::new().recv().await;
}

/// SIGHUP, the reload signal. Created before the process says it is up: until a listener exists
/// a SIGHUP ends the process (its default action).
pub struct Hangups {
    #[cfg(unix)]
    hup: Listener,
}

impl Default for Hangups {
    fn default() -> Hangups {
        Hangups::new()
    }
}

impl Hangups {
    pub fn new() -> Hangups {
        Hangups {
            #[cfg(unix)]
            hup: listen(tokio::signal::unix::SignalKind::hangup()),
        }
    }

    /// Waits for the next SIGHUP (forever where there is none).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        next(&mut self.hup).await;
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    }
}
