//! The shell's sockets over turmoil's simulated TCP.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use runnel_server::shell::transport::Transport;

/// turmoil's `TcpListener` and `TcpStream`: every byte the shell sends
/// crosses turmoil's links, with their latency, partitions and holds.
///
/// Tasks go on the host's `LocalSet`. A crash drops them in the order they
/// were spawned; tasks of the runtime itself would drop in an order that
/// depends on tokio's process-wide task ids (its task list is sharded by
/// id), so that the sockets they hold would close, and their FIN and RST
/// segments draw latencies, in an order that changes from one run to the
/// next in the same process.
pub struct TurmoilTransport;

impl Transport for TurmoilTransport {
    type Listener = turmoil::net::TcpListener;
    type Stream = turmoil::net::TcpStream;
    type ReadHalf = turmoil::net::tcp::OwnedReadHalf;
    type WriteHalf = turmoil::net::tcp::OwnedWriteHalf;

    async fn bind(address: SocketAddr) -> io::Result<Self::Listener> {
        turmoil::net::TcpListener::bind(address).await
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        listener.accept().await
    }

    async fn connect(address: &str) -> io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(address).await
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
        tokio::task::spawn_local(future)
    }
}
