//! Recycled part buffers: a part's memory is handed to the next part instead of being
//! returned to the OS and faulted in again (4,096 fresh pages per 16 MiB part).

use bytes::BytesMut;
use parking_lot::Mutex;

/// A few idle part buffers, reused by whichever upload needs a part next.
pub struct BufferPool {
    idle: Mutex<Vec<BytesMut>>,
    max_idle: usize,
}

impl BufferPool {
    /// Keeps at most `max_idle` idle buffers (the only upload memory outside the budget).
    pub fn new(max_idle: usize) -> BufferPool {
        BufferPool {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// An empty buffer holding at least `capacity` bytes (and not much more).
    pub fn take(&self, capacity: usize) -> BytesMut {
        let reused = {
            let mut idle = self.idle.lock();
            let fits =
                |b: &BytesMut| b.capacity() >= capacity && b.capacity() <= capacity + capacity / 8;
            idle.iter().position(fits).map(|at| idle.swap_remove(at))
        };
        reused.unwrap_or_else(|| BytesMut::with_capacity(capacity))
    }

    /// Returns a buffer for reuse, or frees it when enough are idle.
    pub fn give(&self, mut buffer: BytesMut) {
        buffer.clear();
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(buffer);
        }
    }

    /// Bytes held by idle buffers.
    #[cfg(test)]
    pub fn idle_bytes(&self) -> usize {
        self.idle.lock().iter().map(BytesMut::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let pool = BufferPool::new(1);
        let mut a = pool.take(1 << 20);
        a.extend_from_slice(b"data");
        let ptr = a.as_ptr();
        pool.give(a);
        pool.give(BytesMut::with_capacity(1 << 20));
        assert_eq!(pool.idle_bytes(), 1 << 20, "at most one idle buffer");
        let b = pool.take(1 << 20);
        assert_eq!(b.as_ptr(), ptr, "the same memory comes back");
        assert!(b.is_empty());
        assert!(pool.take(4 << 20).capacity() >= 4 << 20);
    }
}
