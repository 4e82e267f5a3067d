//! systemd's signals, routed to the event hub.

use super::*;

impl Inner {
    /// Route one systemd signal.
    pub(super) fn dispatch(&self, msg: &zbus::Message) {
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
