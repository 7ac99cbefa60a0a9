//! Process limits. A proxied HTTP/1.1 stream holds two sockets, so 10,000 streams need more open
//! files than the usual soft limit of 1024: raise the soft limit to the hard limit at start.

/// The open-files limit before and after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub before: u64,
    pub after: u64,
    pub hard: u64,
}

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit.
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    // rlim_t is u64 on Linux but not on every platform.
    #[allow(clippy::unnecessary_cast)]
    Ok(NofileLimit {
        before: before as u64,
        after: limit.rlim_cur as u64,
        hard: limit.rlim_max as u64,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn soft_limit_ends_at_the_hard_limit() {
        let got = super::raise_nofile_limit().unwrap();
        assert_eq!(got.after, got.hard);
        assert!(got.after >= got.before);
    }
}
