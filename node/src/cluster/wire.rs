//! The building blocks of halo's binary cluster messages (heartbeat frames,
//! witness leases): big-endian integers and length-prefixed UTF-8 names,
//! every read bounds-checked. Each protocol wraps [`Malformed`] and
//! [`BadName`] in its own error type.

/// Names (nodes, modules) are 1 to 63 bytes of UTF-8 on the wire.
pub const MAX_NAME_LEN: usize = 63;

/// A received message does not hold what its format says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// A name that cannot be sent: empty or longer than [`MAX_NAME_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadName;

/// Appends `name` with its one-byte length.
pub fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), BadName> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(BadName);
    }
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// Reads a message from a given offset on.
pub struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor over `bytes`, at offset `at`.
    pub fn new(bytes: &'a [u8], at: usize) -> Self {
        Cursor { bytes, at }
    }

    /// How many bytes were read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).ok_or(Malformed("length overflow"))?;
        let slice = self.bytes.get(self.at..end).ok_or(Malformed("truncated"))?;
        self.at = end;
        Ok(slice)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A name: a length of 1 to 63, then that many bytes of UTF-8.
    pub fn name(&mut self) -> Result<String, Malformed> {
        self.optional_name()?
            .ok_or(Malformed("name length out of range"))
    }

    /// A name whose length may be 0 (absent).
    pub fn optional_name(&mut self) -> Result<Option<String>, Malformed> {
        let len = usize::from(self.u8()?);
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_NAME_LEN {
            return Err(Malformed("name length out of range"));
        }
        std::str::from_utf8(self.take(len)?)
            .map(|name| Some(name.to_owned()))
            .map_err(|_| Malformed("name is not UTF-8"))
    }

    /// Fails unless every byte was read.
    pub fn end(&self) -> Result<(), Malformed> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_refused() {
        let mut out = Vec::new();
        put_name(&mut out, "alpha").unwrap();
        assert_eq!(put_name(&mut out, ""), Err(BadName));
        assert_eq!(put_name(&mut out, &"x".repeat(64)), Err(BadName));
        let mut cursor = Cursor::new(&out, 0);
        assert_eq!(cursor.name().unwrap(), "alpha");
        assert_eq!(cursor.end(), Ok(()));
        assert_eq!(Cursor::new(&[0], 0).optional_name(), Ok(None));
        assert_eq!(
            Cursor::new(&[0], 0).name(),
            Err(Malformed("name length out of range"))
        );
        assert_eq!(
            Cursor::new(&[2, 0xff, 0xfe], 0).name(),
            Err(Malformed("name is not UTF-8"))
        );
        assert_eq!(
            Cursor::new(&[3, b'a'], 0).name(),
            Err(Malformed("truncated"))
        );
    }
}
