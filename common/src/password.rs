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
            return self.ask(|prompt| rpassword::prompt_password(prompt));
        };
        self.check(&password)?;
        Ok(password)
    }

    /// Asks at the terminal through `prompt`: the password, checked at once (a short one is
    /// refused before anyone is asked to type it again), then, to set one, the same again.
    fn ask(&self, mut prompt: impl FnMut(&str) -> std::io::Result<String>) -> Result<String, PasswordError> {
        let first = prompt(self.prompt)?;
        self.check(&first)?;
        if self.confirm && prompt("Again: ")? != first {
            return Err(PasswordError::Mismatch);
        }
        Ok(first)
    }

    fn check(&self, password: &str) -> Result<(), PasswordError> {
        if password.is_empty() {
            return Err(PasswordError::Empty);
        }
        if password.chars().count() < self.min_chars {
            return Err(PasswordError::TooShort(self.min_chars));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_password_is_refused_before_again_is_asked() {
        let prompt = PasswordPrompt { prompt: "New password: ", from_stdin: false, confirm: true, min_chars: 8 };
        let mut asked = Vec::new();
        let result = prompt.ask(|text| {
            asked.push(text.to_owned());
            Ok("short".into())
        });
        assert!(matches!(result, Err(PasswordError::TooShort(8))));
        assert_eq!(asked, ["New password: "]);

        let mut answers = vec!["long enough 2".to_owned(), "long enough 1".to_owned()];
        let result = prompt.ask(|_| Ok(answers.pop().unwrap_or_default()));
        assert!(matches!(result, Err(PasswordError::Mismatch)));
        let mut answers = vec!["long enough".to_owned(), "long enough".to_owned()];
        assert_eq!(prompt.ask(|_| Ok(answers.pop().unwrap_or_default())).unwrap(), "long enough");
    }
}
