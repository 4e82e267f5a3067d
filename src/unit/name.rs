//! Unit and slice names, systemd escaping, and the unit description that
//! identifies a process to `systemctl` and to the reconciler.

use crate::model::{IsolationLevel, ManagedProcess, ProcessType};

/// Every unit the launcher owns starts with this; nothing else may.
pub const UNIT_PREFIX: &str = "prism-";
/// The parent slice of every workload.
pub const ROOT_SLICE: &str = "prism.slice";
/// systemd rejects unit names of 256 bytes or more (UNIT_NAME_MAX).
pub const UNIT_NAME_MAX: usize = 255;
/// The longest name a workload unit gets. A unit with `PrivateTmp=` (which
/// `DynamicUser=` implies) fails to start, "File name too long", when
/// `systemd-private-<32-hex boot id>-<unit>-XXXXXX`, its /tmp directory,
/// passes the 255-byte NAME_MAX: 56 bytes go to the rest.
pub const WORKLOAD_NAME_MAX: usize = 199;
/// The `ListUnitsByPatterns` globs matching every workload service, and
/// nothing else: not `prism-launcher.service` or `prism-admin.service`,
/// which the reconciler would otherwise stop as "not desired".
pub const SERVICE_PATTERNS: [&str; 4] = [
    "prism-pattern-*.service",
    "prism-proxy-*.service",
    "prism-backend-*.service",
    "prism-utility-*.service",
];

/// Is `unit` a workload service (`prism-<type>-<id>.service`)?
pub fn is_workload_unit(unit: &str) -> bool {
    unit.ends_with(".service")
        && crate::model::ProcessType::ALL.iter().any(|t| {
            unit.strip_prefix(UNIT_PREFIX)
                .and_then(|rest| rest.strip_prefix(t.as_str()))
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|id| id.len() > ".service".len())
        })
}

/// systemd's unit-name escaping (`systemd-escape`, `unit_name_escape()`):
/// bytes outside `[A-Za-z0-9:_.]` become `\xNN`, and so does a leading dot.
/// `-` is escaped because it separates slice levels.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Stable 64-bit FNV-1a, for names that are no security boundary (the
/// local stack's directory): it is not collision-resistant against chosen
/// input.
pub fn fnv1a(data: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SHA-256 of `data`, the first `chars` characters in RFC 4648 base32,
/// lower case (`[a-z2-7]`, 5 bits each): valid in unit and user names.
/// Names derived from it must never change between releases, or upgrades
/// would orphan running units.
pub fn digest32(data: &str, chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = ring::digest::digest(&ring::digest::SHA256, data.as_bytes());
    let bytes = digest.as_ref();
    (0..chars.min(bytes.len() * 8 / 5))
        .map(|i| {
            let bit = i * 5;
            let pair = u16::from(bytes[bit / 8]) << 8
                | u16::from(bytes.get(bit / 8 + 1).copied().unwrap_or(0));
            let value = (pair >> (11 - bit % 8)) & 0x1f;
            ALPHABET[usize::from(value)] as char
        })
        .collect()
}

/// Characters of the hash that keeps a cut unit or slice name unique:
/// 26 × 5 = 130 bits of SHA-256.
const NAME_HASH_CHARS: usize = 26;

/// `<prefix><escaped><suffix>`, keeping within [`WORKLOAD_NAME_MAX`]: an
/// escaped part too long to fit is cut (never inside an escape sequence) and
/// suffixed with `_<hash of the full value>`, so names stay unique.
fn bounded(prefix: &str, raw: &str, suffix: &str) -> String {
    let escaped = escape(raw);
    let room = WORKLOAD_NAME_MAX - prefix.len() - suffix.len();
    if escaped.len() <= room {
        return format!("{prefix}{escaped}{suffix}");
    }
    let hash = format!("_{}", digest32(raw, NAME_HASH_CHARS));
    let mut cut = room - hash.len();
    // Back up to a boundary that does not split `\xNN`.
    while let Some(pos) = escaped[..cut].rfind('\\') {
        if pos + 4 <= cut {
            break;
        }
        cut = pos;
    }
    format!("{prefix}{}{hash}{suffix}", &escaped[..cut])
}

/// `prism-<type>-<escaped id>.service`.
pub fn unit_name(process_type: ProcessType, id: &str) -> String {
    bounded(&format!("{UNIT_PREFIX}{process_type}-"), id, ".service")
}

/// `prism-<type>.slice`, or `prism-<type>-<escaped namespace>.slice` when the
/// process is isolated by namespace or session and has a namespace. Dashes
/// in a slice name are hierarchy, so the namespace slice nests in the type
/// slice, which nests in `prism.slice`.
pub fn slice_name(process_type: ProcessType, namespace: &str, isolation: IsolationLevel) -> String {
    let per_namespace = !namespace.is_empty() && isolation != IsolationLevel::None;
    if per_namespace {
        bounded(
            &format!("{UNIT_PREFIX}{process_type}-"),
            namespace,
            ".slice",
        )
    } else {
        format!("{UNIT_PREFIX}{process_type}.slice")
    }
}

/// `prism <type> <id> v<version> (ns <namespace>): <binary>`.
///
/// Besides informing operators, this is how the reconciler learns which
/// process and version a unit runs from one `ListUnitsByPatterns` call,
/// without a property read per unit.
pub fn description(p: &ManagedProcess) -> String {
    let ns = if p.namespace.is_empty() {
        String::new()
    } else {
        format!(" (ns {})", p.namespace)
    };
    format!(
        "prism {} {} v{}{}: {}",
        p.process_type(),
        p.id,
        p.version,
        ns,
        p.binary.display()
    )
}

/// What a unit's description says it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitIdentity {
    pub process_type: ProcessType,
    pub id: String,
    pub version: i64,
}

