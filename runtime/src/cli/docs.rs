//! `airlock completions` and `airlock man`: generated from the command
//! line's own definition.

use airlock::Error;
use std::io::Write as _;
use std::process::ExitCode;

/// `airlock completions SHELL`: the completion script for `root`.
pub fn completions(shell: clap_complete::Shell, mut root: clap::Command) -> Result<ExitCode, Error> {
    // Rendered first: clap_complete panics on a failed write (a closed
    // pipe), which is reported here instead.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut root, "airlock", &mut script);
    std::io::stdout()
        .write_all(&script)
        .map_err(|e| Error::internal(format!("cannot write the completion script: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// `airlock man`: the page for `airlock`, and with a directory one per
/// command (`airlock-serve.1`, `airlock-audit-verify.1`, ...).
pub fn man_pages(root: clap::Command, out: Option<&std::path::Path>) -> Result<ExitCode, Error> {
    let render = |cmd: clap::Command| -> Result<Vec<u8>, Error> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .map_err(|e| Error::internal(format!("cannot render the man page: {e}")))?;
        Ok(page)
    };
    let Some(dir) = out else {
        std::io::stdout()
            .write_all(&render(root)?)
            .map_err(|e| Error::internal(format!("cannot write the man page: {e}")))?;
        return Ok(ExitCode::SUCCESS);
    };
    // One page per command, `airlock-serve.1` for `airlock serve`, its
    // synopsis naming the whole command; hidden commands get none.
    std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(root, dir))
        .map_err(|e| Error::internal(format!("cannot write the man pages to {}: {e}", dir.display())))?;
    println!("wrote the man pages to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
