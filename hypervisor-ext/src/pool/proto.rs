//! The messages between `pvmctl run` (the client) and a pool member, defined once here.
//!
//! The client sends one [`Request`] on a Unix stream socket, with four descriptors attached to
//! its first byte (`SCM_RIGHTS`): its standard input, output and error and its working
//! directory. The member answers with fixed-size [`Reply`] records: `Accepted` (or `Refused`,
//! and the client boots cold), then `Exited` when the run is over.

/// Descriptors a request carries: stdin, stdout, stderr, the working directory (`O_PATH`).
pub(super) const REQUEST_FDS: usize = 4;

/// The request header: magic, version, body length (little-endian `u32`s).
pub(super) const HEADER_LEN: usize = 12;

const MAGIC: u32 = u32::from_le_bytes(*b"PVMW");
const VERSION: u32 = 1;

/// Largest request body (arguments and environment); a larger one boots cold.
pub(super) const MAX_BODY: usize = 1 << 20;

/// What `pvmctl run` asks a member to do: run pvmctl with these arguments and environment.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Request {
    /// Device and inode of the client's executable: a member runs only its own build's requests.
    pub exe: (u64, u64),
    /// The client's file mode creation mask.
    pub umask: u32,
    /// The client's arguments, `argv[0]` included.
    pub argv: Vec<Vec<u8>>,
    /// The client's environment, `KEY=VALUE` each.
    pub env: Vec<Vec<u8>>,
}

/// Why a request cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum ProtoError {
    /// Not a request of this protocol version.
    #[error("not a pool request of version {VERSION}")]
    Version,
    /// Longer than [`MAX_BODY`].
    #[error("request of {0} bytes is too long")]
    TooLong(usize),
    /// Its lengths and counts do not add up.
    #[error("malformed request")]
    Malformed,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_list(out: &mut Vec<u8>, list: &[Vec<u8>]) {
    put_u32(out, list.len() as u32);
    for item in list {
        put_u32(out, item.len() as u32);
        out.extend_from_slice(item);
    }
}

/// A cursor over a request body that fails on any read past its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], ProtoError> {
        if n > self.0.len() {
            return Err(ProtoError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from(self.u32()?) | (u64::from(self.u32()?) << 32))
    }

    fn list(&mut self) -> Result<Vec<Vec<u8>>, ProtoError> {
        let n = self.u32()? as usize;
        // Each item takes at least its 4-byte length: a count past that is a lie.
        if n > self.0.len() / 4 {
            return Err(ProtoError::Malformed);
        }
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.u32()? as usize;
            list.push(self.bytes(len)?.to_vec());
        }
        Ok(list)
    }
}

impl Request {
    /// The request as sent: header, then body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for half in [self.exe.0, self.exe.1] {
            put_u32(&mut body, half as u32);
            put_u32(&mut body, (half >> 32) as u32);
        }
        put_u32(&mut body, self.umask);
        put_list(&mut body, &self.argv);
        put_list(&mut body, &self.env);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        put_u32(&mut out, MAGIC);
        put_u32(&mut out, VERSION);
        put_u32(&mut out, body.len() as u32);
        out.extend_from_slice(&body);
        out
    }

    /// The body length a header announces.
    pub fn body_len(header: &[u8; HEADER_LEN]) -> Result<usize, ProtoError> {
        let mut r = Reader(header);
        if r.u32()? != MAGIC || r.u32()? != VERSION {
            return Err(ProtoError::Version);
        }
        let len = r.u32()? as usize;
        if len > MAX_BODY {
            return Err(ProtoError::TooLong(len));
        }
        Ok(len)
    }

    /// Reads a body (all of it, nothing more).
    pub fn decode(body: &[u8]) -> Result<Request, ProtoError> {
        let mut r = Reader(body);
        let exe = (r.u64()?, r.u64()?);
        let umask = r.u32()?;
        let argv = r.list()?;
        let env = r.list()?;
        if !r.0.is_empty() {
            return Err(ProtoError::Malformed);
        }
        Ok(Request {
            exe,
            umask,
            argv,
            env,
        })
    }
}

