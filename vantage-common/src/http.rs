//! The HTTP request-line rule shared by the classifier and the daemon.
//!
//! A TCP payload is an HTTP request when it begins with a method token from
//! [`Method`], one space and a path starting with `/`. The path ends at the
//! first space or `?`, or where the payload ends, and at most
//! [`PATH_HASH_MAX_BYTES`] of it are hashed with 32-bit FNV-1a. The kernel
//! feeds packet bytes to a [`PathHasher`]; the daemon feeds the configured
//! path through [`path_hash`], which uses the same hasher, so both sides hash
//! a path identically by construction.

/// At most this many bytes of a path are hashed; longer paths are matched on
/// their first `PATH_HASH_MAX_BYTES` bytes.
pub const PATH_HASH_MAX_BYTES: usize = 128;

/// FNV-1a 32-bit offset basis.
pub const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;
/// FNV-1a 32-bit prime.
pub const FNV_PRIME: u32 = 0x0100_0193;

/// Bytes of payload the method recogniser looks at.
pub const METHOD_PEEK_BYTES: usize = 8;

/// HTTP methods vantage recognises, with their codes in a [`crate::FlowKey`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// `GET`
    Get = 1,
    /// `POST`
    Post = 2,
    /// `PUT`
    Put = 3,
    /// `DELETE`
    Delete = 4,
    /// `PATCH`
    Patch = 5,
    /// `HEAD`
    Head = 6,
    /// `OPTIONS`
    Options = 7,
    /// `CONNECT`
    Connect = 8,
    /// `TRACE`
    Trace = 9,
}

impl Method {
    /// Every method, in code order.
    pub const ALL: [Method; 9] = [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Patch,
        Method::Head,
        Method::Options,
        Method::Connect,
        Method::Trace,
    ];

    /// The method token as it appears on the wire.
    pub const fn token(self) -> &'static [u8] {
        match self {
            Method::Get => b"GET",
            Method::Post => b"POST",
            Method::Put => b"PUT",
            Method::Delete => b"DELETE",
            Method::Patch => b"PATCH",
            Method::Head => b"HEAD",
            Method::Options => b"OPTIONS",
            Method::Connect => b"CONNECT",
            Method::Trace => b"TRACE",
        }
    }

    /// The method with code `code`, if any.
    pub const fn from_code(code: u8) -> Option<Method> {
        if code >= 1 && code <= 9 {
            Some(Method::ALL[code as usize - 1])
        } else {
            None
        }
    }

    /// Recognises a method token followed by a space at the start of `head`.
    ///
    /// Returns the method and the offset of the byte after the space, where
    /// the path must begin. `head` holds the first [`METHOD_PEEK_BYTES`] bytes
    /// of the payload; a shorter payload is never a request line.
    #[inline(always)]
    pub const fn recognise(head: [u8; METHOD_PEEK_BYTES]) -> Option<(Method, usize)> {
        let m = match head[0] {
            b'G' if head[1] == b'E' && head[2] == b'T' => Method::Get,
            b'P' if head[1] == b'U' && head[2] == b'T' => Method::Put,
            b'P' if head[1] == b'O' && head[2] == b'S' && head[3] == b'T' => Method::Post,
            b'P' if head[1] == b'A' && head[2] == b'T' && head[3] == b'C' && head[4] == b'H' => {
                Method::Patch
            }
            b'H' if head[1] == b'E' && head[2] == b'A' && head[3] == b'D' => Method::Head,
            b'T' if head[1] == b'R' && head[2] == b'A' && head[3] == b'C' && head[4] == b'E' => {
                Method::Trace
            }
            b'D' if head[1] == b'E'
                && head[2] == b'L'
                && head[3] == b'E'
                && head[4] == b'T'
                && head[5] == b'E' =>
            {
                Method::Delete
            }
            b'O' if head[1] == b'P'
                && head[2] == b'T'
                && head[3] == b'I'
                && head[4] == b'O'
                && head[5] == b'N'
                && head[6] == b'S' =>
            {
                Method::Options
            }
            b'C' if head[1] == b'O'
                && head[2] == b'N'
                && head[3] == b'N'
                && head[4] == b'E'
                && head[5] == b'C'
                && head[6] == b'T' =>
            {
                Method::Connect
            }
            _ => return None,
        };
        let len = m.token().len();
        if head[len] != b' ' {
            return None;
        }
        Some((m, len + 1))
    }
}

