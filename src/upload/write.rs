//! The write path: client bytes hashed and counted, checked against the size limits and
//! quota, and gathered into budgeted buffers that leave as parts.

use super::content_type;
use super::multipart::{Multipart, part_result};
use super::transfer::Upload;
use super::{MAX_PARTS, PROBE_SIZE, Reservation, UploadError};
use bytes::{BufMut, BytesMut};
use sha2::Digest;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A buffer being filled, with the budget it holds.
pub(super) struct Buffer {
    pub(super) data: BytesMut,
    pub(super) capacity: usize,
    /// The small first buffer, before the upload is known to need parts.
    pub(super) probe: bool,
    pub(super) reservation: Reservation,
    /// Counts `data` in `upload_bytes_in_flight` until S3 has it (or it is dropped).
    pub(super) in_flight: InFlight,
}

/// Bytes counted in `upload_bytes_in_flight` for as long as this lives.
pub(super) struct InFlight {
    gauge: prometheus::IntGauge,
    bytes: i64,
}

impl InFlight {
    pub(super) fn new(gauge: prometheus::IntGauge, bytes: usize) -> InFlight {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        gauge.add(bytes);
        InFlight { gauge, bytes }
    }

    fn add(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(0);
        self.bytes += bytes;
        self.gauge.add(bytes);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

impl Upload {
    /// Appends bytes; waits while the memory budget is spent or parts are in flight.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), UploadError> {
        while !data.is_empty() {
            if self.pipeline.stop.is_cancelled() {
                return Err(UploadError::ShuttingDown);
            }
            if self.is_preempted() {
                return Err(self.preempted_error());
            }
            let spare = self.writable_buffer().await?;
            let n = spare.min(data.len());
            let (chunk, rest) = data.split_at(n);
            self.accept(chunk).await?;
            if let Some(buffer) = self.buffer.as_mut() {
                buffer.data.extend_from_slice(chunk);
                buffer.in_flight.add(chunk.len());
            }
            data = rest;
        }
        Ok(())
    }

    /// Reads `reader` to its end straight into part buffers. A read that yields nothing for
    /// `stall_timeout` fails the upload, as does a server shutdown.
    pub async fn fill_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        stall_timeout: Duration,
    ) -> Result<u64, UploadError> {
        let stop = self.pipeline.stop.clone();
        let preempted = self.preempted();
        tokio::pin!(preempted);
        loop {
            let spare = self.writable_buffer().await?;
            let Some(buffer) = self.buffer.as_mut() else {
                return Err(UploadError::Internal("no buffer after reservation".into()));
            };
            let before = buffer.data.len();
            let mut limited = (&mut buffer.data).limit(spare);
            let read = tokio::select! {
                r = tokio::time::timeout(stall_timeout, reader.read_buf(&mut limited)) => r,
                () = stop.cancelled() => return Err(UploadError::ShuttingDown),
                () = &mut preempted => return Err(self.preempted_error()),
            };
            let n = match read {
                Err(_) => {
                    self.pipeline
                        .metrics
                        .limits_exceeded_total
                        .with_label_values(&["stalled_transfer"])
                        .inc();
                    return Err(UploadError::Stalled(stall_timeout));
                }
                Ok(Err(e)) => return Err(UploadError::Client(e)),
                Ok(Ok(0)) => return Ok(self.size),
                Ok(Ok(n)) => n,
            };
            let Upload {
                buffer,
                hasher,
                size,
                ..
            } = self;
            if let Some(buffer) = buffer.as_mut() {
                hasher.update(&buffer.data[before..before + n]);
                buffer.in_flight.add(n);
            }
            *size += n as u64;
            self.check_size().await?;
            self.pipeline
                .metrics
                .upload_bytes_total
                .with_label_values(&[self.req.protocol.as_str()])
                .inc_by(n as u64);
        }
    }

    fn in_flight_gauge(&self) -> prometheus::IntGauge {
        self.pipeline
            .metrics
            .upload_bytes_in_flight
            .with_label_values(&[self.req.protocol.as_str()])
    }

    /// Counts and hashes bytes about to enter the buffer.
    async fn accept(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.check_size().await?;
        self.pipeline
            .metrics
            .upload_bytes_total
            .with_label_values(&[self.req.protocol.as_str()])
            .inc_by(chunk.len() as u64);
        Ok(())
    }

