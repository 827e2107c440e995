//! Offered load for end-to-end tests: paced UDP and raw TCP senders, and a
//! receiver that counts what arrives.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// What a paced sender did.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Packets handed to the kernel.
    pub packets: u64,
    /// From the first packet to the last.
    pub elapsed: Duration,
}

/// Calls `send` about `pps` times per second for `duration`, in small
/// batches so the pace holds on a busy machine without a busy loop.
pub fn paced(pps: u64, duration: Duration, mut send: impl FnMut() -> io::Result<()>) -> Sent {
    let start = Instant::now();
    let mut packets = 0u64;
    let mut last = start;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * pps as f64) as u64 + 1;
        while packets < due {
            if send().is_ok() {
                packets += 1;
                last = Instant::now();
            } else {
                break;
            }
        }
        thread::sleep(Duration::from_micros(500));
    }
    Sent { packets, elapsed: last - start }
}

/// Sends UDP datagrams from `sock` to `dst` at `pps` for `duration`.
pub fn udp_flood(sock: &UdpSocket, dst: SocketAddr, pps: u64, duration: Duration) -> Sent {
    paced(pps, duration, || sock.send_to(b"vantage-test", dst).map(|_| ()))
}

/// A thread draining a UDP socket and counting datagrams until stopped.
pub struct Counter {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Counter {
    /// Starts counting what `sock` receives.
    pub fn start(sock: UdpSocket) -> Counter {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        sock.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let (c, s) = (count.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Counter { count, stop, thread: Some(thread) }
    }

    /// Waits for stragglers, stops, and returns the count.
    pub fn finish(mut self) -> u64 {
        thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A raw IPv4 socket that sends bare TCP segments (the kernel adds the IP
/// header). Lets a test offer TCP load at a chosen packet rate, which a real
/// connection would not keep up once its segments are dropped.
pub struct RawTcp {
    fd: OwnedFd,
}

impl RawTcp {
    /// Opens the socket in the calling thread's network namespace.
    pub fn new() -> RawTcp {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        assert!(fd >= 0, "raw TCP socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh, valid fd.
        RawTcp { fd: unsafe { OwnedFd::from_raw_fd(fd) } }
    }

    /// Sends one ACK segment `src -> dst` with a correct checksum.
    pub fn send_ack(&self, src: SocketAddrV4, dst: SocketAddrV4) -> io::Result<()> {
        let mut seg = [0u8; 20];
        seg[0..2].copy_from_slice(&src.port().to_be_bytes());
        seg[2..4].copy_from_slice(&dst.port().to_be_bytes());
        seg[4..8].copy_from_slice(&1u32.to_be_bytes());
        seg[8..12].copy_from_slice(&1u32.to_be_bytes());
        seg[12] = 5 << 4;
        seg[13] = 0x10;
        seg[14..16].copy_from_slice(&1024u16.to_be_bytes());
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&src.ip().octets());
        pseudo.extend_from_slice(&dst.ip().octets());
        pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
        let sum = super::checksum(&[&pseudo, &seg]);
        seg[16..18].copy_from_slice(&sum.to_be_bytes());

        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
            sin_zero: [0; 8],
        };
        // SAFETY: valid buffer and address of the stated sizes.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                seg.as_ptr().cast(),
                seg.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Default for RawTcp {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads one series' value from Prometheus text: the first line starting
/// with `name{` whose labels include every `label="value"` pair given.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labelset, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| labelset.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// `burst + rate * elapsed`, the most a bucket admits under overload.
pub fn expected(rate: u64, burst: u64, elapsed: Duration) -> f64 {
    burst as f64 + rate as f64 * elapsed.as_secs_f64()
}

/// Asserts `got` is within `pct` percent of `want`.
pub fn assert_near(what: &str, got: f64, want: f64, pct: f64) {
    let err = (got - want).abs() / want * 100.0;
    assert!(err <= pct, "{what}: got {got}, expected {want:.0} ± {pct}% (off by {err:.1}%)");
    eprintln!("{what}: admitted {got} for {want:.0} expected ({err:.2}% off)");
}
