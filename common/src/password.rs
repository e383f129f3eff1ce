//! Reading a password from a person: from the terminal without echo (asked twice when setting
//! one), or as one line of standard input with `--password-stdin`. Never from an argument or
//! the environment, where other users could see it.

use std::io::{BufRead, IsTerminal};

/// Why no password was read.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("no terminal to ask for the password; pass --password-stdin and write it to standard input")]
    NoTerminal,
    #[error("cannot read the password: {0}")]
    Io(#[from] std::io::Error),
    #[error("the two passwords differ")]
    Mismatch,
    #[error("the password is empty")]
    Empty,
    #[error("the password must be at least {0} characters long")]
    TooShort(usize),
}

/// How to read the password.
#[derive(Debug, Clone, Copy)]
pub struct PasswordPrompt<'a> {
    /// Shown at the terminal, e.g. `Password for alice: `.
    pub prompt: &'a str,
    /// Read one line from standard input instead of the terminal.
    pub from_stdin: bool,
    /// Ask twice at the terminal (when setting a password).
    pub confirm: bool,
    /// Fewest characters accepted (0 for none).
    pub min_chars: usize,
}

impl PasswordPrompt<'_> {
    pub fn read(&self) -> Result<String, PasswordError> {
        let password = if self.from_stdin {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        } else {
            if !std::io::stdin().is_terminal() && std::fs::File::open("/dev/tty").is_err() {
                return Err(PasswordError::NoTerminal);
            }
            let first = rpassword::prompt_password(self.prompt)?;
            if self.confirm {
                let second = rpassword::prompt_password("Again: ")?;
                if first != second {
                    return Err(PasswordError::Mismatch);
                }
            }
            first
        };
        if password.is_empty() {
            return Err(PasswordError::Empty);
        }
        if password.chars().count() < self.min_chars {
            return Err(PasswordError::TooShort(self.min_chars));
        }
        Ok(password)
    }
}