    async fn check_size(&mut self) -> Result<(), UploadError> {
        if let Some(registration) = &self.registration {
            registration.live.set_bytes(self.size);
        }
        let object_limit = self.pipeline.sizes.max_object_size();
        let user_limit = self.req.user.max_file_size.unwrap_or(u64::MAX);
        if self.size > object_limit.min(user_limit) {
            let (which, error) = if user_limit < object_limit {
                (
                    "max_file_size",
                    UploadError::OverFileSizeLimit { limit: user_limit },
                )
            } else {
                (
                    "max_object_size",
                    UploadError::TooLarge {
                        limit: object_limit,
                    },
                )
            };
            self.pipeline
                .metrics
                .limits_exceeded_total
                .with_label_values(&[which])
                .inc();
            return Err(error);
        }
        if let Some(quota) = self.quota.as_mut()
            && let Err(e) = quota.grow_to(self.size).await
        {
            if let UploadError::OverQuota(over) = &e {
                self.pipeline
                    .metrics
                    .limits_exceeded_total
                    .with_label_values(&[over.key()])
                    .inc();
            }
            return Err(e);
        }
        Ok(())
    }

    /// Makes sure a buffer with free space exists and returns the free space: reserves the
    /// probe, grows it into the first part, or sends a full part and reserves the next.
    async fn writable_buffer(&mut self) -> Result<usize, UploadError> {
        loop {
            match &self.buffer {
                Some(b) if b.data.len() < b.capacity => return Ok(b.capacity - b.data.len()),
                Some(b) if b.probe => {
                    let first = self.pipeline.sizes.size_of(1);
                    let reservation = self.pipeline.budget.reserve_part(first).await;
                    let capacity = reservation.bytes().min(first) as usize;
                    let mut data = self.pipeline.buffers.take(capacity);
                    data.extend_from_slice(&b.data);
                    // The probe's reservation (and its in-flight count, taken over by the
                    // new buffer) is returned as the old buffer drops.
                    let in_flight = InFlight::new(self.in_flight_gauge(), b.data.len());
                    self.buffer = Some(Buffer {
                        data,
                        capacity,
                        probe: false,
                        reservation,
                        in_flight,
                    });
                }
                Some(_) => self.send_part().await?,
                None => {
                    let next = self.multipart.as_ref().map_or(1, |m| m.next_number);
                    if next > MAX_PARTS {
                        return Err(UploadError::TooLarge {
                            limit: self.pipeline.sizes.max_object_size(),
                        });
                    }
                    let part = self.pipeline.sizes.size_of(next);
                    let (reservation, probe) = if self.multipart.is_none() {
                        (
                            self.pipeline
                                .budget
                                .reserve_probe(PROBE_SIZE.min(part))
                                .await,
                            true,
                        )
                    } else {
                        // The buffer being filled counts as one of the upload's
                        // `upload_concurrency` parts: at most that many buffers per upload.
                        self.wait_for_parts_below(self.pipeline.concurrency).await?;
                        (self.pipeline.budget.reserve_part(part).await, false)
                    };
                    let capacity = reservation.bytes().min(part) as usize;
                    self.buffer = Some(Buffer {
                        data: if probe {
                            BytesMut::with_capacity(capacity)
                        } else {
                            self.pipeline.buffers.take(capacity)
                        },
                        capacity,
                        probe,
                        reservation,
                        in_flight: InFlight::new(self.in_flight_gauge(), 0),
                    });
                }
            }
        }
    }

    /// Waits until fewer than `limit` parts are in flight, collecting finished ones.
    async fn wait_for_parts_below(&mut self, limit: usize) -> Result<(), UploadError> {
        if let Some(mp) = self.multipart.as_mut() {
            while mp.in_flight.len() >= limit {
                match mp.in_flight.join_next().await {
                    Some(joined) => mp.done.push(part_result(joined)?),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Sends the current buffer as the next part, creating the multipart upload first when
    /// needed. Never waits for a slot: `writable_buffer` waited for one before reserving
    /// this buffer, so fewer than `upload_concurrency` parts are in flight.
    pub(super) async fn send_part(&mut self) -> Result<(), UploadError> {
        let Some(buffer) = self.buffer.take() else {
            return Ok(());
        };
        if self.multipart.is_none() {
            let content_type = content_type::detect(
                self.req.path.file_name(),
                &buffer.data[..buffer.data.len().min(4096)],
            );
            let upload_id = self
                .pipeline
                .storage
                .create_multipart(&self.key, Some(&content_type))
                .await?;
            self.content_type = Some(content_type);
            self.multipart = Some(Multipart::new(upload_id));
        }
        self.record_mark().await;
        let Some(mp) = self.multipart.as_mut() else {
            return Err(UploadError::Internal("multipart state missing".into()));
        };
        if !mp.may_write(&self.pipeline) {
            return Err(UploadError::LeaseLost);
        }
        mp.spawn_part(&self.pipeline, &self.key, buffer);
        Ok(())
    }
}
