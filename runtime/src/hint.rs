//! The commands that error messages suggest, written out in full.
//!
//! A hint such as "add it with `airlock secret set api`" sends the secret to
//! the wrong vault when the user works from a config elsewhere. So every
//! suggested command carries the flags that point at the same place as the
//! command that failed: the `airlock` binary records its `--config`,
//! `--data-dir` and `--token-file` once at start ([`remember`]), and
//! [`command`] appends them. Without a recorded place (the library used on
//! its own) the flags are written as placeholders, `--config FILE`.

use std::path::Path;
use std::sync::OnceLock;

#[derive(Debug, Default)]
struct Place {
    /// `--config 'PATH'` or `--data-dir 'PATH'`.
    store: Option<String>,
    /// `--token-file 'PATH'`.
    token: Option<String>,
}

static PLACE: OnceLock<Place> = OnceLock::new();

/// Record where this process reads its state, for the hints it prints.
/// The first call wins. Not for processes that answer remote callers
/// (`serve`, `mcp`): their errors would tell callers the server's paths.
pub fn remember(config: Option<&Path>, data_dir: Option<&Path>, token_file: Option<&Path>) {
    // `--data-dir` overrides the config's data directory wherever both are
    // given, so a hint keeps both.
    let store = match (config, data_dir) {
        (Some(c), Some(d)) => Some(format!(
            "--config {} --data-dir {}",
            shell_quote(&absolute(c)),
            shell_quote(&absolute(d))
        )),
        (Some(c), None) => Some(format!("--config {}", shell_quote(&absolute(c)))),
        (None, Some(d)) => Some(format!("--data-dir {}", shell_quote(&absolute(d)))),
        (None, None) => None,
    };
    let token = token_file.map(|t| format!("--token-file {}", shell_quote(&absolute(t))));
    let _ = PLACE.set(Place { store, token });
}

/// `airlock ARGS --config PATH`: a command that reads the same config or
/// data directory as this process.
pub fn command(args: &str) -> String {
    let store = PLACE.get().and_then(|p| p.store.as_deref()).unwrap_or("--config FILE");
    format!("airlock {args} {store}")
}

/// As [`command`], for commands that act as the caller (`--token-file`).
pub fn command_as_caller(args: &str) -> String {
    let token = PLACE
        .get()
        .and_then(|p| p.token.as_deref())
        .unwrap_or("--token-file FILE");
    format!("{} {token}", command(args))
}

/// `airlock ARGS --data-dir DIR`, for state found in a known directory
/// (the vault), unless the process was started with a config naming it.
pub fn command_in(args: &str, data_dir: &Path) -> String {
    match PLACE.get().and_then(|p| p.store.as_deref()) {
        Some(store) if store.contains("--data-dir") || store.starts_with("--config") => {
            format!("airlock {args} {store}")
        }
        _ => format!("airlock {args} --data-dir {}", shell_quote(&absolute(data_dir))),
    }
}

fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// Quote `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+' | b',' | b':' | b'='));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("/srv/airlock.toml"), "/srv/airlock.toml");
        assert_eq!(shell_quote("/srv/my dir/a.toml"), "'/srv/my dir/a.toml'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
