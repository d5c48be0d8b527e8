//! Connections that can be cut without a response, for the "dropped connection" fault.
//!
//! axum gives handlers no way to abandon a connection, but it lets us choose the listener. Each
//! accepted socket is wrapped in a `KillableStream` whose switch reaches the handler through
//! `ConnectInfo`. Once the switch is thrown, every read and write fails, so hyper gives up on the
//! connection and drops the socket before writing anything: the client sees the connection close
//! with no HTTP response, exactly like a provider whose response was lost on the way.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Per-connection kill switch.
#[derive(Debug, Default)]
pub(crate) struct KillSwitch {
    killed: AtomicBool,
    /// Tasks parked on the socket; woken on kill so they notice promptly.
    wakers: Mutex<Vec<Waker>>,
}

impl KillSwitch {
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.wakers.lock().expect("simulator state poisoned"));
        for waker in wakers {
            waker.wake();
        }
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().expect("simulator state poisoned");
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

fn killed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection dropped by the simulator")
}

/// All live connections, so shutdown can close them.
#[derive(Debug, Default)]
pub(crate) struct ConnectionRegistry {
    live: Mutex<Vec<Weak<KillSwitch>>>,
}

impl ConnectionRegistry {
    fn add(&self, switch: &Arc<KillSwitch>) {
        let mut live = self.live.lock().expect("simulator state poisoned");
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(switch));
    }

    pub(crate) fn kill_all(&self) {
        let live = std::mem::take(&mut *self.live.lock().expect("simulator state poisoned"));
        for switch in live.iter().filter_map(Weak::upgrade) {
            switch.kill();
        }
    }
}

pub(crate) struct KillableListener {
    pub(crate) inner: TcpListener,
    pub(crate) registry: Arc<ConnectionRegistry>,
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, remote)) => {
                    // Small JSON exchanges: don't let Nagle add latency nobody configured.
                    let _ = stream.set_nodelay(true);
                    let kill = Arc::new(KillSwitch::default());
                    self.registry.add(&kill);
                    return (KillableStream { inner: stream, kill }, remote);
                }
                Err(error) => {
                    // Same policy as axum's own TcpListener: per-connection failures are the
                    // client's problem; anything else (e.g. EMFILE) gets a pause before retrying.
                    if !matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!(%error, "simulator accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

pub(crate) struct KillableStream {
    inner: TcpStream,
    kill: Arc<KillSwitch>,
}

impl KillableStream {
    /// Fails if killed; otherwise registers for a wake-up on kill. Checked again after
    /// registering so a kill racing with the registration is not missed.
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        if self.kill.is_killed() {
            return Err(killed_error());
        }
        self.kill.register(cx.waker());
        if self.kill.is_killed() {
            return Err(killed_error());
        }
        Ok(())
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(error) = this.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(error) = this.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(error) = this.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(error) = this.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.kill.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Connection info handed to every request: the peer and the connection's kill switch.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionHandle {
    pub(crate) remote: SocketAddr,
    pub(crate) kill: Arc<KillSwitch>,
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnectionHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        ConnectionHandle { remote: *stream.remote_addr(), kill: stream.io().kill.clone() }
    }
}
