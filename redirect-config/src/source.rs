//! Where the MeshConfig in force came from, and so whether meshed pods may
//! be enrolled with it: the one decision behind `status`, `diagnose`, the
//! CNI ADD's answer and reconciling.
//!
//! Decided here: the agent enrolls a meshed pod only with a MeshConfig it
//! knows is the mesh's, or with FSM's defaults where it has been told of no
//! other (no `--mesh-config` and no API) or the API says there is none.
//! While the API has not answered (a node booting before its control
//! plane; after a reboot, whose empty `/run` lost the copy kept there) or
//! refuses to list it (RBAC, the CRD missing), it fails closed: a meshed
//! pod's ADD fails with "try again" naming why, and the kubelet retries.
//! FSM's defaults there would intercept with the wrong lists or mode.

use std::path::PathBuf;

/// Where the MeshConfig in force came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "from", rename_all = "kebab-case")]
pub enum MeshSource {
    /// A file: `--mesh-config`, or the one an earlier run was given.
    File { path: PathBuf },
    /// The Kubernetes API's, kept in the state dir at `kept`. `gone`: it was
    /// deleted since; the lists applied last stay.
    Api { object: String, kept: PathBuf, gone: bool },
    /// FSM's defaults, and why.
    Defaults { why: String },
    /// Not known: meshed pods wait (fail closed).
    Unknown { why: String },
}

impl MeshSource {
    /// Whether meshed pods may be enrolled with the MeshConfig in force.
    pub fn known(&self) -> bool {
        !matches!(self, MeshSource::Unknown { .. })
    }

    /// What a meshed pod's enrolment should say of it, where it is not the
    /// mesh's own MeshConfig as it stands.
    pub fn note(&self) -> Option<String> {
        match self {
            MeshSource::File { .. } | MeshSource::Api { gone: false, .. } => None,
            MeshSource::Api { object, gone: true, .. } => {
                Some(format!("MeshConfig {object} was deleted from the API: the lists applied last stay"))
            }
            MeshSource::Defaults { why } => Some(format!("enrolled with FSM's default MeshConfig ({why})")),
            MeshSource::Unknown { why } => Some(format!("FSM's MeshConfig is not known ({why})")),
        }
    }

    /// One line for `status`.
    pub fn describe(&self) -> String {
        match self {
            MeshSource::File { path } => format!("file {}", path.display()),
            MeshSource::Api { object, kept, gone: false } => format!("the API's {object} (kept in {})", kept.display()),
            MeshSource::Api { object, kept, gone: true } => {
                format!("the API's {object} as last seen (kept in {}): DELETED from the API since", kept.display())
            }
            MeshSource::Defaults { why } => format!("FSM's defaults ({why})"),
            MeshSource::Unknown { why } => format!("NOT KNOWN ({why}): meshed pods wait, their ADDs fail to be retried"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unknown_meshconfig_holds_meshed_pods_back_and_only_the_mesh_s_own_goes_unsaid() {
        let file = MeshSource::File { path: "/etc/fsm/mesh.yaml".into() };
        let api = |gone| MeshSource::Api { object: "fsm-system/fsm-mesh-config".into(), kept: "/run/x.json".into(), gone };
        let (api, gone) = (api(false), api(true));
        let defaults = MeshSource::Defaults { why: "the API has no MeshConfig fsm-system/fsm-mesh-config".into() };
        let unknown = MeshSource::Unknown { why: "403 Forbidden".into() };
        assert_eq!([&file, &api, &gone, &defaults, &unknown].map(MeshSource::known), [true, true, true, true, false]);
        assert_eq!((file.note(), api.note()), (None, None));
        assert!(defaults.note().unwrap().contains("FSM's default MeshConfig"));
        assert!(gone.note().unwrap().contains("deleted"));
        assert!(unknown.describe().contains("403 Forbidden"));
    }
}