/// Why a member turned a request down (the client then boots cold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The client is another build of pvmctl than the pool's.
    OtherBuild = 1,
    /// The client runs as another user.
    OtherUser = 2,
    /// The request is not `pvmctl run`.
    NotRun = 3,
    /// The request could not be read.
    Malformed = 4,
}

/// A member's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// The member runs the request; its pid (the pVM's id).
    Accepted(u32),
    /// The member does not run it.
    Refused(Refusal),
    /// The run is over, with this exit status.
    Exited(u8),
}

/// Bytes of one encoded [`Reply`].
pub(super) const REPLY_LEN: usize = 8;

impl Reply {
    /// Tag byte, three zero bytes, value.
    pub fn encode(self) -> [u8; REPLY_LEN] {
        let (tag, value) = match self {
            Reply::Accepted(pid) => (1, pid),
            Reply::Refused(why) => (2, why as u32),
            Reply::Exited(code) => (3, u32::from(code)),
        };
        let mut out = [0; REPLY_LEN];
        out[0] = tag;
        out[4..].copy_from_slice(&value.to_le_bytes());
        out
    }

    /// A reply as received; `None` for anything else.
    pub fn decode(b: &[u8; REPLY_LEN]) -> Option<Reply> {
        let value = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if b[1..4] != [0, 0, 0] {
            return None;
        }
        let refusal = |v| {
            [
                Refusal::OtherBuild,
                Refusal::OtherUser,
                Refusal::NotRun,
                Refusal::Malformed,
            ]
            .into_iter()
            .find(|r| *r as u32 == v)
        };
        match b[0] {
            1 => Some(Reply::Accepted(value)),
            2 => refusal(value).map(Reply::Refused),
            3 => u8::try_from(value).ok().map(Reply::Exited),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Request {
        Request {
            exe: (0x0102_0304_0506_0708, 42),
            umask: 0o022,
            argv: vec![b"pvmctl".to_vec(), b"run".to_vec(), vec![0xff, 0]],
            env: vec![b"A=1".to_vec(), b"EMPTY=".to_vec()],
        }
    }

    #[test]
    fn a_request_round_trips_and_every_truncation_is_refused() {
        let bytes = sample().encode();
        let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        let len = Request::body_len(&header).unwrap();
        assert_eq!(len, bytes.len() - HEADER_LEN);
        let body = &bytes[HEADER_LEN..];
        assert_eq!(Request::decode(body), Ok(sample()));
        for cut in 0..body.len() {
            assert_eq!(
                Request::decode(&body[..cut]),
                Err(ProtoError::Malformed),
                "cut {cut}"
            );
        }
        let mut longer = body.to_vec();
        longer.push(0);
        assert_eq!(Request::decode(&longer), Err(ProtoError::Malformed));
    }

    #[test]
    fn hostile_headers_and_counts_are_refused() {
        let mut header: [u8; HEADER_LEN] = sample().encode()[..HEADER_LEN].try_into().unwrap();
        header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Request::body_len(&header),
            Err(ProtoError::TooLong(u32::MAX as usize))
        );
        header[0] = b'X';
        assert_eq!(Request::body_len(&header), Err(ProtoError::Version));
        // A count of a billion items in a short body.
        let mut body = vec![0u8; 20];
        body.extend_from_slice(&1_000_000_000u32.to_le_bytes());
        assert_eq!(Request::decode(&body), Err(ProtoError::Malformed));
    }

    #[test]
    fn replies_round_trip_and_junk_is_none() {
        for r in [
            Reply::Accepted(1234),
            Reply::Refused(Refusal::OtherBuild),
            Reply::Refused(Refusal::Malformed),
            Reply::Exited(0),
            Reply::Exited(255),
        ] {
            assert_eq!(Reply::decode(&r.encode()), Some(r));
        }
        assert_eq!(Reply::decode(&[9, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(Reply::decode(&[2, 0, 0, 0, 77, 0, 0, 0]), None);
        assert_eq!(Reply::decode(&[3, 0, 0, 0, 0, 1, 0, 0]), None);
        assert_eq!(Reply::decode(&[1, 1, 0, 0, 0, 0, 0, 0]), None);
    }
}
