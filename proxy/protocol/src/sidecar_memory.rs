//! The sidecar's memory, as its flags and the operator's webhook agree on it (ADR 0018): the
//! default budgets of reads and writes, and how a memory limit sizes them so that the budgets
//! and the process fit inside it.

/// Read-ahead budget of a sidecar without a memory limit: 32 blocks of the default 4 MiB,
/// eight large reads at full read-ahead (ADR 0016).
pub const DEFAULT_READ_AHEAD_BYTES: u64 = 128 << 20;

/// Write budget of a sidecar without a memory limit: eight single PUTs of the sidecar's 8 MiB
/// parts, each reading its next part while it sends one; or two UploadParts of its largest
/// (64 MiB) parts (ADR 0017).
pub const DEFAULT_WRITE_BUFFER_BYTES: u64 = 128 << 20;

/// Largest UploadPart a sidecar takes by default: a part is held whole until its proxy has it.
pub const DEFAULT_MAX_PART_SIZE: u64 = 64 << 20;

/// What a sidecar needs besides its two budgets: code, runtime, connections, allocator slack
/// and the piece (1 MiB) each read in progress may hold beyond a full read-ahead budget
/// (ADR 0019). Measured at 26 to 44 MiB above the budgets under bench figure 7's loads (16 GETs
/// or 32 PUTs at once, 4 MiB blocks; ADR 0018), rounded up.
pub const SIDECAR_BASE_MEMORY: u64 = 64 << 20;

/// The smallest memory limit a sidecar may have: the base and 32 MiB for each budget.
pub const MIN_SIDECAR_MEMORY_LIMIT: u64 = SIDECAR_BASE_MEMORY + 2 * (32 << 20);

/// The budgets of a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarBudgets {
    pub read_ahead_bytes: u64,
    pub write_buffer_bytes: u64,
    /// At most the write budget, so that one part never holds more than the budget allows.
    pub max_part_size: u64,
}

impl Default for SidecarBudgets {
    fn default() -> Self {
        Self {
            read_ahead_bytes: DEFAULT_READ_AHEAD_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            max_part_size: DEFAULT_MAX_PART_SIZE,
        }
    }
}

impl SidecarBudgets {
    /// The budgets that fit a sidecar in `limit` bytes: what is left after
    /// [`SIDECAR_BASE_MEMORY`], split evenly between reads and writes (whole MiB), and never
    /// more than the defaults (larger budgets buy no throughput, figure 7). `None` below
    /// [`MIN_SIDECAR_MEMORY_LIMIT`].
    pub fn within(limit: u64) -> Option<Self> {
        if limit < MIN_SIDECAR_MEMORY_LIMIT {
            return None;
        }
        let each = ((limit - SIDECAR_BASE_MEMORY) / 2) & !((1 << 20) - 1);
        let read_ahead_bytes = each.min(DEFAULT_READ_AHEAD_BYTES);
        let write_buffer_bytes = each.min(DEFAULT_WRITE_BUFFER_BYTES);
        Some(Self {
            read_ahead_bytes,
            write_buffer_bytes,
            max_part_size: write_buffer_bytes.min(DEFAULT_MAX_PART_SIZE),
        })
    }

    /// The most memory the sidecar holds with these budgets full, by the same account.
    pub fn peak(&self) -> u64 {
        SIDECAR_BASE_MEMORY + self.read_ahead_bytes + self.write_buffer_bytes.max(self.max_part_size)
    }
}

/// Parses a size in bytes: "1048576", "64Mi", "600Gi", "500G", "10k" (the forms Kubernetes
/// quantities of bytes take, without exponents or fractions).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like \"64Mi\" or \"500G\""))?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (use k, M, G, T, P, Ki, Mi, Gi, Ti, Pi)")),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("size {s:?} must be positive and fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_size("64Mi").unwrap(), 64 * MIB);
        assert_eq!(parse_size("10G").unwrap(), 10_000_000_000);
        assert_eq!(parse_size(" 4096 ").unwrap(), 4096);
        for bad in ["", "0", "abc", "10Zi", "1.5Gi", "-5", "99999999999999999999", "1e9"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_limit_splits_what_the_base_leaves_and_the_budgets_fit_inside_it() {
        assert_eq!(SidecarBudgets::within(MIN_SIDECAR_MEMORY_LIMIT - 1), None);
        for limit in [MIN_SIDECAR_MEMORY_LIMIT, 160 * MIB, 200 * MIB + 12345, 320 * MIB, 1 << 30, 64 << 30] {
            let b = SidecarBudgets::within(limit).unwrap();
            assert!(b.peak() <= limit, "{b:?} peaks at {} in a limit of {limit}", b.peak());
            assert_eq!(b.read_ahead_bytes, b.write_buffer_bytes, "{limit}: reads and writes share evenly");
            assert!(b.read_ahead_bytes <= DEFAULT_READ_AHEAD_BYTES && b.read_ahead_bytes.is_multiple_of(MIB), "{b:?}");
            assert!(b.max_part_size <= b.write_buffer_bytes, "{b:?}");
        }
        let smallest = SidecarBudgets::within(MIN_SIDECAR_MEMORY_LIMIT).unwrap();
        assert_eq!((smallest.read_ahead_bytes, smallest.max_part_size), (32 * MIB, 32 * MIB));
        assert_eq!(SidecarBudgets::within(1 << 30), Some(SidecarBudgets::default()), "capped at the defaults");
    }
}
