use std::collections::BTreeMap;

use super::*;
use crate::config::istio::{MtlsSetting, PeerAuthenticationSpec, WorkloadSelector};

fn pa(name: &str, selector: &[(&str, &str)], mode: MtlsMode, ports: &[(u16, MtlsMode)]) -> PeerAuthentication {
    PeerAuthentication {
        api_version: "security.istio.io/v1beta1".into(),
        kind: "PeerAuthentication".into(),
        metadata: crate::config::istio::ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        spec: PeerAuthenticationSpec {
            selector: (!selector.is_empty()).then(|| WorkloadSelector {
                match_labels: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            mtls: Some(MtlsSetting { mode }),
            port_level_mtls: ports
                .iter()
                .map(|(p, m)| (*p, MtlsSetting { mode: *m }))
                .collect(),
        },
    }
}

#[test]
fn peer_authentication_precedence() {
    let labels: BTreeMap<String, String> = [("app".to_string(), "orders".to_string())].into();
    // No resource: the listener's own mode, STRICT by default.
    assert_eq!(effective_mode(None, 7443, &labels, &[]).0, MtlsMode::Strict);
    assert_eq!(
        effective_mode(Some(MtlsMode::Permissive), 7443, &labels, &[]).0,
        MtlsMode::Permissive
    );
    let mesh = pa("mesh", &[], MtlsMode::Permissive, &[]);
    let app = pa("orders", &[("app", "orders")], MtlsMode::Strict, &[(9000, MtlsMode::Disable)]);
    let other = pa("other", &[("app", "billing")], MtlsMode::Disable, &[]);
    // The workload-specific resource beats the mesh-wide one, whatever the order.
    for pas in [vec![mesh.clone(), app.clone(), other.clone()], vec![app.clone(), mesh.clone()]] {
        let (m, by) = effective_mode(None, 7443, &labels, &pas);
        assert_eq!(m, MtlsMode::Strict);
        assert_eq!(by.as_deref(), Some("orders"));
        // Port-level override.
        assert_eq!(effective_mode(None, 9000, &labels, &pas).0, MtlsMode::Disable);
    }
    // A selector that does not match leaves the mesh-wide mode.
    let none = BTreeMap::new();
    assert_eq!(effective_mode(None, 7443, &none, &[mesh, app, other]).0, MtlsMode::Permissive);
    // UNSET inherits.
    let unset = pa("unset", &[("app", "orders")], MtlsMode::Unset, &[]);
    assert_eq!(
        effective_mode(Some(MtlsMode::Permissive), 1, &labels, &[unset]).0,
        MtlsMode::Permissive
    );
}

#[test]
fn wildcard_names_cover_one_label() {
    assert!(name_matches("orders.internal", "ORDERS.internal"));
    assert!(name_matches("*.example.org", "a.example.org"));
    assert!(!name_matches("*.example.org", "a.b.example.org"));
    assert!(!name_matches("*.example.org", "example.org"));
    assert!(!name_matches("orders.internal", "billing.internal"));
}
