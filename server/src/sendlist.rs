//! What one `send` hands the server: each file named on the command line, and every regular
//! file inside each directory named there, with the name members receive it under.
//!
//! A file given on its own is received under its file name; a file inside a directory tree
//! under its path relative to the directory's parent (`send ~/work/project` gives
//! `project/src/main.rs`). The walk never follows a symbolic link inside a tree, so nothing
//! outside it is ever sent: links, FIFOs, sockets and devices are skipped and listed for the
//! person. Every name is checked as members check it ([`RelativePath`]) before anything is
//! sent, so a tree holding a name members would refuse sends nothing.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use gshare_proto::RelativePath;

/// Most files one `send` may name, trees included: a bound on the request and on what one
/// command records (a larger tree is sent in parts).
pub const MAX_FILES_PER_SEND: usize = 100_000;

/// One file of a send: where the server reads it, and the name members receive it under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendFile {
    /// Absolute.
    pub path: PathBuf,
    /// A [`RelativePath`], as text.
    pub name: String,
}

/// The files of a send, and what was left out of its trees (with why), for the person.
#[derive(Debug, Default)]
pub struct SendList {
    pub files: Vec<SendFile>,
    pub skipped: Vec<String>,
}

/// Why a send cannot go ahead: one sentence naming the path.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendListError(String);

/// Lists what sending `arguments` (files and directories, as the person typed them) sends.
pub fn list(arguments: &[PathBuf]) -> Result<SendList, SendListError> {
    let mut list = SendList::default();
    for argument in arguments {
        let shown = argument.display();
        let path = std::path::absolute(argument)
            .map_err(|error| SendListError(format!("{shown}: cannot be read: {error}")))?;
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(SendListError(format!("{shown}: no such file or directory")));
            }
            Err(error) => return Err(SendListError(format!("{shown}: cannot be read: {error}"))),
        };
        let name = top_name(&path).ok_or_else(|| {
            SendListError(format!("{shown}: has no name to send it under; name the directory itself"))
        })?;
        if metadata.is_file() {
            list.push(path, &name, argument)?;
        } else if metadata.is_dir() {
            let before = list.files.len();
            list.walk(&path, &name, argument, 1)?;
            if list.files.len() == before {
                return Err(SendListError(format!("{shown}: holds no regular file to send")));
            }
        } else {
            return Err(SendListError(format!(
                "{shown}: is not a regular file or a directory (a FIFO, socket or device); send takes files and directories"
            )));
        }
    }
    Ok(list)
}

/// The last component of `path`; the directory's own name for `..` (a trailing `.` is no
/// component of its own).
fn top_name(path: &Path) -> Option<String> {
    let name = match path.file_name() {
        Some(name) => name.to_owned(),
        None => fs::canonicalize(path).ok()?.file_name()?.to_owned(),
    };
    Some(name.to_string_lossy().into_owned())
}

impl SendList {
    /// Adds the file at `path` under `name`, checked as members check it.
    fn push(&mut self, path: PathBuf, name: &str, shown: &Path) -> Result<(), SendListError> {
        if let Err(error) = RelativePath::new(name) {
            return Err(SendListError(format!("{}: cannot be sent: {error}", shown.display())));
        }
        if self.files.len() >= MAX_FILES_PER_SEND {
            return Err(SendListError(format!(
                "{}: this send would hold more than {MAX_FILES_PER_SEND} files; send the tree in parts",
                shown.display()
            )));
        }
        self.files.push(SendFile { path, name: name.to_owned() });
        Ok(())
    }

