//! What a rollout changes in each process: a whole new config (each
//! process keeps its own placement, dependencies and disconnect rules), or
//! fields to set. Applied to every selected process before the first is
//! updated; a change that leaves a process as it is, or that names
//! nothing, is refused naming the field.

use std::collections::BTreeMap;

use crate::pb::prism as pb;

/// A rollout's change, as asked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    /// A whole config: replaces each process's, but for its placement,
    /// depends_on and on_disconnect.
    pub spec: Option<pb::ProcessConfig>,
    pub binary: Option<String>,
    pub args: Option<Vec<String>>,
    pub env_set: BTreeMap<String, String>,
    pub env_unset: Vec<String>,
    pub resources: Option<pb::ResourceLimits>,
    pub health_check: Option<pb::HealthCheck>,
    pub log_level: Option<String>,
    pub restart_policy: Option<pb::RestartPolicy>,
}

/// A change that cannot be applied: the field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Refused {
    pub field: String,
    pub why: String,
}

fn refused(field: &str, why: impl Into<String>) -> Refused {
    Refused {
        field: field.into(),
        why: why.into(),
    }
}

impl Change {
    fn sets_fields(&self) -> bool {
        self.binary.is_some()
            || self.args.is_some()
            || !self.env_set.is_empty()
            || !self.env_unset.is_empty()
            || self.resources.is_some()
            || self.health_check.is_some()
            || self.log_level.is_some()
            || self.restart_policy.is_some()
    }

    /// The change on its own: it names something, and not two ways.
    pub fn check(&self) -> Result<(), Refused> {
        match (&self.spec, self.sets_fields()) {
            (None, false) => Err(refused(
                "change",
                "names nothing to change (give a spec, or fields to set)",
            )),
            (Some(_), true) => Err(refused(
                "change",
                "gives a whole spec and fields to set: one or the other",
            )),
            (Some(spec), false) if spec.placement.is_some() => Err(refused(
                "change.spec.placement",
                "a rollout does not move processes: each keeps its own placement",
            )),
            _ => {
                if let Some(b) = &self.binary
                    && b.is_empty()
                {
                    return Err(refused("change.binary", "is empty"));
                }
                for k in self.env_unset.iter().chain(self.env_set.keys()) {
                    if k.is_empty() || k.contains('=') {
                        return Err(refused(
                            "change.env",
                            format!("{k:?} is not a variable name"),
                        ));
                    }
                }
                if let Some(k) = self
                    .env_unset
                    .iter()
                    .find(|k| self.env_set.contains_key(*k))
                {
                    return Err(refused("change.env", format!("{k} is both set and unset")));
                }
                Ok(())
            }
        }
    }

    /// `old` with the change, at the next version. Refused (naming the
    /// process) when it would leave the process as it is.
    pub fn apply(&self, old: &pb::ProcessAssignment) -> Result<pb::ProcessAssignment, Refused> {
        self.check()?;
        let mut new = old.clone();
        new.version = old.version + 1;
        let before = old.config.clone().unwrap_or_default();
        let mut config = before.clone();
        if let Some(spec) = &self.spec {
            config = pb::ProcessConfig {
                placement: before.placement.clone(),
                depends_on: before.depends_on.clone(),
                on_disconnect: before.on_disconnect,
                ..spec.clone()
            };
        }
        if let Some(b) = &self.binary {
            config.binary.clone_from(b);
        }
        if let Some(a) = &self.args {
            config.args.clone_from(a);
        }
        for k in &self.env_unset {
            config.env.remove(k);
        }
        for (k, v) in &self.env_set {
            config.env.insert(k.clone(), v.clone());
        }
        if let Some(r) = &self.resources {
            config.resources = Some(r.clone());
        }
        if let Some(h) = &self.health_check {
            config.health_check = Some(h.clone());
        }
        if let Some(l) = &self.log_level {
            config.log_level.clone_from(l);
        }
        if let Some(r) = &self.restart_policy {
            config.restart_policy = Some(r.clone());
        }
        if config == before {
            return Err(refused(
                "change",
                format!("leaves process {} as it is", old.process_id),
            ));
        }
        new.config = Some(config);
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> pb::ProcessAssignment {
        pb::ProcessAssignment {
            process_id: "orders-1".into(),
            process_type: "pattern".into(),
            version: 4,
            config: Some(pb::ProcessConfig {
                binary: "/usr/bin/prism-demo".into(),
                args: vec!["--port".into(), "8080".into()],
                env: [("MODE".to_owned(), "a".to_owned())].into(),
                placement: Some(pb::PlacementRules {
                    spread_group: "orders".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fields_set_change_only_those_at_the_next_version() {
        let change = Change {
            env_set: [("MODE".to_owned(), "b".to_owned())].into(),
            args: Some(vec![]),
            ..Default::default()
        };
        let new = change.apply(&process()).unwrap();
        assert_eq!(new.version, 5);
        let c = new.config.unwrap();
        assert_eq!(c.env["MODE"], "b");
        assert!(c.args.is_empty(), "an empty list set is a change");
        assert_eq!(c.binary, "/usr/bin/prism-demo");
        assert_eq!(c.placement.unwrap().spread_group, "orders");
    }

    #[test]
    fn a_whole_spec_keeps_each_process_where_it_is() {
        let change = Change {
            spec: Some(pb::ProcessConfig {
                binary: "/usr/bin/prism-demo2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = change.apply(&process()).unwrap().config.unwrap();
        assert_eq!(c.binary, "/usr/bin/prism-demo2");
        assert!(c.env.is_empty());
        assert_eq!(c.placement.unwrap().spread_group, "orders");
    }

    #[test]
    fn bad_changes_are_refused_naming_the_field() {
        let cases = [
            (Change::default(), "change", "names nothing"),
            (
                Change {
                    spec: Some(Default::default()),
                    binary: Some("/x".into()),
                    ..Default::default()
                },
                "change",
                "one or the other",
            ),
            (
                Change {
                    spec: Some(pb::ProcessConfig {
                        placement: Some(Default::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "change.spec.placement",
                "does not move",
            ),
            (
                Change {
                    binary: Some(String::new()),
                    ..Default::default()
                },
                "change.binary",
                "empty",
            ),
            (
                Change {
                    env_set: [("A=B".to_owned(), "c".to_owned())].into(),
                    ..Default::default()
                },
                "change.env",
                "not a variable name",
            ),
            (
                Change {
                    env_set: [("MODE".to_owned(), "a".to_owned())].into(),
                    ..Default::default()
                },
                "change",
                "leaves process orders-1 as it is",
            ),
        ];
        for (change, field, why) in cases {
            let e = change.apply(&process()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.why.contains(why), "{e}");
        }
    }
}
