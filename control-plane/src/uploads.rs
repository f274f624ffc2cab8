//! Large request bodies (ONNX pushes, MLflow artifacts) streamed to a private temporary file
//! under `DATA_DIR/uploads` one frame at a time, so a push costs about one frame of memory
//! while it arrives, whatever its size; refused past a size limit; removed when dropped.
//! `UploadPermits` caps how many run at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the body is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("{in_progress} uploads are in progress, the most this plane takes at once; try again shortly")]
    Busy { in_progress: usize },
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("storing the upload: {0}")]
    Io(#[from] std::io::Error),
}

/// How many large uploads may arrive at once; more are answered 429.
pub struct UploadPermits {
    semaphore: Arc<Semaphore>,
    max: usize,
}

impl UploadPermits {
    pub fn new(max: usize) -> Self {
        UploadPermits { semaphore: Arc::new(Semaphore::new(max)), max }
    }

    pub fn try_acquire(&self) -> Result<OwnedSemaphorePermit, UploadError> {
        self.semaphore.clone().try_acquire_owned().map_err(|_| UploadError::Busy { in_progress: self.max })
    }
}

/// A body on disk; the file goes when this does.
#[derive(Debug)]
pub struct Upload {
    path: PathBuf,
    pub len: u64,
}

impl Upload {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the file to `destination` (same file system); the upload no longer owns it.
    pub async fn persist(mut self, destination: &Path) -> std::io::Result<()> {
        tokio::fs::rename(&self.path, destination).await?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Streams `body` to a new file in `folder` (made 0700 if missing; the file is 0600).
pub async fn receive(folder: &Path, body: Body, limit: u64) -> Result<Upload, UploadError> {
    tokio::fs::create_dir_all(folder).await?;
    let path = folder.join(format!("upload-{:016x}.part", fastrand::u64(..)));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let file = options.open(&path).await?;
    // From here the file is removed on every early return.
    let mut upload = Upload { path, len: 0 };
    let mut file = tokio::io::BufWriter::with_capacity(64 * 1024, file);
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|error| UploadError::Body(error.to_string()))?;
        upload.len = upload.len.saturating_add(frame.len() as u64);
        if upload.len > limit {
            return Err(UploadError::TooLarge { limit });
        }
        file.write_all(&frame).await?;
    }
    file.flush().await?;
    file.into_inner().sync_all().await?;
    Ok(upload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_lands_on_disk_and_goes_with_its_upload() {
        let dir = tempfile::tempdir().unwrap();
        let upload = receive(dir.path(), Body::from(vec![7u8; 100_000]), 1 << 20).await.unwrap();
        assert_eq!(upload.len, 100_000);
        assert_eq!(std::fs::read(upload.path()).unwrap(), vec![7u8; 100_000]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(upload.path()).unwrap().permissions().mode() & 0o777, 0o600);
        let path = upload.path().to_path_buf();
        drop(upload);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let error = receive(dir.path(), Body::from(vec![0u8; 2048]), 1024).await.unwrap_err();
        assert!(matches!(error, UploadError::TooLarge { limit: 1024 }), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn permits_run_out_and_come_back() {
        let permits = UploadPermits::new(2);
        let (first, _second) = (permits.try_acquire().unwrap(), permits.try_acquire().unwrap());
        assert!(matches!(permits.try_acquire(), Err(UploadError::Busy { in_progress: 2 })));
        drop(first);
        assert!(permits.try_acquire().is_ok());
    }
}
