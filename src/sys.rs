//! Process settings made once at start.
//!
//! - Open files: a proxied HTTP/1.1 stream holds two sockets, so 10,000 streams need more open
//!   files than the usual soft limit of 1024: raise the soft limit to the hard limit.
//! - Transparent huge pages: off for this process. The gateway's heap is many small per-stream
//!   allocations spread thinly over its address space; backed by 2 MiB pages, a few live bytes pin
//!   a whole huge page. Measured with 2,000 streams: 40.9 KiB of RSS per stream with THP, 25.2
//!   without (`loadtest/RESULTS.md`). mimalloc asks for huge pages on its arenas by default.
//! - Listeners: bound with the backlog the configuration asks for (`limits.listen_backlog`),
//!   where the standard library and tokio ask for 128.

/// The open-files limit before and after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub before: u64,
    pub after: u64,
    pub hard: u64,
}

fn get_nofile() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// The open-files limit in force now (the soft limit: the one `accept` runs into).
pub fn open_files_limit() -> std::io::Result<u64> {
    // rlim_t is u64 on Linux but not on every platform.
    #[allow(clippy::unnecessary_cast)]
    get_nofile().map(|l| l.rlim_cur as u64)
}

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit.
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    let mut limit = get_nofile()?;
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

/// Whether transparent huge pages ended up disabled for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePages {
    /// THP is now off for this process (and any child it starts).
    Disabled,
    /// The kernel refused or does not know the setting; the process keeps the system's default.
    Unchanged,
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`), which takes
/// precedence over the allocator's `madvise(MADV_HUGEPAGE)` and the system's `always` mode. Call it
/// before the heap grows: pages already backed by huge pages stay so.
pub fn disable_transparent_huge_pages() -> HugePages {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
        if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } == 0 {
            return HugePages::Disabled;
        }
    }
    HugePages::Unchanged
}

/// A TCP listener on `addr` whose `listen(2)` backlog is `backlog` (the kernel caps it at
/// `net.core.somaxconn`). `SO_REUSEADDR` as tokio sets it: a restarted gateway binds its port at
/// once while the connections of the process before it drain or sit in `TIME_WAIT`. Must be
/// called inside a tokio runtime.
pub fn listen(
    addr: std::net::SocketAddr,
    backlog: u32,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    #[test]
    fn soft_limit_ends_at_the_hard_limit() {
        let got = super::raise_nofile_limit().unwrap();
        assert_eq!(got.after, got.hard);
        assert!(got.after >= got.before);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_turned_off_for_the_process() {
        assert_eq!(
            super::disable_transparent_huge_pages(),
            super::HugePages::Disabled
        );
        // SAFETY: PR_GET_THP_DISABLE takes no pointers.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
