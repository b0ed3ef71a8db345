//! What survives a cut upload: the records live in [`crate::state`] (cut uploads with the
//! SHA-256 state at every part boundary, temporary names, quota usage); this module keeps
//! their old paths and the (de)serialisation of the hash state, which is the pipeline's.

use sha2::Sha256;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

/// The SQLite upload state under its old name (tests open it directly).
pub use crate::state::sqlite::{SqliteUploads as PartialStore, UPLOADS_FILE};
pub use crate::state::{PartMark, PartialRecord, StateError as StoreError, TempRecord};

/// Serializes a SHA-256 state for the store.
pub fn save_hash(hasher: &Sha256) -> Vec<u8> {
    hasher.serialize().to_vec()
}

/// Restores a SHA-256 state written by [`save_hash`].
pub fn load_hash(bytes: &[u8]) -> Option<Sha256> {
    let state = SerializedState::<Sha256>::try_from(bytes).ok()?;
    Sha256::deserialize(&state).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn a_saved_hash_state_continues_to_the_same_digest() {
        let mut whole = Sha256::new();
        whole.update(b"hello, ");
        whole.update(b"resumed world");
        let mut first = Sha256::new();
        first.update(b"hello, ");
        let saved = save_hash(&first);
        let mut resumed = load_hash(&saved).expect("state loads");
        resumed.update(b"resumed world");
        assert_eq!(resumed.finalize(), whole.finalize());
        assert!(load_hash(b"short").is_none());
    }
}
