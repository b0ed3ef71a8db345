//! An object's bytes as a plain [`AsyncRead`], so code outside `storage` reads objects
//! without naming the SDK's stream type.

use aws_sdk_s3::primitives::ByteStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// The body of a GetObject, read as it arrives.
pub struct ObjectReader {
    inner: Pin<Box<dyn AsyncRead + Send>>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectReader")
    }
}

impl ObjectReader {
    /// Reads `body` from where it stands.
    pub(super) fn new(body: ByteStream) -> ObjectReader {
        ObjectReader {
            inner: Box::pin(body.into_async_read()),
        }
    }
}

impl AsyncRead for ObjectReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().inner.as_mut().poll_read(cx, buf)
    }
}
