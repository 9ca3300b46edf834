//! A relay in front of the registration service that rewrites the HTTP/2 `:authority` of the
//! kubelet's requests to `localhost` (ADR 0008). The kubelet's plugin watcher (grpc-go) sends the
//! socket's path as `:authority`, which h2 (under tonic) refuses as malformed (hyperium/h2#487),
//! so the driver never registers. grpc-go itself sends `localhost` for Unix sockets elsewhere.
//!
//! Client-to-server bytes are parsed as HTTP/2 frames (RFC 9113 §4.1) after the 24-byte preface.
//! Every header block (HEADERS plus its CONTINUATIONs) is decoded with the client's HPACK state,
//! `:authority` replaced, and re-encoded as literals that never touch the dynamic table, so the
//! server's decoder needs nothing of ours. All other frames, and the whole server-to-client
//! direction, pass byte for byte; the client therefore sizes its table by the server's SETTINGS.

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Every peer accepts frames this large (SETTINGS_MAX_FRAME_SIZE is never below it), so a block
/// split at this size respects whatever the server advertised without reading its SETTINGS.
const MIN_MAX_FRAME_SIZE: usize = 16_384;
/// The largest frame we accept from the client: the most any HTTP/2 peer may send (2^24-1).
const MAX_FRAME: usize = (1 << 24) - 1;
const AUTHORITY: &[u8] = b":authority";
pub const REWRITTEN_AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; 9]) -> Self {
        Self {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(self.len).expect("frame length fits 24 bits").to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

/// A HEADERS frame whose block is not complete yet (waiting for CONTINUATION frames).
struct Pending {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// The client-to-server state: the client's HPACK table and any header block in progress.
pub struct Rewriter {
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<Pending>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self { decoder: loona_hpack::Decoder::new(), pending: None }
    }
}

impl Rewriter {
    /// Takes one client frame and appends what the server should receive to `out`: the frame
    /// itself, nothing (a header block still incomplete) or the rewritten header block.
    pub fn frame(&mut self, h: FrameHeader, payload: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        ensure!(payload.len() == h.len, "frame length {} but {} bytes", h.len, payload.len());
        if let Some(p) = &mut self.pending {
            // RFC 9113 §6.10: nothing may come between a HEADERS and its CONTINUATIONs.
            ensure!(
                h.kind == CONTINUATION && h.stream == p.stream,
                "header block interrupted by frame type {}",
                h.kind
            );
            p.block.extend_from_slice(payload);
            if h.flags & END_HEADERS != 0 {
                let p = self.pending.take().expect("pending block");
                self.emit(p, out)?;
            }
            return Ok(());
        }
        match h.kind {
            HEADERS => {
                let (priority, block) = headers_fragment(h.flags, payload)?;
                let p = Pending {
                    stream: h.stream,
                    end_stream: h.flags & END_STREAM != 0,
                    priority,
                    block: block.to_vec(),
                };
                if h.flags & END_HEADERS != 0 {
                    self.emit(p, out)?;
                } else {
                    self.pending = Some(p);
                }
            }
            CONTINUATION => bail!("CONTINUATION without a HEADERS frame"),
            // A client never sends PUSH_PROMISE (RFC 9113 §8.4); its block would change our table.
            PUSH_PROMISE => bail!("PUSH_PROMISE from a client"),
            _ => {
                h.write(out);
                out.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    fn emit(&mut self, p: Pending, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let fields = self.decoder.decode(&p.block).map_err(|e| anyhow::anyhow!("HPACK: {e}"))?;
        let mut block = Vec::with_capacity(p.block.len() + 16);
        for (name, value) in &fields {
            let value = if name.as_slice() == AUTHORITY { REWRITTEN_AUTHORITY } else { value.as_slice() };
            encode_literal(name, value, &mut block);
        }
        let mut first = Vec::with_capacity(MIN_MAX_FRAME_SIZE);
        if let Some(pr) = p.priority {
            first.extend_from_slice(&pr);
        }
        let room = MIN_MAX_FRAME_SIZE - first.len();
        let (head, mut rest) = block.split_at(block.len().min(room));
        first.extend_from_slice(head);
        let mut flags = if p.end_stream { END_STREAM } else { 0 };
        if p.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        FrameHeader { len: first.len(), kind: HEADERS, flags, stream: p.stream }.write(out);
        out.extend_from_slice(&first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MIN_MAX_FRAME_SIZE));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            FrameHeader { len: chunk.len(), kind: CONTINUATION, flags, stream: p.stream }.write(out);
            out.extend_from_slice(chunk);
        }
        Ok(())
    }
}

/// The header block fragment of a HEADERS payload, without padding, and its priority fields.
fn headers_fragment(flags: u8, payload: &[u8]) -> anyhow::Result<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, tail) = body.split_first().context("PADDED HEADERS without a pad length")?;
        pad = usize::from(n);
        body = tail;
    }
    let priority = if flags & PRIORITY != 0 {
        ensure!(body.len() >= 5, "PRIORITY HEADERS too short");
        let (pr, tail) = body.split_at(5);
        body = tail;
        Some(pr.try_into().expect("5 bytes"))
    } else {
        None
    };
    ensure!(pad <= body.len(), "padding longer than the HEADERS payload");
    Ok((priority, &body[..body.len() - pad]))
}

