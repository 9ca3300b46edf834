//! A response body kept as the connection delivered it: a list of chunks, never copied into one
//! buffer. A block read through the sidecar is verified whole and then sent on chunk by chunk;
//! gathering a 4 MiB block into one buffer first cost a copy and fresh pages per read (ADR 0014).

use bytes::{Bytes, BytesMut};
use std::ops::Range;

#[derive(Debug, Clone, Default)]
pub struct Chunks {
    parts: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push(b);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks, one after another (reads hash them as they arrive, in `read_chunks`).
    #[cfg(test)]
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(|b| b.as_ref())
    }

    /// Bytes `range` of the body, sharing its chunks.
    ///
    /// # Panics
    /// When `range` is not within the body, like [`Bytes::slice`].
    pub fn slice(&self, range: Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= self.len, "{range:?} out of {} bytes", self.len);
        let mut out = Self::default();
        let mut at = 0;
        for b in &self.parts {
            let (start, end) = (at, at + b.len());
            at = end;
            if end <= range.start {
                continue;
            }
            if start >= range.end {
                break;
            }
            out.push(b.slice(range.start.max(start) - start..range.end.min(end) - start));
        }
        out
    }

    /// One buffer: free for a body of one chunk, one copy otherwise.
    pub fn into_bytes(self) -> Bytes {
        match <[Bytes; 1]>::try_from(self.parts) {
            Ok([one]) => one,
            Err(parts) => {
                let mut buf = BytesMut::with_capacity(self.len);
                parts.iter().for_each(|p| buf.extend_from_slice(p));
                buf.freeze()
            }
        }
    }

    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }
}

impl From<Bytes> for Chunks {
    fn from(b: Bytes) -> Self {
        let mut c = Self::default();
        c.push(b);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunked(data: &[u8], cuts: &[usize]) -> Chunks {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        at.extend([0, data.len()]);
        at.sort_unstable();
        let mut c = Chunks::default();
        for w in at.windows(2) {
            c.push(Bytes::copy_from_slice(&data[w[0]..w[1]]));
        }
        c
    }

    proptest! {
        /// Slicing and joining chunks gives the bytes that slicing the whole body gives.
        #[test]
        fn slices_equal_slices_of_the_whole(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            a in any::<usize>(),
            b in any::<usize>(),
        ) {
            let c = chunked(&data, &cuts);
            prop_assert_eq!(c.len(), data.len());
            let (a, b) = (a % (data.len() + 1), b % (data.len() + 1));
            let (a, b) = (a.min(b), a.max(b));
            let s = c.slice(a..b);
            prop_assert_eq!(s.len(), b - a);
            prop_assert!(s.parts().all(|p| !p.is_empty()));
            let (sliced, whole) = (s.into_bytes(), c.into_bytes());
            prop_assert_eq!(&sliced[..], &data[a..b]);
            prop_assert_eq!(&whole[..], &data[..]);
        }
    }

    #[test]
    fn one_chunk_becomes_one_buffer_without_a_copy() {
        let b = Bytes::from(vec![7u8; 1000]);
        let ptr = b.as_ptr();
        assert_eq!(Chunks::from(b).into_bytes().as_ptr(), ptr);
        assert!(Chunks::from(Bytes::new()).is_empty());
    }
}
