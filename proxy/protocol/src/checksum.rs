//! End-to-end block checksums: `crc32c=<hex>` (cheap, the default) or `sha256=<hex>`.

use crate::crc::{self, Crc32c};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Crc32c(u32),
    Sha256([u8; 32]),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("checksum must look like 'crc32c=<8 hex digits>' or 'sha256=<64 hex digits>'")]
    Malformed,
    #[error("checksum algorithm {0:?} is not supported (use crc32c or sha256)")]
    UnknownAlgorithm(String),
    #[error("body checksum {actual} does not match the declared {expected}")]
    Mismatch { expected: Checksum, actual: Checksum },
}

impl Checksum {
    pub fn crc32c(data: &[u8]) -> Self {
        Self::Crc32c(crc::crc32c(data))
    }

    /// The same algorithm as `self`, computed over `data`.
    pub fn compute_like(&self, data: &[u8]) -> Self {
        match self {
            Self::Crc32c(_) => Self::crc32c(data),
            Self::Sha256(_) => Self::Sha256(Sha256::digest(data).into()),
        }
    }

    /// [`Checksum::verify`] of `data` whose CRC32C the caller already computed: a CRC32C
    /// checksum is compared with `data_crc32c` rather than computed again.
    pub fn verify_with_crc32c(&self, data: &[u8], data_crc32c: u32) -> Result<(), ChecksumError> {
        match self {
            Self::Crc32c(expected) if *expected == data_crc32c => Ok(()),
            Self::Crc32c(_) => {
                Err(ChecksumError::Mismatch { expected: self.clone(), actual: Self::Crc32c(data_crc32c) })
            }
            Self::Sha256(_) => self.verify(data),
        }
    }

    pub fn verify(&self, data: &[u8]) -> Result<(), ChecksumError> {
        self.verify_parts([data])
    }

    /// [`Checksum::verify`] of the concatenation of `parts`, without concatenating them.
    pub fn verify_parts<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> Result<(), ChecksumError> {
        let mut running = self.running();
        parts.into_iter().for_each(|p| running.update(p));
        running.verify()
    }

    /// The same algorithm as `self` over bytes fed as they arrive, to verify against `self` at
    /// the end: each piece is hashed while it is still in the CPU's cache.
    pub fn running(&self) -> RunningChecksum {
        let state = match self {
            Self::Crc32c(_) => Running::Crc32c(Crc32c::default()),
            Self::Sha256(_) => Running::Sha256(Sha256::new()),
        };
        RunningChecksum { expected: self.clone(), state }
    }
}

/// A checksum being computed over a body as it arrives ([`Checksum::running`]).
#[derive(Debug)]
pub struct RunningChecksum {
    expected: Checksum,
    state: Running,
}

#[derive(Debug)]
enum Running {
    Crc32c(Crc32c),
    Sha256(Sha256),
}

impl RunningChecksum {
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            Running::Crc32c(c) => c.update(data),
            Running::Sha256(h) => h.update(data),
        }
    }

    /// Whether the bytes fed match the expected checksum.
    pub fn verify(self) -> Result<(), ChecksumError> {
        let actual = match self.state {
            Running::Crc32c(c) => Checksum::Crc32c(c.finish()),
            Running::Sha256(h) => Checksum::Sha256(h.finalize().into()),
        };
        if actual == self.expected { Ok(()) } else { Err(ChecksumError::Mismatch { expected: self.expected, actual }) }
    }
}

/// `crc32c=<8 hex digits>`, the text of [`Checksum::Crc32c`], built without formatting: the
/// proxy sends it with every hit.
pub fn crc32c_text(crc: u32) -> [u8; 15] {
    let mut out = *b"crc32c=00000000";
    hex::encode_to_slice(crc.to_be_bytes(), &mut out[7..]).expect("8 hex digits fit 8 bytes");
    out
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Crc32c(v) => f.write_str(std::str::from_utf8(&crc32c_text(*v)).expect("ASCII")),
            Self::Sha256(v) => write!(f, "sha256={}", hex::encode(v)),
        }
    }
}

impl FromStr for Checksum {
    type Err = ChecksumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, value) = s.trim().split_once('=').ok_or(ChecksumError::Malformed)?;
        match alg.to_ascii_lowercase().as_str() {
            "crc32c" if value.len() == 8 => {
                u32::from_str_radix(value, 16).map(Self::Crc32c).map_err(|_| ChecksumError::Malformed)
            }
            "sha256" if value.len() == 64 => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(value, &mut out).map_err(|_| ChecksumError::Malformed)?;
                Ok(Self::Sha256(out))
            }
            "crc32c" | "sha256" => Err(ChecksumError::Malformed),
            other => Err(ChecksumError::UnknownAlgorithm(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_verifies() {
        let data = b"hello block";
        for c in [Checksum::crc32c(data), Checksum::Sha256(Sha256::digest(data).into())] {
            let parsed: Checksum = c.to_string().parse().unwrap();
            assert_eq!(parsed, c);
            parsed.verify(data).unwrap();
            assert!(parsed.verify(b"other").is_err());
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in ["", "crc32c", "crc32c=xyz", "crc32c=123", "md5=00", "sha256=00"] {
            assert!(s.parse::<Checksum>().is_err(), "{s:?}");
        }
    }

    proptest! {
        /// The unformatted text is what `{:08x}` gives, and parses back to its CRC.
        #[test]
        fn crc32c_text_is_the_formatted_text(crc in any::<u32>()) {
            let text = String::from_utf8(crc32c_text(crc).to_vec()).unwrap();
            prop_assert_eq!(&text, &format!("crc32c={crc:08x}"));
            prop_assert_eq!(text.parse::<Checksum>().unwrap(), Checksum::Crc32c(crc));
        }

        /// A body verifies the same however it was split into parts, and a changed byte in any
        /// part fails it.
        #[test]
        fn verifying_parts_equals_verifying_the_whole(
            data in proptest::collection::vec(any::<u8>(), 1..2048),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            at.extend([0, data.len()]);
            at.sort_unstable();
            let parts: Vec<&[u8]> = at.windows(2).map(|w| &data[w[0]..w[1]]).collect();
            let mut changed = data.clone();
            changed[flip.index(data.len())] ^= 1;
            for c in [Checksum::crc32c(&data), Checksum::Sha256(Sha256::digest(&data).into())] {
                prop_assert!(c.verify_parts(parts.iter().copied()).is_ok());
                let changed_parts: Vec<&[u8]> = at.windows(2).map(|w| &changed[w[0]..w[1]]).collect();
                prop_assert!(c.verify_parts(changed_parts).is_err());
            }
        }

        /// Given the data's CRC32C, verifying answers what verifying the data does, for both
        /// algorithms and for a matching or a changed body.
        #[test]
        fn verifying_with_a_known_crc32c_equals_verifying(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            other in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            for declared in [Checksum::crc32c(&data), Checksum::Sha256(Sha256::digest(&data).into())] {
                for body in [&data, &other] {
                    let known = declared.verify_with_crc32c(body, crc::crc32c(body));
                    prop_assert_eq!(known, declared.verify(body));
                }
            }
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Checksum>();
        }
    }
}
