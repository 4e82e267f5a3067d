//! systemd's private socket (`/run/systemd/private`), made acceptable to zbus.
//!
//! On a direct connection systemd stamps every message with the sender
//! `org.freedesktop.systemd1`, a well-known name, where the D-Bus
//! specification (and zbus) expect a unique name; zbus rejects such
//! messages. This module authenticates itself (SASL EXTERNAL), then hands
//! zbus a socket whose reader rewrites that 24-byte sender in place to a
//! unique name of the same length, so no other byte moves.
//!
//! The private socket needs no dbus-daemon, so the launcher keeps working
//! while the system bus restarts.

use std::{
    io,
    os::fd::{BorrowedFd, OwnedFd},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use zbus::connection::{
    Builder,
    socket::{ReadHalf, Socket, Split, WriteHalf},
};

/// What systemd puts in the sender field of direct connections.
const SYSTEMD_SENDER: &[u8] = b"org.freedesktop.systemd1";
/// A valid unique name of exactly the same length.
const STAND_IN: &[u8] = b":1.systemd1-private-peer";
const _: () = assert!(SYSTEMD_SENDER.len() == STAND_IN.len());
/// The D-Bus specification's limit on a message.
const MAX_MESSAGE: usize = 128 * 1024 * 1024;
const FIELD_SENDER: u8 = 7;

/// Connect and authenticate to systemd's private socket at `address`
/// (`unix:path=…`), returning a builder for the peer-to-peer connection.
pub async fn connect(address: &str) -> zbus::Result<Builder<'static>> {
    let path = address
        .strip_prefix("unix:path=")
        .map(|p| p.split(',').next().unwrap_or(p))
        .ok_or_else(|| {
            zbus::Error::Address(format!(
                "{address:?}: the private socket must be a unix:path= address"
            ))
        })?;
    let mut stream = UnixStream::connect(path).await?;
    let guid = authenticate(&mut stream).await?;
    Ok(Builder::authenticated_socket(PrivateSocket(stream), guid).p2p())
}

/// SASL EXTERNAL as the process's own uid; returns the server's GUID.
async fn authenticate(stream: &mut UnixStream) -> zbus::Result<String> {
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    let hex: String = uid
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    stream
        .write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())
        .await?;
    let line = read_line(stream).await?;
    let guid = line
        .strip_prefix("OK ")
        .ok_or_else(|| zbus::Error::Handshake(format!("authentication refused: {line}")))?
        .to_owned();
    // systemd's server does not answer the first message of a client that
    // goes straight to BEGIN (observed with systemd 252); sd-bus clients
    // such as systemctl negotiate fd passing first, and so do we. The
    // answer (AGREE_UNIX_FD or ERROR) does not matter: no fds are passed.
    stream.write_all(b"NEGOTIATE_UNIX_FD\r\n").await?;
    read_line(stream).await?;
    stream.write_all(b"BEGIN\r\n").await?;
    Ok(guid)
}

/// One `\r\n`-terminated line of the SASL exchange, without the ending.
async fn read_line(stream: &mut UnixStream) -> zbus::Result<String> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() > 512 {
            return Err(zbus::Error::Handshake("over-long reply".into()));
        }
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(zbus::Error::Handshake("connection closed".into()));
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

#[derive(Debug)]
struct PrivateSocket(UnixStream);

impl Socket for PrivateSocket {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        let (read, write) = self.0.into_split();
        Split::new(
            Reader {
                inner: read,
                pending: Vec::new(),
                offset: 0,
            },
            Writer(write),
        )
    }
}

/// Reads whole messages, rewrites the sender, then serves their bytes.
#[derive(Debug)]
struct Reader {
    inner: OwnedReadHalf,
    pending: Vec<u8>,
    offset: usize,
}

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

fn read_u32(bytes: &[u8], at: usize, little: bool) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(if little {
        u32::from_le_bytes(b)
    } else {
        u32::from_be_bytes(b)
    } as usize)
}

/// Total length of the message whose 16-byte fixed header is `head`.
fn message_len(head: &[u8; 16]) -> io::Result<usize> {
    let little = match head[0] {
        b'l' => true,
        b'B' => false,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad endianness byte {other:#x}"),
            ));
        }
    };
    let body = read_u32(head, 4, little).unwrap_or(0);
    let fields = read_u32(head, 12, little).unwrap_or(0);
    let total = align(16 + fields, 8) + body;
    if total > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {total} bytes"),
        ));
    }
    Ok(total)
}