/// The inverse of [`description`]; `None` for descriptions not written by
/// this launcher.
pub fn parse_description(description: &str) -> Option<UnitIdentity> {
    let mut words = description.split(' ');
    if words.next()? != "prism" {
        return None;
    }
    let process_type = words.next()?.parse().ok()?;
    let id = words.next()?.trim_end_matches(':').to_owned();
    let version = words
        .next()?
        .trim_end_matches(':')
        .strip_prefix('v')?
        .parse()
        .ok()?;
    Some(UnitIdentity {
        process_type,
        id,
        version,
    })
}

/// Characters of the hash in a dynamic user name: 22 × 5 = 110 bits of
/// SHA-256, the most that fits systemd's 31-byte user names.
const USER_HASH_CHARS: usize = 22;

/// Who shares a dynamic user: what [`dynamic_user`] hashes. Two different
/// owners with one user name are a collision, which the launcher refuses.
pub fn user_owner(p: &ManagedProcess) -> String {
    match (p.isolation, p.namespace.as_str()) {
        // One user shared by every process of the type.
        (IsolationLevel::None, _) => format!("type:{}", p.process_type()),
        // One user per namespace, shared across types.
        (IsolationLevel::Namespace, ns) if !ns.is_empty() => format!("ns:{ns}"),
        // One user per process: session isolation, and a process of no
        // namespace (which shares nothing with anyone).
        _ => format!("process:{}/{}", p.process_type(), p.id),
    }
}

/// A dynamic user name valid for systemd (`[a-z_][a-z0-9_-]*`, ≤ 31 bytes):
/// `prism-<type>` for isolation `none`, `prism-ns-<hash>` per namespace,
/// `prism-p-<hash>` per process.
pub fn dynamic_user(p: &ManagedProcess) -> String {
    let owner = user_owner(p);
    match owner.split_once(':') {
        Some(("type", ty)) => format!("prism-{ty}"),
        Some(("ns", _)) => format!("prism-ns-{}", digest32(&owner, USER_HASH_CHARS)),
        _ => format!("prism-p-{}", digest32(&owner, USER_HASH_CHARS + 1)),
    }
}

/// systemd's D-Bus object path label escaping (`sd_bus_path_encode`): the
/// inverse of what `/org/freedesktop/systemd1/unit/<label>` contains.
pub fn bus_label_unescape(label: &str) -> Option<String> {
    if label == "_" {
        return Some(String::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The D-Bus object path of a unit, as systemd names it.
pub fn bus_path(unit: &str) -> String {
    let mut out = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        out.push('_');
    }
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}
