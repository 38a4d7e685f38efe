//! The sockets the shell uses and how it spawns its tasks, behind one small
//! trait, so that the same connection handling runs over tokio's TCP in
//! production and over a simulated network (turmoil's) in tests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// Listening, accepting and connecting TCP streams, and spawning the tasks
/// that serve them. Everything else the shell does with a stream goes
/// through `AsyncRead` and `AsyncWrite`.
pub trait Transport: Send + Sync + 'static {
    type Listener: Send + Sync + 'static;
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type ReadHalf: AsyncRead + Unpin + Send + 'static;
    type WriteHalf: AsyncWrite + Unpin + Send + 'static;

    fn bind(address: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// Connects to `address`, a `host:port` that may need resolving.
    fn connect(address: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Owned halves, so that one task reads while another writes.
    fn split(stream: Self::Stream) -> (Self::ReadHalf, Self::WriteHalf);

    /// Small frames (requests, consensus messages) leave at once.
    fn set_nodelay(stream: &Self::Stream);

    /// Spawns one of the shell's tasks; called inside the runtime.
    fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;
}

/// Production: the operating system's TCP through tokio.
pub struct TokioTransport;

impl Transport for TokioTransport {
    type Listener = tokio::net::TcpListener;
    type Stream = tokio::net::TcpStream;
    type ReadHalf = tokio::net::tcp::OwnedReadHalf;
    type WriteHalf = tokio::net::tcp::OwnedWriteHalf;

    async fn bind(address: SocketAddr) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(address).await
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        listener.accept().await
    }

    async fn connect(address: &str) -> io::Result<Self::Stream> {
        tokio::net::TcpStream::connect(address).await
    }

    fn split(stream: Self::Stream) -> (Self::ReadHalf, Self::WriteHalf) {
        stream.into_split()
    }

    fn set_nodelay(stream: &Self::Stream) {
        let _ = stream.set_nodelay(true);
    }

    fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(future)
    }
}
