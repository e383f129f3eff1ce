//! What both binaries do around their work: logging to stderr, one line per event, filtered by
//! `RUST_LOG`; a failure printed as one `error: ...` line with its whole cause chain, with a
//! non-zero exit status; and their shell completions and manual pages (`generate DIR`).

use std::io::IsTerminal;
use std::process::ExitCode;

/// Logs to stderr, filtered by `RUST_LOG`, else by `default_filter` (such as `info`).
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        // A record that cannot be written (stderr is a file on a full disk) is dropped; the
        // builder's default would say so with `eprintln!`, which panics when stderr fails.
        .log_internal_errors(false)
        .init();
}

/// Writes completions for bash, zsh and fish and a manual page per command of `command` (the
/// binary `binary`'s clap definition) into `out`.
pub fn generate(mut command: clap::Command, binary: &str, out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, binary, out)
            .with_context(|| format!("cannot write {shell} completions into {}", out.display()))?;
    }
    clap_mangen::generate_to(command, out)
        .with_context(|| format!("cannot write manual pages into {}", out.display()))?;
    crate::outln!("wrote completions and manual pages for {binary} into {}", out.display());
    Ok(())
}

/// The exit status for `result`, printing a failure as `error: cause: cause: ...`.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            crate::say!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to standard output. A reader that went away (`gshare-server status | head -1`) ends
/// the process quietly with status 0, as Unix tools do, instead of a panic on the closed pipe;
/// any other failure to write is one `error:` line and status 1.
pub fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        crate::say!("error: cannot write to standard output: {error}");
        std::process::exit(1);
    }
}

/// Writes a line for the person to standard error. If it cannot be written (standard error is
/// a file on a full disk, or a pipe nobody reads), the process goes on without it: a listener
/// must not stop receiving files for want of somewhere to say so. (`eprintln!` would panic.)
pub fn write_stderr_line(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// `eprintln!` through [`write_stderr_line`].
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::cli::write_stderr_line(format_args!($($arg)*)) };
}

/// `print!` through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

/// `println!` through [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