    /// Adds every regular file under the directory `path` (named `name` for members), in name
    /// order, without following links.
    fn walk(&mut self, path: &Path, name: &str, shown: &Path, depth: usize) -> Result<(), SendListError> {
        if depth >= gshare_proto::names::MAX_PATH_DEPTH {
            return Err(SendListError(format!(
                "{}: is nested deeper than the {} levels members accept",
                shown.display(),
                gshare_proto::names::MAX_PATH_DEPTH
            )));
        }
        let unreadable = |error: std::io::Error| SendListError(format!("{}: cannot be read: {error}", shown.display()));
        let mut entries = fs::read_dir(path).map_err(unreadable)?.collect::<Result<Vec<_>, _>>().map_err(unreadable)?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let shown = shown.join(entry.file_name());
            let Some(component) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(SendListError(format!("{}: cannot be sent: the name is not UTF-8", shown.display())));
            };
            let name = format!("{name}/{component}");
            // The entry itself, never what a link points to.
            let kind = entry.file_type().map_err(|error| SendListError(format!("{}: {error}", shown.display())))?;
            if kind.is_file() {
                self.push(entry.path(), &name, &shown)?;
            } else if kind.is_dir() {
                self.walk(&entry.path(), &name, &shown, depth + 1)?;
            } else if kind.is_symlink() {
                self.skipped.push(format!("{}: a symbolic link; skipped (links are never followed)", shown.display()));
            } else {
                self.skipped
                    .push(format!("{}: not a regular file (a FIFO, socket or device); skipped", shown.display()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &SendList) -> Vec<&str> {
        list.files.iter().map(|file| file.name.as_str()).collect()
    }

    #[test]
    fn a_tree_is_its_files_under_the_directory_name_in_order_and_links_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("project");
        fs::create_dir_all(tree.join("src/empty")).unwrap();
        fs::write(tree.join("src/main.rs"), b"fn main() {}").unwrap();
        fs::write(tree.join("README.md"), b"# p").unwrap();
        fs::write(root.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), tree.join("link")).unwrap();
        std::os::unix::fs::symlink(root.path(), tree.join("up")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tree.join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let alone = root.path().join("notes.txt");
        fs::write(&alone, b"n").unwrap();

        let list = list(&[tree.clone(), alone]).unwrap();
        assert_eq!(names(&list), ["project/README.md", "project/src/main.rs", "notes.txt"]);
        assert_eq!(list.files[1].path, tree.join("src/main.rs"));
        assert_eq!(list.skipped.len(), 3, "{:?}", list.skipped);
        assert!(list.skipped.iter().any(|s| s.contains("link: a symbolic link")), "{:?}", list.skipped);
        assert!(list.skipped.iter().any(|s| s.contains("pipe: not a regular file")), "{:?}", list.skipped);

        // `.` is the directory's own name.
        let dotted = list_from(&tree, ".");
        assert_eq!(names(&dotted)[0], "project/README.md");
    }

    fn list_from(dir: &Path, argument: &str) -> SendList {
        let _cwd = CWD_LOCK.lock().unwrap();
        let before = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir).unwrap();
        let listed = list(&[PathBuf::from(argument)]);
        std::env::set_current_dir(before).unwrap();
        listed.unwrap()
    }

    static CWD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_name_members_would_refuse_sends_nothing() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("t");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("ok.txt"), b"").unwrap();
        fs::write(tree.join("bad\u{1b}[31m.txt"), b"").unwrap();
        let error = list(&[tree]).unwrap_err().to_string();
        assert!(error.contains("cannot be sent") && error.contains("control character"), "{error}");
    }

    #[test]
    fn an_empty_tree_a_missing_path_and_a_fifo_are_refused_with_their_names() {
        let root = tempfile::tempdir().unwrap();
        let empty = root.path().join("empty");
        fs::create_dir_all(empty.join("inner")).unwrap();
        let error = list(std::slice::from_ref(&empty)).unwrap_err().to_string();
        assert!(error.ends_with("empty: holds no regular file to send"), "{error}");
        let error = list(&[root.path().join("gone")]).unwrap_err().to_string();
        assert!(error.contains("gone: no such file or directory"), "{error}");
        let fifo = root.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let error = list(&[fifo]).unwrap_err().to_string();
        assert!(error.contains("fifo: is not a regular file or a directory"), "{error}");
    }

    #[test]
    fn a_tree_deeper_than_members_accept_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut deep = root.path().join("top");
        for _ in 0..gshare_proto::names::MAX_PATH_DEPTH {
            deep = deep.join("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), b"").unwrap();
        let error = list(&[root.path().join("top")]).unwrap_err().to_string();
        assert!(error.contains("nested deeper than the 32 levels"), "{error}");
    }
}
