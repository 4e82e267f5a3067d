//! systemd's signals, routed to the event hub.

use super::*;

impl Inner {
    /// Route one systemd signal.
    pub(super) fn dispatch(self: &Arc<Self>, msg: &zbus::Message) {
        let header = msg.header();
        let (Some(member), Some(path)) = (header.member(), header.path()) else {
            return;
        };
        match member.as_str() {
            "JobRemoved" => {
                if let Ok((_, job, unit, result)) = msg
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                {
                    self.hub.job_removed(job.as_str(), &unit, &result);
                }
            }
            "UnitNew" => {
                if let Ok((unit, _)) = msg.body().deserialize::<(String, OwnedObjectPath)>()
                    && is_prism_service(&unit)
                    && self.hub.knows_state(&unit)
                {
                    // A re-executed manager announces each unit anew at its
                    // first change, with `UnitNew` instead of
                    // `PropertiesChanged`: read what changed.
                    tracing::debug!(%unit, "{unit} announced anew (UnitNew): reading its state");
                    let seen = self.hub.mark();
                    let inner = self.clone();
                    tokio::spawn(async move {
                        match inner.unit_status(&unit).await {
                            Ok(read) => inner.hub.refreshed(&read, seen),
                            Err(e) => {
                                tracing::debug!(%unit, error = %e, "reading {unit} after UnitNew failed: {e}")
                            }
                        }
                    });
                }
            }
            "UnitRemoved" => {
                if let Ok((unit, _)) = msg.body().deserialize::<(String, OwnedObjectPath)>()
                    && is_prism_service(&unit)
                {
                    self.hub.unit_removed(&unit);
                }
            }
            "PropertiesChanged" => {
                let Some(label) = path.as_str().strip_prefix(UNIT_PATH_PREFIX) else {
                    return;
                };
                // Cheap filter before decoding: "prism-" is "prism_2d" as a label.
                if !label.starts_with("prism_2d") {
                    return;
                }
                let Some(unit) = unit::bus_label_unescape(label) else {
                    return;
                };
                if !is_prism_service(&unit) {
                    return;
                }
                if let Ok((_, changed, _)) =
                    msg.body()
                        .deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
                {
                    self.hub.properties_changed(&unit, &changed);
                }
            }
            _ => {}
        }
    }
}