/// Incremental FNV-1a over a path, applying the path rule byte by byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathHasher {
    hash: u32,
    len: u32,
}

impl Default for PathHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl PathHasher {
    /// A hasher that has seen no byte yet.
    #[inline(always)]
    pub const fn new() -> Self {
        PathHasher { hash: FNV_OFFSET_BASIS, len: 0 }
    }

    /// Feeds the next byte of the path; returns `false` once the path has
    /// ended (terminator, not a path, or the byte limit), after which further
    /// bytes must not be fed.
    #[inline(always)]
    pub fn push(&mut self, byte: u8) -> bool {
        if self.len == 0 && byte != b'/' {
            return false;
        }
        if byte == b' ' || byte == b'?' || self.len as usize >= PATH_HASH_MAX_BYTES {
            return false;
        }
        self.hash = (self.hash ^ byte as u32).wrapping_mul(FNV_PRIME);
        self.len += 1;
        true
    }

    /// Bytes hashed so far.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no byte was hashed, i.e. the payload holds no path.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hash, or 0 when no path was seen.
    pub const fn finish(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            self.hash
        }
    }
}

/// The hash of `path` under the path rule; 0 if it does not start with `/`.
pub fn path_hash(path: &[u8]) -> u32 {
    let mut h = PathHasher::new();
    for &b in path {
        if !h.push(b) {
            break;
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fnv1a(bytes: &[u8]) -> u32 {
        bytes.iter().fold(FNV_OFFSET_BASIS, |h, &b| (h ^ b as u32).wrapping_mul(FNV_PRIME))
    }

    #[test]
    fn predict_hashes_to_the_documented_value() {
        assert_eq!(path_hash(b"/predict"), 4_021_474_487);
    }

    #[test]
    fn fnv1a_reference_vectors() {
        // Published FNV-1a 32 test vectors.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn path_rule_edge_cases() {
        let long: [u8; 200] = core::array::from_fn(|i| if i == 0 { b'/' } else { b'a' });
        let cases: &[(&[u8], u32)] = &[
            (b"/predict?x=1", fnv1a(b"/predict")),
            (b"/predict HTTP/1.1", fnv1a(b"/predict")),
            (b"/", fnv1a(b"/")),
            (b"/?", fnv1a(b"/")),
            (b"", 0),
            (b"predict", 0),
            (b" /predict", 0),
            (b"*", 0),
            (&long, fnv1a(&long[..PATH_HASH_MAX_BYTES])),
            (&long[..PATH_HASH_MAX_BYTES], fnv1a(&long[..PATH_HASH_MAX_BYTES])),
            (&long[..PATH_HASH_MAX_BYTES - 1], fnv1a(&long[..PATH_HASH_MAX_BYTES - 1])),
        ];
        for (path, want) in cases {
            assert_eq!(path_hash(path), *want, "path {:?}", core::str::from_utf8(path));
        }
    }

    #[test]
    fn recognises_every_method_and_rejects_near_misses() {
        for m in Method::ALL {
            let mut head = [b'x'; METHOD_PEEK_BYTES];
            let tok = m.token();
            head[..tok.len()].copy_from_slice(tok);
            head[tok.len()] = b' ';
            assert_eq!(Method::recognise(head), Some((m, tok.len() + 1)), "{m:?}");
            assert_eq!(Method::from_code(m as u8), Some(m));
        }
        for head in [*b"GETX /ab", *b"get /abc", *b"POS /abc", *b"DELETEX ", *b"\0\0\0\0\0\0\0\0"] {
            assert_eq!(Method::recognise(head), None, "{:?}", core::str::from_utf8(&head));
        }
        assert_eq!(Method::from_code(0), None);
        assert_eq!(Method::from_code(10), None);
    }
}
