//! D-Bus encoding: property values to variants, replies to Rust types,
//! and error names to typed outcomes.

use super::*;

pub(super) fn variant(v: Variant<'static>) -> OwnedVariant {
    OwnedVariant::try_from(v).expect("variants without file descriptors always convert")
}

pub(super) fn to_variant(value: &PropValue) -> OwnedVariant {
    match value {
        PropValue::Str(s) => variant(Variant::from(s.clone())),
        PropValue::Bool(b) => variant(Variant::from(*b)),
        PropValue::U32(n) => variant(Variant::from(*n)),
        PropValue::U64(n) => variant(Variant::from(*n)),
        PropValue::StrList(list) => variant(Variant::from(list.clone())),
        PropValue::BytesList(list) => variant(Variant::from(list.clone())),
        PropValue::I32(n) => variant(Variant::from(*n)),
        PropValue::NameList(allow, names) => variant(Variant::from((*allow, names.clone()))),
        PropValue::Exec(cmds) => {
            let cmds: Vec<(String, Vec<String>, bool)> = cmds
                .iter()
                .map(|c| (c.path.clone(), c.argv.clone(), c.ignore_failure))
                .collect();
            variant(Variant::from(cmds))
        }
    }
}

pub(super) type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

pub(super) fn decode<T>(
    method: &'static str,
    unit: &str,
    reply: &zbus::Message,
) -> Result<T, SystemdError>
where
    T: for<'d> serde::Deserialize<'d> + zbus::wire::Type,
{
    reply
        .body()
        .deserialize::<T>()
        .map_err(|source| SystemdError::Dbus {
            method,
            unit: unit.to_owned(),
            source,
        })
}

/// D-Bus errors that mean the manager is briefly away (re-executing,
/// reloading, restarting), not that it refused: the call may be retried.
pub(super) const TRANSIENT_ERRORS: &[&str] = &[
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoServer",
    "org.freedesktop.DBus.Error.Timeout",
    "org.freedesktop.DBus.Error.TimedOut",
];

/// Well-known D-Bus error names become typed outcomes.
pub(super) fn map_error(
    method: &'static str,
    unit: &str,
    e: zbus::Error,
    inner: &Inner,
) -> SystemdError {
    let unit = unit.to_owned();
    let transient = |name: &str, message: &str| SystemdError::Unavailable {
        target: inner.opts.target.to_string(),
        reason: format!("{method} for unit {unit}: {name}: {message}"),
    };
    match e {
        zbus::Error::MethodError(name, message, _) if TRANSIENT_ERRORS.contains(&name.as_str()) => {
            transient(name.as_str(), message.as_deref().unwrap_or_default())
        }
        zbus::Error::FDO(fdo)
            if TRANSIENT_ERRORS.contains(&zbus::DBusError::name(&*fdo).as_str()) =>
        {
            transient(zbus::DBusError::name(&*fdo).as_str(), &fdo.to_string())
        }
        zbus::Error::MethodError(name, message, _) => match name.as_str() {
            "org.freedesktop.systemd1.UnitExists" => SystemdError::UnitExists { unit },
            "org.freedesktop.systemd1.NoSuchUnit" | "org.freedesktop.DBus.Error.UnknownObject" => {
                SystemdError::NoSuchUnit { unit }
            }
            other => SystemdError::Refused {
                method,
                unit,
                name: other.to_owned(),
                message: message.unwrap_or_default(),
            },
        },
        zbus::Error::FDO(fdo) => match *fdo {
            zbus::fdo::Error::UnknownObject(_) => SystemdError::NoSuchUnit { unit },
            other => SystemdError::Refused {
                method,
                unit,
                name: zbus::DBusError::name(&other).to_string(),
                message: other.to_string(),
            },
        },
        zbus::Error::InputOutput(_) | zbus::Error::Connection(..) => {
            inner.set_error(e.to_string());
            inner.unavailable()
        }
        source => SystemdError::Dbus {
            method,
            unit,
            source,
        },
    }
}
