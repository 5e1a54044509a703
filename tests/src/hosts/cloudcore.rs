//! The stand-in cloudcore: listeners at [`CLOUDCORE_PORTS`] on the
//! bridge's control address.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use super::CLOUDCORE_PORTS;

/// Stand-in for KubeEdge's cloudcore: TCP listeners on the control address
/// at [`CLOUDCORE_PORTS`] that accept and close, so a node's "cloudcore
/// ports reachable" checks and the stand-in keadm's connection check pass.
/// It speaks no protocol; the real cloudcore is out of scope of the tests.
pub(super) struct StandinCloudcore {
    stop: Arc<AtomicBool>,
    threads: Vec<(SocketAddr, JoinHandle<()>)>,
}

impl StandinCloudcore {
    pub(super) fn start(ip: &str) -> Result<StandinCloudcore> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for port in CLOUDCORE_PORTS {
            let addr: SocketAddr = format!("{ip}:{port}").parse()?;
            let listener = TcpListener::bind(addr)
                .with_context(|| format!("stand-in cloudcore: binding {addr}"))?;
            let stop = Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name(format!("cloudcore-{port}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        // Close our side at once, but drain what the
                        // client sent so the close is a FIN, not a RST
                        // (a client that already wrote sees a clean EOF).
                        if let Ok(conn) = conn {
                            let _ = std::thread::Builder::new()
                                .name("cloudcore-conn".into())
                                .spawn(move || {
                                    let _ = conn.shutdown(std::net::Shutdown::Write);
                                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                                    let _ = io::copy(&mut (&conn).take(1 << 20), &mut io::sink());
                                });
                        }
                    }
                })?;
            threads.push((addr, thread));
        }
        Ok(StandinCloudcore { stop, threads })
    }

    pub(super) fn shut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (addr, thread) in self.threads.drain(..) {
            // Wakes the blocking accept; it sees the flag and returns.
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            let _ = thread.join();
        }
    }
}
