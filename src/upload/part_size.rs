//! Part sizes that grow with the upload, so 10,000 parts reach far beyond 1 TiB without
//! configuration while small uploads keep small parts.

/// S3's part count limit.
pub const MAX_PARTS: u32 = 10_000;
/// S3's object size limit.
pub const S3_MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// Parts per size step: the size doubles after every this many parts.
const PARTS_PER_STEP: u32 = 1_000;

/// The sizes parts take, from the first to the 10,000th.
#[derive(Debug, Clone, Copy)]
pub struct PartSizes {
    first: u64,
    max: u64,
}

impl PartSizes {
    /// Starts at `first`, doubles every 1,000 parts, never above `max`.
    pub fn new(first: u64, max: u64) -> PartSizes {
        PartSizes {
            first,
            max: max.max(first),
        }
    }

    /// Size of part `number` (1-based).
    pub fn size_of(&self, number: u32) -> u64 {
        let doublings = (number.saturating_sub(1) / PARTS_PER_STEP).min(20);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }

    /// The largest object these sizes can carry in 10,000 parts (capped at S3's 5 TiB).
    pub fn max_object_size(&self) -> u64 {
        let mut total: u64 = 0;
        let mut number = 1;
        while number <= MAX_PARTS {
            let step_end = (number / PARTS_PER_STEP + 1) * PARTS_PER_STEP;
            let count = step_end.min(MAX_PARTS) - number + 1;
            total = total.saturating_add(self.size_of(number).saturating_mul(count as u64));
            number += count;
        }
        total.min(S3_MAX_OBJECT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_double_every_thousand_parts_up_to_the_cap() {
        let s = PartSizes::new(16 << 20, 512 << 20);
        assert_eq!(s.size_of(1), 16 << 20);
        assert_eq!(s.size_of(1000), 16 << 20);
        assert_eq!(s.size_of(1001), 32 << 20);
        assert_eq!(s.size_of(5001), 512 << 20);
        assert_eq!(s.size_of(10_000), 512 << 20);
    }

    #[test]
    fn defaults_reach_beyond_one_tib() {
        let s = PartSizes::new(16 << 20, 512 << 20);
        // 1000 × (16+32+64+128+256) MiB + 5000 × 512 MiB
        assert_eq!(s.max_object_size(), (496_000u64 + 2_560_000) << 20);
        assert!(s.max_object_size() > 1 << 40);
        assert_eq!(
            PartSizes::new(5 << 20, 5 << 20).max_object_size(),
            50_000 << 20
        );
    }
}
