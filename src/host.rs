//! Facts about this process on its host, read once.

/// This process's real uid, from `/proc/self/status`, read once (it is
/// asked on every assignment's binary check).
pub fn own_uid() -> Option<u32> {
    static OWN_UID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *OWN_UID.get_or_init(read_own_uid)
}

fn read_own_uid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A local user's (uid, gid), from `/etc/passwd`.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then_some(())?;
            let _password = f.next()?;
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
}
