//! Where a gated files path really leads, so a symlink cannot carry a call
//! around a gate rule.

/// Most symlinks followed while resolving one path (as the kernel's 40).
const MAX_LINK_HOPS: usize = 40;

/// Where `path` (relative to `root`) really leads, relative to `root`:
/// resolved one component at a time, following each symlink (dangling ones
/// too: a create through a link makes its target) and applying `..` to
/// where a link actually led. `None` when that cannot be told: a loop, a
/// link out of `root`, an unreadable link; callers hold such paths.
pub fn resolve_in(root: &std::path::Path, path: &str) -> Option<String> {
    let root = std::fs::canonicalize(root).ok()?;
    let mut pending: std::collections::VecDeque<String> = path.split('/').map(str::to_string).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(component) = pending.pop_front() {
        match component.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(resolved.join("/")).join(&component);
        let is_link = std::fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            resolved.push(component);
            continue;
        }
        hops += 1;
        if hops > MAX_LINK_HOPS {
            return None;
        }
        let target = std::fs::read_link(&here).ok()?;
        let target = target.to_str()?.to_string();
        let next: Vec<String> = if target.starts_with('/') {
            // Absolute: meaningful only inside the granted directory.
            let rel = std::path::Path::new(&target).strip_prefix(&root).ok()?;
            resolved.clear();
            rel.iter().map(|c| c.to_string_lossy().into_owned()).collect()
        } else {
            target.split('/').map(str::to_string).collect()
        };
        for (i, c) in next.into_iter().enumerate() {
            pending.insert(i, c);
        }
    }
    Some(resolved.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_resolved_before_matching() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("gated")).unwrap();
        std::os::unix::fs::symlink("gated", dir.path().join("link")).unwrap();
        let r = |p: &str| resolve_in(dir.path(), p);
        assert_eq!(r("link/new.txt").as_deref(), Some("gated/new.txt"));
        assert_eq!(r("./free/../link").as_deref(), Some("gated"));
        assert_eq!(r("plain/x").as_deref(), Some("plain/x"));
        // `..` after a link applies to where the link led.
        std::fs::create_dir_all(dir.path().join("gated/sub")).unwrap();
        std::fs::create_dir(dir.path().join("free")).unwrap();
        std::os::unix::fs::symlink("../gated/sub", dir.path().join("free/l")).unwrap();
        assert_eq!(r("free/l/../x").as_deref(), Some("gated/x"));
        // A dangling link resolves to where a create would land.
        std::os::unix::fs::symlink("../gated/new", dir.path().join("free/f")).unwrap();
        assert_eq!(r("free/f").as_deref(), Some("gated/new"));
        // Loops and links out of the directory cannot be told: held.
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        assert_eq!(r("loop/x"), None);
        std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
        assert_eq!(r("out/passwd"), None);
    }
}
