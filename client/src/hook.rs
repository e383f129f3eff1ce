//! The hook run after each received file (`listen --exec PROGRAM`, or `on_receive` in
//! client.toml): a program started directly, never through a shell, with the file's path as
//! its one argument and the details in its environment:
//!
//! - `GSHARE_FILE`: the path of the stored file (the same as the argument),
//! - `GSHARE_NAME`: its name as stored, relative to the out directory (`report (1).pdf` if the
//!   name was taken; `project/src/main.rs` for a file of a sent directory tree),
//! - `GSHARE_GROUP`, `GSHARE_SIZE` (bytes), `GSHARE_SHA256` (hex).
//!
//! It runs only once the file is verified, stored under its name and acknowledged, and it never
//! holds up receiving: at most [`MAX_RUNNING`] run at once, the others wait their turn in the
//! background. A hook that cannot start or exits non-zero is said in one sentence.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;

use gshare_proto::{GroupName, RelativePath};

/// Hooks running at once; more wait, without holding up any transfer.
pub const MAX_RUNNING: usize = 4;

/// A program to run after each received file.
#[derive(Debug, Clone)]
pub struct Hook {
    program: PathBuf,
    running: Arc<Semaphore>,
}

impl Hook {
    pub fn new(program: PathBuf) -> Self {
        Self { program, running: Arc::new(Semaphore::new(MAX_RUNNING)) }
    }

    /// Starts the hook in the background for the file stored as `stored` in `out_dir`.
    pub fn run(&self, out_dir: &Path, stored: &RelativePath, group: &GroupName, size: u64, sha256: &[u8; 32]) {
        let name = stored.to_string();
        let (hook, file, group) = (self.clone(), out_dir.join(&name), group.to_string());
        let sha256: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
        tokio::spawn(async move {
            let Ok(_turn) = hook.running.acquire().await else { return };
            let status = tokio::process::Command::new(&hook.program)
                .arg(&file)
                .env("GSHARE_FILE", &file)
                .env("GSHARE_NAME", &name)
                .env("GSHARE_GROUP", &group)
                .env("GSHARE_SIZE", size.to_string())
                .env("GSHARE_SHA256", &sha256)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(false)
                .status()
                .await;
            let program = hook.program.display();
            match status {
                Ok(status) if status.success() => tracing::info!(%program, file = %file.display(), "hook ran"),
                Ok(status) => gshare_common::say!("the hook {program} failed for {} ({status})", file.display()),
                Err(error) => gshare_common::say!("cannot run the hook {program} for {}: {error}", file.display()),
            }
        });
    }
}
