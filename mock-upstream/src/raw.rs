//! Upstreams written by hand on raw TCP, for what the scriptable mock cannot be: an answer
//! without end, a head read byte by byte. Tests only.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Reads into `seen` until it holds a request head: where the head ends, `None` if the
/// connection ended first.
pub async fn read_head(socket: &mut (impl AsyncRead + Unpin), seen: &mut Vec<u8>) -> Option<usize> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        let n = socket.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

/// A server that answers every request with `head`, then writes `chunk` until the client
/// goes away (a body without end when `head` says chunked; nothing more when `chunk` is
/// empty). Its URL, `http://ADDR/v1`: any path reaches it.
pub async fn endless_server(head: &'static [u8], chunk: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                read_head(&mut socket, &mut Vec::new()).await;
                if socket.write_all(head).await.is_err() {
                    return;
                }
                while !chunk.is_empty() && socket.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    url
}

/// `data` as one chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat()
}
