//! The fixed newstyle handshake: greeting, client flags, option haggling, until the client
//! picks the export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`), aborts, or breaks the rules.
//!
//! Unknown options get `NBD_REP_ERR_UNSUP` and haggling goes on; malformed ones get
//! `NBD_REP_ERR_INVALID`. What the protocol says cannot be answered (a bad magic, unknown
//! client flags, an option too long to be honest, an unknown name with `EXPORT_NAME`) ends the
//! connection: [`HandshakeError`] says why, for the log.

use crate::export::ExportInfo;
use crate::proto::{self, client, handshake, info, opt, rep};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most option data the server reads: an export name and a few info requests fit many
/// times over; more is not a client negotiating in good faith.
pub const MAX_OPTION_DATA: u32 = 64 << 10;

/// What was agreed for the transmission phase.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The transmission flags the client was given.
    pub flags: u16,
}

/// Why a handshake ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol; the connection is closed (a hard disconnect).
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The client sent `NBD_OPT_ABORT` (a soft disconnect).
    #[error("the client aborted the negotiation")]
    Aborted,
}

fn violation(s: impl Into<String>) -> HandshakeError {
    HandshakeError::Violation(s.into())
}

/// Runs the handshake for `export` on a fresh connection.
pub async fn negotiate<R, W>(
    rd: &mut R,
    wr: &mut W,
    export: &ExportInfo,
) -> Result<Session, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hello = [0u8; 18];
    hello[0..8].copy_from_slice(&proto::NBDMAGIC.to_be_bytes());
    hello[8..16].copy_from_slice(&proto::IHAVEOPT.to_be_bytes());
    hello[16..18]
        .copy_from_slice(&(handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES).to_be_bytes());
    wr.write_all(&hello).await?;
    wr.flush().await?;
    let cflags = rd.read_u32().await?;
    if cflags & !client::KNOWN != 0 {
        return Err(violation(format!("unknown client flags {cflags:#x}")));
    }
    let no_zeroes = cflags & client::NO_ZEROES != 0;
    let mut structured = false;
    loop {
        if rd.read_u64().await? != proto::IHAVEOPT {
            return Err(violation("an option without the IHAVEOPT magic"));
        }
        let option = rd.read_u32().await?;
        let len = rd.read_u32().await?;
        if len > MAX_OPTION_DATA {
            return Err(violation(format!("option {option} with {len} bytes of data")));
        }
        let mut data = vec![0u8; len as usize];
        rd.read_exact(&mut data).await?;
        match option {
            opt::EXPORT_NAME => {
                if !names_export(&data, export) {
                    // No error reply exists for EXPORT_NAME: the protocol says to disconnect.
                    return Err(violation("EXPORT_NAME of an unknown export"));
                }
                let flags = export.transmission_flags(structured);
                let mut out = Vec::with_capacity(134);
                out.extend_from_slice(&export.size.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                wr.write_all(&out).await?;
                wr.flush().await?;
                return Ok(Session { structured, flags });
            }
            opt::ABORT => {
                // The client may already be gone: a failed ACK is not an error.
                let _ = reply(wr, option, rep::ACK, &[]).await;
                return Err(HandshakeError::Aborted);
            }
            opt::LIST => {
                if !data.is_empty() {
                    reply_error(wr, option, rep::ERR_INVALID, "LIST takes no data").await?;
                    continue;
                }
                let mut d = Vec::new();
                d.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                d.extend_from_slice(export.name.as_bytes());
                d.extend_from_slice(export.description.as_bytes());
                reply(wr, option, rep::SERVER, &d).await?;
                reply(wr, option, rep::ACK, &[]).await?;
            }
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_error(wr, option, rep::ERR_INVALID, "STRUCTURED_REPLY takes no data")
                        .await?;
                    continue;
                }
                structured = true;
                reply(wr, option, rep::ACK, &[]).await?;
            }
            opt::INFO | opt::GO => {
                let Some((name, requests)) = parse_info(&data) else {
                    reply_error(wr, option, rep::ERR_INVALID, "malformed INFO/GO data").await?;
                    continue;
                };
                if !names_export(name, export) {
                    let msg = format!("no export named {:?}", String::from_utf8_lossy(name));
                    reply_error(wr, option, rep::ERR_UNKNOWN, &msg).await?;
                    continue;
                }
                let flags = export.transmission_flags(structured);
                send_info(wr, option, export, flags, &requests).await?;
                reply(wr, option, rep::ACK, &[]).await?;
                if option == opt::GO {
                    return Ok(Session { structured, flags });
                }
            }
            opt::STARTTLS => {
                reply_error(wr, option, rep::ERR_POLICY, "TLS is not offered").await?;
            }
            _ => {
                let msg = format!("option {option} is not supported");
                reply_error(wr, option, rep::ERR_UNSUP, &msg).await?;
            }
        }
    }
}

/// The export's name, or the empty name (the default export).
fn names_export(name: &[u8], export: &ExportInfo) -> bool {
    name.is_empty() || name == export.name.as_bytes()
}

/// INFO/GO data: 32-bit name length, name, 16-bit count, 16-bit info requests. Exactly that,
/// or `None`.
fn parse_info(d: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let n = u32::from_be_bytes(d.get(0..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let rest = &d[4 + n..];
    let count = usize::from(u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?));
    let list = rest.get(2..)?;
    if list.len() != 2 * count {
        return None;
    }
    Some((name, list.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()))
}

async fn send_info<W: AsyncWrite + Unpin>(
    wr: &mut W,
    option: u32,
    export: &ExportInfo,
    flags: u16,
    requests: &[u16],
) -> std::io::Result<()> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&info::EXPORT.to_be_bytes());
    d.extend_from_slice(&export.size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    reply(wr, option, rep::INFO, &d).await?;
    // Always: the server enforces the device's block size, which may not be the default.
    let mut d = Vec::with_capacity(14);
    d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    for v in [export.min_block, export.preferred_block, export.max_payload] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    reply(wr, option, rep::INFO, &d).await?;
    for (kind, text) in [(info::NAME, &export.name), (info::DESCRIPTION, &export.description)] {
        if requests.contains(&kind) && (kind == info::NAME || !text.is_empty()) {
            let mut d = kind.to_be_bytes().to_vec();
            d.extend_from_slice(text.as_bytes());
            reply(wr, option, rep::INFO, &d).await?;
        }
    }
    Ok(())
}

async fn reply<W: AsyncWrite + Unpin>(
    wr: &mut W,
    option: u32,
    kind: u32,
    data: &[u8],
) -> std::io::Result<()> {
    wr.write_all(&proto::option_reply(option, kind, data.len() as u32)).await?;
    wr.write_all(data).await?;
    wr.flush().await
}

async fn reply_error<W: AsyncWrite + Unpin>(
    wr: &mut W,
    option: u32,
    kind: u32,
    msg: &str,
) -> std::io::Result<()> {
    reply(wr, option, kind, msg.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_data_is_parsed_exactly() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&[0, 3, 0, 1]);
        let (name, reqs) = parse_info(&d).unwrap();
        assert_eq!((name, reqs), (&b"abc"[..], vec![3, 1]));
        assert!(parse_info(&d[..d.len() - 1]).is_none(), "a truncated list");
        let mut long = d.clone();
        long.push(0);
        assert!(parse_info(&long).is_none(), "trailing bytes");
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 4]);
        assert!(parse_info(&huge).is_none(), "a name longer than the data");
        assert!(parse_info(&[0, 0]).is_none());
    }
}
