//! The Redis protocol (RESP 2), as much as the kv example speaks: requests are arrays of bulk
//! strings (what `redis-cli` and `redis-benchmark` send) or inline commands (a line of words);
//! replies are built with [`Reply`]. Shared by the kv server (framing) and libkv (commands):
//! both include this file.
use alloc::vec::Vec;

/// Longest argument, and most arguments, in one request.
pub const MAX_ARG: usize = 512 * 1024 * 1024;
/// Most arguments of one request.
pub const MAX_ARGS: usize = 1024 * 1024;

/// What [`parse`] found at the start of a buffer.
pub enum Parsed<'a> {
    /// A whole request: its arguments, and how many bytes it took.
    Request(Vec<&'a [u8]>, usize),
    /// Not all of it arrived yet.
    Incomplete,
    /// Not RESP: the connection is closed after an error reply.
    Invalid(&'static str),
}

/// A decimal number up to `\r\n` at `at`: (value, index after the line).
fn number(buf: &[u8], at: usize) -> Option<Result<(i64, usize), &'static str>> {
    let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
    let text = core::str::from_utf8(&buf[at..end]).ok();
    Some(
        text.and_then(|t| t.parse::<i64>().ok())
            .map(|n| (n, end + 2))
            .ok_or("invalid length"),
    )
}

/// Parses one request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let Some(&first) = buf.first() else {
        return Parsed::Incomplete;
    };
    if first != b'*' {
        // An inline command: words up to the end of the line.
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            return if buf.len() > 64 * 1024 {
                Parsed::Invalid("inline request too long")
            } else {
                Parsed::Incomplete
            };
        };
        let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
        let args = line.split(|&b| b == b' ').filter(|w| !w.is_empty()).collect();
        return Parsed::Request(args, end + 1);
    }
    let (count, mut at) = match number(buf, 1) {
        None => return Parsed::Incomplete,
        Some(Err(e)) => return Parsed::Invalid(e),
        Some(Ok(n)) => n,
    };
    if !(0..=MAX_ARGS as i64).contains(&count) {
        return Parsed::Invalid("invalid multibulk length");
    }
    let mut args = Vec::with_capacity(count as usize);
    for _ in 0..count {
        match buf.get(at) {
            None => return Parsed::Incomplete,
            Some(b'$') => {}
            Some(_) => return Parsed::Invalid("expected '$'"),
        }
        let (len, start) = match number(buf, at + 1) {
            None => return Parsed::Incomplete,
            Some(Err(e)) => return Parsed::Invalid(e),
            Some(Ok(n)) => n,
        };
        if !(0..=MAX_ARG as i64).contains(&len) {
            return Parsed::Invalid("invalid bulk length");
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Parsed::Incomplete;
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Parsed::Invalid("bulk string not followed by CRLF");
        }
        args.push(&buf[start..end]);
        at = end + 2;
    }
    Parsed::Request(args, at)
}

/// A reply being written into a bounded buffer; one that does not fit is marked
/// [`Reply::overflowed`] (the caller answers an error instead).
pub struct Reply<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl<'a> Reply<'a> {
    /// A reply into `buf`.
    pub fn new(buf: &'a mut [u8]) -> Reply<'a> {
        Reply {
            buf,
            len: 0,
            overflow: false,
        }
    }

    /// Bytes written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some of it did not fit.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Appends raw bytes.
    pub fn raw(&mut self, b: &[u8]) {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
    }

    fn decimal(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.raw(b"-");
        }
        self.raw(&digits[i..]);
    }

    /// `+text`.
    pub fn simple(&mut self, text: &[u8]) {
        self.raw(b"+");
        self.raw(text);
        self.raw(b"\r\n");
    }

    /// `-text`.
    pub fn error(&mut self, text: &[u8]) {
        self.raw(b"-");
        self.raw(text);
        self.raw(b"\r\n");
    }

    /// `:n`.
    pub fn integer(&mut self, n: i64) {
        self.raw(b":");
        self.decimal(n);
        self.raw(b"\r\n");
    }

    /// `$len` and the bytes, or the null bulk string.
    pub fn bulk(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.raw(b"$");
                self.decimal(b.len() as i64);
                self.raw(b"\r\n");
                self.raw(b);
                self.raw(b"\r\n");
            }
            None => self.raw(b"$-1\r\n"),
        }
    }

    /// `*n` (the elements follow).
    pub fn array(&mut self, n: usize) {
        self.raw(b"*");
        self.decimal(n as i64);
        self.raw(b"\r\n");
    }
}

/// Encodes `args` for `kv_exec`: a little-endian `u32` count, then each argument as a `u32`
/// length and its bytes.
pub fn encode_args(args: &[&[u8]], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(args.len() as u32).to_le_bytes());
    for a in args {
        out.extend_from_slice(&(a.len() as u32).to_le_bytes());
        out.extend_from_slice(a);
    }
}

/// Decodes what [`encode_args`] wrote; None if it is malformed.
pub fn decode_args(mut b: &[u8]) -> Option<Vec<&[u8]>> {
    let word = |b: &mut &[u8]| -> Option<usize> {
        let (w, rest) = b.split_first_chunk::<4>()?;
        *b = rest;
        Some(u32::from_le_bytes(*w) as usize)
    };
    let n = word(&mut b)?;
    let mut args = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let len = word(&mut b)?;
        let (a, rest) = b.split_at_checked(len)?;
        args.push(a);
        b = rest;
    }
    b.is_empty().then_some(args)
}
