//! One bundle payload being received: a preallocated file written chunk by chunk at its
//! offset, with a bitmap of the chunks that verified. A transfer reopened after a restart
//! re-hashes what is on disk, so it asks only for the chunks it really lacks.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use fleetml_shared::bundle::{BundleError, VerifiedManifest, check_chunk, sha256};
use fleetml_shared::protocol::{ChunkRange, ranges_of};
use tokio::time::Instant;

use crate::storage::{StateDir, StorageError, io_error, write_atomically};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    Stored,
    Duplicate,
}

pub struct Transfer {
    pub verified: VerifiedManifest,
    part_path: PathBuf,
    file: File,
    received: Vec<bool>,
    n_received: u32,
    received_bytes: u64,
    /// Chunks that verified when the transfer was reopened from disk.
    pub resumed_chunks: u32,
    pub last_progress: Instant,
    pub next_request_at: Instant,
    pub backoff: Duration,
    pub n_requests: u32,
}

impl Transfer {
    pub fn open(state_dir: &StateDir, verified: VerifiedManifest, initial_backoff: Duration) -> Result<Self, TransferError> {
        let manifest = &verified.manifest;
        let part_path = state_dir.transfer_part(&verified.digest);
        let manifest_path = state_dir.transfer_manifest(&verified.digest);
        let manifest_bytes = postcard::to_stdvec(&verified.signed).unwrap_or_default();
        write_atomically(&manifest_path, &manifest_bytes)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::storage::PRIVATE_FILE_MODE)
            .open(&part_path)
            .map_err(io_error("opening", &part_path))?;
        let existing_len = file.metadata().map_err(io_error("reading metadata of", &part_path))?.len();
        if existing_len != manifest.payload_len() {
            file.set_len(manifest.payload_len()).map_err(io_error("sizing", &part_path))?;
        }
        let n_chunks = manifest.n_chunks() as usize;
        let mut transfer = Transfer {
            verified,
            part_path,
            file,
            received: vec![false; n_chunks],
            n_received: 0,
            received_bytes: 0,
            resumed_chunks: 0,
            last_progress: Instant::now(),
            next_request_at: Instant::now(),
            backoff: initial_backoff,
            n_requests: 0,
        };
        if existing_len > 0 {
            transfer.rescan()?;
        }
        Ok(transfer)
    }

    /// Marks the chunks already on disk whose hash matches.
    fn rescan(&mut self) -> Result<(), TransferError> {
        let manifest = &self.verified.manifest;
        let mut buffer = vec![0u8; manifest.chunk_size as usize];
        for chunk_idx in 0..manifest.n_chunks() {
            let range = manifest.chunk_range(chunk_idx);
            let chunk = &mut buffer[..(range.end - range.start) as usize];
            self.file.read_exact_at(chunk, range.start).map_err(io_error("reading", &self.part_path))?;
            if sha256(chunk) == manifest.chunk_hashes[chunk_idx as usize] {
                self.received[chunk_idx as usize] = true;
                self.n_received += 1;
                self.received_bytes += range.end - range.start;
            }
        }
        self.resumed_chunks = self.n_received;
        Ok(())
    }

    pub fn accept_chunk(&mut self, index: u32, data: &[u8]) -> Result<ChunkOutcome, TransferError> {
        check_chunk(&self.verified.manifest, index, data)?;
        if self.received[index as usize] {
            return Ok(ChunkOutcome::Duplicate);
        }
        let offset = self.verified.manifest.chunk_range(index).start;
        self.file.write_all_at(data, offset).map_err(io_error("writing", &self.part_path))?;
        self.received[index as usize] = true;
        self.n_received += 1;
        self.received_bytes += data.len() as u64;
        self.last_progress = Instant::now();
        Ok(ChunkOutcome::Stored)
    }

    pub fn is_complete(&self) -> bool {
        self.n_received as usize == self.received.len()
    }

    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    pub fn total_bytes(&self) -> u64 {
        self.verified.manifest.payload_len()
    }

    pub fn missing(&self) -> Vec<ChunkRange> {
        ranges_of(self.received.iter().enumerate().filter(|(_, got)| !**got).map(|(chunk_idx, _)| chunk_idx as u32))
    }

    /// Flushes the payload to disk and hands back its path for the installer.
    pub fn finish(self) -> Result<PathBuf, TransferError> {
        self.file.sync_all().map_err(io_error("syncing", &self.part_path))?;
        Ok(self.part_path)
    }

    /// Drops a transfer's files (when the desired state moved on).
    pub fn discard(self, state_dir: &StateDir) {
        let _ = fs::remove_file(&self.part_path);
        let _ = fs::remove_file(state_dir.transfer_manifest(&self.verified.digest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::signed_bundle;

    #[test]
    fn a_reopened_transfer_asks_only_for_missing_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = StateDir::open(dir.path()).unwrap();
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let (verified, _) = signed_bundle(&payload, 1024);
        let mut transfer = Transfer::open(&state_dir, verified.clone(), Duration::from_secs(1)).unwrap();
        assert_eq!(transfer.missing(), vec![ChunkRange { start: 0, end: 10 }]);
        for chunk_idx in [0u32, 1, 2, 5] {
            let range = verified.manifest.chunk_range(chunk_idx);
            let outcome = transfer.accept_chunk(chunk_idx, &payload[range.start as usize..range.end as usize]).unwrap();
            assert_eq!(outcome, ChunkOutcome::Stored);
        }
        assert_eq!(transfer.accept_chunk(0, &payload[..1024]).unwrap(), ChunkOutcome::Duplicate);
        let mut corrupt = payload[1024 * 3..1024 * 4].to_vec();
        corrupt[0] ^= 1;
        assert!(transfer.accept_chunk(3, &corrupt).is_err(), "a corrupt chunk is refused");
        drop(transfer);

        let mut reopened = Transfer::open(&state_dir, verified.clone(), Duration::from_secs(1)).unwrap();
        assert_eq!(reopened.resumed_chunks, 4);
        assert_eq!(reopened.missing(), vec![ChunkRange { start: 3, end: 5 }, ChunkRange { start: 6, end: 10 }]);
        for chunk_idx in [3u32, 4, 6, 7, 8, 9] {
            let range = verified.manifest.chunk_range(chunk_idx);
            reopened.accept_chunk(chunk_idx, &payload[range.start as usize..range.end as usize]).unwrap();
        }
        assert!(reopened.is_complete());
        let part = reopened.finish().unwrap();
        assert_eq!(fs::read(part).unwrap(), payload);
    }
}
