//! Unique, self-describing values: a read identifies the put it saw, and is checked byte for byte.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::sync::Mutex;

const MAGIC: &str = "bpfault";

/// The bytes of the value `id` of `key`: a header naming both, then `len` bytes from a generator
/// seeded by the id (so they need not be kept).
pub fn value_bytes(key: &str, id: &str, len: usize) -> Bytes {
    let mut data = format!("{MAGIC} {key} {id} ").into_bytes();
    let header = data.len();
    data.resize(header + len, 0);
    StdRng::seed_from_u64(fnv1a(id.as_bytes())).fill_bytes(&mut data[header..]);
    Bytes::from(data)
}

/// What a read returned: the value id it names, and whether its bytes are exactly that value's.
/// A value of another key, or no header at all, comes back as an id no put of this key wrote.
pub fn identify(key: &str, data: &[u8], written: &Written) -> (String, bool) {
    let text = String::from_utf8_lossy(&data[..data.len().min(200)]);
    let mut parts = text.splitn(4, ' ');
    let (magic, read_key, id) = (parts.next(), parts.next(), parts.next());
    let (Some(MAGIC), Some(read_key), Some(id)) = (magic, read_key, id) else {
        return (format!("<unrecognised {} bytes>", data.len()), false);
    };
    if read_key != key {
        return (format!("<{id} of key {read_key}>"), false);
    }
    let intact = written.len_of(id).is_some_and(|len| value_bytes(key, id, len) == data);
    (id.to_owned(), intact)
}

/// The length of every value a put sent (before it was sent), by value id.
#[derive(Default)]
pub struct Written(Mutex<HashMap<String, usize>>);

impl Written {
    pub fn record(&self, id: &str, len: usize) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), len);
    }

    fn len_of(&self, id: &str) -> Option<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_identified_and_checked_byte_for_byte() {
        let written = Written::default();
        written.record("c1-7", 100);
        let v = value_bytes("k3", "c1-7", 100);
        assert_eq!(identify("k3", &v, &written), ("c1-7".to_owned(), true));
        let mut torn = v.to_vec();
        torn[90] ^= 1;
        assert_eq!(identify("k3", &torn, &written), ("c1-7".to_owned(), false));
        assert!(!identify("k4", &v, &written).1, "a value of another key is not intact");
        assert!(!identify("k3", b"junk", &written).1);
    }
}