/// An HPACK "literal header field without indexing — new name" (RFC 7541 §6.2.2), no Huffman.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_string(name, out);
    encode_string(value, out);
}

/// An HPACK string literal (RFC 7541 §5.2) with a 7-bit prefix length (§5.1), not Huffman coded.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    let mut n = s.len();
    if n < 0x7f {
        out.push(n as u8);
    } else {
        out.push(0x7f);
        n -= 0x7f;
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// Relays one connection: `client` (the kubelet) to `server` (the tonic service), rewriting the
/// client's header blocks, and the server's bytes back unchanged. Returns when either side ends.
pub async fn relay<C, S>(client: C, server: S) -> anyhow::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let up = async {
        let r = client_to_server(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
        r
    };
    let down = async {
        tokio::io::copy(&mut sr, &mut cw).await.context("server to client")?;
        let _ = cw.shutdown().await;
        Ok::<_, anyhow::Error>(())
    };
    // Either direction ending ends the connection (the other side then sees EOF or a reset).
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

async fn client_to_server<R, W>(client: &mut R, server: &mut W) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    client.read_exact(&mut preface).await.context("reading the client preface")?;
    ensure!(&preface == PREFACE, "not an HTTP/2 client preface");
    server.write_all(&preface).await?;
    let mut rw = Rewriter::default();
    let mut out = Vec::new();
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 9];
        match client.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e).context("reading a frame header"),
        }
        let h = FrameHeader::parse(&head);
        ensure!(h.len <= MAX_FRAME, "frame too large");
        payload.resize(h.len, 0);
        client.read_exact(&mut payload).await.context("reading a frame payload")?;
        out.clear();
        rw.frame(h, &payload, &mut out)?;
        if !out.is_empty() {
            server.write_all(&out).await?;
            server.flush().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> (FrameHeader, Vec<u8>) {
        (FrameHeader { len: payload.len(), kind, flags, stream }, payload.to_vec())
    }

    /// Splits `bytes` back into frames (the server's view).
    fn frames(mut bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut v = Vec::new();
        while !bytes.is_empty() {
            let h = FrameHeader::parse(bytes[..9].try_into().unwrap());
            v.push((h, bytes[9..9 + h.len].to_vec()));
            bytes = &bytes[9 + h.len..];
        }
        v
    }

    /// The server's view of header blocks: one fresh decoder for the whole connection, as h2 has.
    fn server_decode(server: &mut loona_hpack::Decoder<'static>, out: &[u8]) -> Vec<(String, String)> {
        let fs = frames(out);
        let mut block = Vec::new();
        for (h, p) in &fs {
            match h.kind {
                HEADERS => {
                    let (_, b) = headers_fragment(h.flags, p).unwrap();
                    block.extend_from_slice(b);
                }
                CONTINUATION => block.extend_from_slice(p),
                other => panic!("unexpected frame {other}"),
            }
        }
        assert_ne!(fs.last().unwrap().0.flags & END_HEADERS, 0, "the block is not ended");
        let fields = server.decode(&block).unwrap();
        fields.into_iter().map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())).collect()
    }

    fn request(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority), ("te", "trailers")]
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// A client's HPACK encoder (it indexes what it sends, like grpc-go's).
    fn client_encode(enc: &mut loona_hpack::Encoder<'static>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        enc.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    const SOCK: &str = "/var/lib/kubelet/plugins_registry/blockproxy.io-reg.sock";

    #[test]
    fn authority_becomes_localhost_and_nothing_else_changes() {
        let mut rw = Rewriter::default();
        let mut enc = loona_hpack::Encoder::new();
        let block = client_encode(&mut enc, &request(SOCK, "/pluginregistration.Registration/GetInfo"));
        let (h, p) = frame(HEADERS, END_HEADERS, 1, &block);
        let mut out = Vec::new();
        rw.frame(h, &p, &mut out).unwrap();
        let got = server_decode(&mut loona_hpack::Decoder::new(), &out);
        let mut want: Vec<(String, String)> = request(SOCK, "/pluginregistration.Registration/GetInfo")
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        want[3].1 = "localhost".into();
        assert_eq!(got, want);
        assert_eq!(frames(&out)[0].0.flags, END_HEADERS);
    }

    #[test]
    fn other_frames_pass_byte_for_byte() {
        let mut rw = Rewriter::default();
        let mut out = Vec::new();
        let settings = [0, 0x4, 0, 0, 0x10, 0]; // SETTINGS_INITIAL_WINDOW_SIZE = 1 MiB
        let (h, p) = frame(0x4, 0, 0, &settings);
        rw.frame(h, &p, &mut out).unwrap();
        let (h, p) = frame(0x0, END_STREAM, 3, b"\0\0\0\0\x05hello");
        rw.frame(h, &p, &mut out).unwrap();
        let mut want = Vec::new();
        FrameHeader { len: 6, kind: 0x4, flags: 0, stream: 0 }.write(&mut want);
        want.extend_from_slice(&settings);
        FrameHeader { len: 10, kind: 0x0, flags: END_STREAM, stream: 3 }.write(&mut want);
        want.extend_from_slice(b"\0\0\0\0\x05hello");
        assert_eq!(out, want);
    }

    /// An HPACK literal with incremental indexing of a static-table name (RFC 7541 §6.2.1).
    fn indexed_literal(name_index: u8, value: &str, out: &mut Vec<u8>) {
        out.push(0x40 | name_index);
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }

    #[test]
    fn dynamic_table_entries_of_earlier_requests_are_resolved() {
        // Hand-encoded like grpc-go: :path and :authority added to the client's dynamic table,
        // and the second request refers to the first's :authority by its index only.
        let get_info = "/pluginregistration.Registration/GetInfo";
        let notify = "/pluginregistration.Registration/NotifyRegistrationStatus";
        let mut first = vec![0x83, 0x86]; // :method POST, :scheme http
        indexed_literal(4, get_info, &mut first); // :path -> dynamic 62
        indexed_literal(1, SOCK, &mut first); // :authority -> dynamic 62, :path now 63
        let mut second = vec![0x83, 0x86];
        indexed_literal(4, notify, &mut second); // -> 62; :authority now 63
        second.push(0x80 | 63);
        let mut rw = Rewriter::default();
        let mut server = loona_hpack::Decoder::new();
        for (stream, block, path) in [(1, first, get_info), (3, second, notify)] {
            let mut out = Vec::new();
            let (h, p) = frame(HEADERS, END_HEADERS, stream, &block);
            rw.frame(h, &p, &mut out).unwrap();
            let got = server_decode(&mut server, &out);
            let s = |a: &str, b: &str| (a.to_string(), b.to_string());
            assert_eq!(
                got,
                vec![s(":method", "POST"), s(":scheme", "http"), s(":path", path), s(":authority", "localhost")]
            );
        }
    }

    #[test]
    fn padding_priority_and_continuation_are_reassembled() {
        let mut rw = Rewriter::default();
        // Hand-encoded: :method POST (static 3), :authority (static name 1) literal with
        // incremental indexing "/x.sock", then the same again from the dynamic table (index 62).
        let mut block = vec![0x83, 0x41, 7];
        block.extend_from_slice(b"/x.sock");
        block.push(0x80 | 62);
        let priority = [0x80, 0, 0, 1, 15]; // exclusive, depends on stream 1, weight 16
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&priority);
        payload.extend_from_slice(&block[..4]);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut out = Vec::new();
        let (h, p) = frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload);
        rw.frame(h, &p, &mut out).unwrap();
        assert!(out.is_empty(), "emitted before END_HEADERS");
        let (h, p) = frame(CONTINUATION, 0, 5, &block[4..8]);
        rw.frame(h, &p, &mut out).unwrap();
        let (h, p) = frame(CONTINUATION, END_HEADERS, 5, &block[8..]);
        rw.frame(h, &p, &mut out).unwrap();
        let fs = frames(&out);
        assert_eq!(fs.len(), 1);
        assert_eq!(fs[0].0.flags, PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(fs[0].1[..5], priority);
        let got = server_decode(&mut loona_hpack::Decoder::new(), &out);
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(got, vec![s(":method", "POST"), s(":authority", "localhost"), s(":authority", "localhost")]);
    }

    #[test]
    fn a_block_larger_than_a_frame_is_split_into_continuations() {
        let mut rw = Rewriter::default();
        let mut fields = request(SOCK, "/p");
        fields.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = loona_hpack::Encoder::new().encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut out = Vec::new();
        // The client's own split: three frames.
        let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
        for (i, c) in chunks.iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let flags = if i + 1 == chunks.len() { END_HEADERS } else { 0 };
            let (h, p) = frame(kind, flags, 1, c);
            rw.frame(h, &p, &mut out).unwrap();
        }
        let fs = frames(&out);
        assert!(fs.len() >= 3, "{} frames", fs.len());
        assert!(fs.iter().all(|(h, _)| h.len <= MIN_MAX_FRAME_SIZE));
        assert_eq!(fs[0].0.kind, HEADERS);
        assert!(fs[1..].iter().all(|(h, _)| h.kind == CONTINUATION));
        let got = server_decode(&mut loona_hpack::Decoder::new(), &out);
        assert!(got.contains(&(":authority".into(), "localhost".into())));
        assert_eq!(got.last().unwrap().1.len(), 40_000);
    }

    #[test]
    fn a_frame_between_headers_and_continuation_is_refused() {
        let mut rw = Rewriter::default();
        let mut out = Vec::new();
        let (h, p) = frame(HEADERS, 0, 1, &[0x83]);
        rw.frame(h, &p, &mut out).unwrap();
        let (h, p) = frame(0x0, 0, 1, b"x");
        assert!(rw.frame(h, &p, &mut out).is_err());
    }

    #[test]
    fn long_strings_use_multi_byte_lengths() {
        for n in [0usize, 1, 126, 127, 128, 255, 300, 16_384, 70_000] {
            let mut block = Vec::new();
            encode_literal(b"k", &vec![b'v'; n], &mut block);
            let got = loona_hpack::Decoder::new().decode(&block).unwrap();
            assert_eq!(got, vec![(b"k".to_vec(), vec![b'v'; n])], "length {n}");
        }
    }
}