/// Replace a sender field equal to [`SYSTEMD_SENDER`] with [`STAND_IN`].
/// Walks the header field array; anything unexpected leaves the message as
/// it is (zbus then judges it).
pub(crate) fn rewrite_sender(msg: &mut [u8]) {
    let little = msg.first() == Some(&b'l');
    let Some(fields_len) = read_u32(msg, 12, little) else {
        return;
    };
    let end = 16 + fields_len;
    let mut pos = 16;
    while pos < end {
        pos = align(pos, 8);
        let (Some(&code), Some(&sig_len)) = (msg.get(pos), msg.get(pos + 1)) else {
            return;
        };
        let sig_len = sig_len as usize;
        let Some(sig) = msg.get(pos + 2..pos + 2 + sig_len) else {
            return;
        };
        let sig = sig.to_vec();
        pos += 2 + sig_len + 1;
        match sig.as_slice() {
            b"s" | b"o" => {
                pos = align(pos, 4);
                let Some(len) = read_u32(msg, pos, little) else {
                    return;
                };
                let start = pos + 4;
                if code == FIELD_SENDER && msg.get(start..start + len) == Some(SYSTEMD_SENDER) {
                    msg[start..start + len].copy_from_slice(STAND_IN);
                    return;
                }
                pos = start + len + 1;
            }
            b"g" => {
                let Some(&len) = msg.get(pos) else { return };
                pos += 1 + len as usize + 1;
            }
            b"u" => pos = align(pos, 4) + 4,
            _ => return,
        }
    }
}

#[async_trait::async_trait]
impl ReadHalf for Reader {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        if self.offset == self.pending.len() {
            let mut head = [0u8; 16];
            match self.inner.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok((0, vec![])),
                Err(e) => return Err(e),
            }
            let total = message_len(&head)?;
            self.pending.clear();
            self.pending.resize(total, 0);
            self.pending[..16].copy_from_slice(&head);
            self.inner.read_exact(&mut self.pending[16..]).await?;
            rewrite_sender(&mut self.pending);
            self.offset = 0;
        }
        let n = buf.len().min(self.pending.len() - self.offset);
        buf[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
        self.offset += n;
        Ok((n, vec![]))
    }
}

#[derive(Debug)]
struct Writer(OwnedWriteHalf);

#[async_trait::async_trait]
impl WriteHalf for Writer {
    async fn sendmsg(&mut self, buffer: &[u8], _fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        self.0.write(buffer).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.0.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian signal header: PATH (o), SENDER (s), SIGNATURE (g).
    fn message(sender: &[u8]) -> Vec<u8> {
        let mut fields = Vec::new();
        let push_str = |fields: &mut Vec<u8>, code: u8, sig: u8, value: &[u8]| {
            while !fields.len().is_multiple_of(8) {
                fields.push(0);
            }
            fields.extend([code, 1, sig, 0]);
            fields.extend((value.len() as u32).to_le_bytes());
            fields.extend(value);
            fields.push(0);
        };
        push_str(&mut fields, 1, b'o', b"/org/freedesktop/systemd1");
        push_str(&mut fields, FIELD_SENDER, b's', sender);
        while !fields.len().is_multiple_of(8) {
            fields.push(0);
        }
        fields.extend([8, 1, b'g', 0, 1, b's', 0]);
        let mut msg = vec![b'l', 4, 1, 1];
        msg.extend(0u32.to_le_bytes());
        msg.extend(7u32.to_le_bytes());
        msg.extend((fields.len() as u32).to_le_bytes());
        msg.extend(fields);
        msg
    }

    #[test]
    fn rewrites_only_the_systemd_sender_in_place() {
        let mut msg = message(SYSTEMD_SENDER);
        let before = msg.len();
        rewrite_sender(&mut msg);
        assert_eq!(msg.len(), before);
        let text = String::from_utf8_lossy(&msg);
        assert!(text.contains(":1.systemd1-private-peer"), "{text}");
        assert!(text.contains("/org/freedesktop/systemd1"), "path untouched");

        let mut other = message(b":1.42");
        let copy = other.clone();
        rewrite_sender(&mut other);
        assert_eq!(other, copy);
    }

    #[test]
    fn message_length_comes_from_the_fixed_header() {
        let mut head = [0u8; 16];
        head[0] = b'l';
        head[4..8].copy_from_slice(&10u32.to_le_bytes());
        head[12..16].copy_from_slice(&13u32.to_le_bytes());
        assert_eq!(message_len(&head).unwrap(), 32 + 10);
        head[0] = b'x';
        assert!(message_len(&head).is_err());
    }
}
