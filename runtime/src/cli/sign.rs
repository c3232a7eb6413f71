//! `airlock keygen`, `airlock sign` and `airlock verify`: signed components
//! (see `airlock::signing`).

use airlock::Error;
use airlock::policy::Policy;
use airlock::signing::{self, Signer};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Write the secret key to OUT.key (mode 0600) and the public key to
    /// OUT.pub; existing files are never overwritten.
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct SignArgs {
    /// The component to sign.
    pub component: PathBuf,
    /// The secret key (PEM, from `airlock keygen`; mode 0600 or stricter).
    #[arg(long)]
    pub key: PathBuf,
    /// Where to write the signed component (default: replace COMPONENT).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The component to verify.
    pub component: PathBuf,
    /// A public key to trust (PEM; repeatable).
    #[arg(long = "key", value_name = "PUBLIC_KEY")]
    pub keys: Vec<PathBuf>,
    /// Trust what the config trusts for `--action`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The action whose `trusted-signers` apply (with --config).
    #[arg(long)]
    pub action: Option<String>,
}

pub fn keygen(a: KeygenArgs) -> Result<ExitCode, Error> {
    let secret_path = with_suffix(&a.out, "key");
    let public_path = with_suffix(&a.out, "pub");
    let (secret, public, fingerprint) = signing::generate();
    write_new(&secret_path, secret.as_bytes(), 0o600)?;
    write_new(&public_path, public.as_bytes(), 0o644)?;
    println!(
        "secret key  {}  (keep it off the machines that run airlock)",
        secret_path.display()
    );
    println!("public key  {}  ({fingerprint})", public_path.display());
    println!(
        "trust it with:\n  [signers.NAME]\n  public-key = {:?}\n  [signing]\n  trusted-signers = [\"NAME\"]",
        public_path.display().to_string()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn sign(a: SignArgs) -> Result<ExitCode, Error> {
    let secret = read_secret_key(&a.key)?;
    let bytes = airlock::action::read_component(&a.component)?;
    let (signed, fingerprint) = signing::sign(&bytes, &secret)
        .map_err(|e| Error::Usage(format!("cannot sign {}: {e}", a.component.display())))?;
    let out = a.out.unwrap_or_else(|| a.component.clone());
    write_replacing(&out, &signed)?;
    println!(
        "signed {} by {fingerprint} (blake3:{})",
        out.display(),
        blake3::hash(&signed).to_hex()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn verify(a: VerifyArgs) -> Result<ExitCode, Error> {
    let mut trusted: Vec<Signer> = Vec::new();
    for path in &a.keys {
        let name = path
            .file_stem()
            .map_or_else(|| "key".into(), |s| s.to_string_lossy().into_owned());
        trusted.push(Signer::load(&name, path).map_err(Error::Usage)?);
    }
    match (&a.config, &a.action) {
        (Some(config), Some(action)) => {
            let policy = Policy::load(config)?;
            let p = policy
                .actions
                .get(action)
                .ok_or_else(|| Error::Usage(format!("no action `{action}` in {}", config.display())))?;
            match p.trusted_signers.as_deref() {
                Some(list) if !list.is_empty() => trusted.extend(list.iter().cloned()),
                _ => {
                    return Err(Error::Usage(format!(
                        "action `{action}` trusts no signer: add `trusted-signers` under [actions.{action}] or [signing]"
                    )));
                }
            }
        }
        (Some(_), None) => {
            return Err(Error::Usage(
                "name the action whose trusted signers apply: --action NAME".into(),
            ));
        }
        (None, Some(_)) => return Err(Error::Usage("--action needs --config".into())),
        (None, None) => {}
    }
    if trusted.is_empty() {
        return Err(Error::Usage(
            "give the keys to trust: --key PUBLIC_KEY (repeatable), or --config FILE --action NAME".into(),
        ));
    }
    let bytes = airlock::action::read_component(&a.component)?;
    match signing::verify(&bytes, &trusted) {
        Ok(signer) => {
            println!(
                "ok: {} is signed by {} ({})",
                a.component.display(),
                signer.name,
                signer.fingerprint
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(Error::Refused(format!(
            "{} does not verify: {e} (trusted: {})",
            a.component.display(),
            trusted
                .iter()
                .map(|s| format!("{} {}", s.name, s.fingerprint))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// A secret key file, refused when group or others can read it.
fn read_secret_key(path: &Path) -> Result<zeroize::Zeroizing<String>, Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::Usage(format!("cannot read secret key {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::Usage(format!(
            "secret key {} is not a regular file",
            path.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Usage(format!(
            "secret key {} is readable by group or others; run `chmod 600 {}`",
            path.display(),
            airlock::hint::shell_quote(&path.display().to_string())
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read secret key {}: {e}", path.display())))?;
    Ok(zeroize::Zeroizing::new(text))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::Usage(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))
}

/// Write `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a component.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let name = path
        .file_name()
        .map_or_else(|| "component".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = write_new(&tmp, bytes, 0o644).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
